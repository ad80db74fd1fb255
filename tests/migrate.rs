//! Migrations against the real server: fresh install, idempotence, concurrency, the
//! upgrade of a seed (Lightpack) table with rows, and the refusals.

mod common;

use common::{Record, TestDb};
use lightjobs::{JobQueue, Workers};
use mysql_async::prelude::*;
use std::time::Duration;

fn all_versions() -> Vec<u32> {
    lightjobs::migrate::MIGRATIONS
        .iter()
        .map(|m| m.version)
        .collect()
}

fn latest() -> &'static lightjobs::migrate::Migration {
    lightjobs::migrate::MIGRATIONS.last().unwrap()
}

const SEED_SQL: &str = "CREATE TABLE jobs (
    id int NOT NULL AUTO_INCREMENT,
    name varchar(55) COLLATE utf8_unicode_ci NOT NULL,
    payload text COLLATE utf8_unicode_ci NOT NULL,
    status varchar(55) COLLATE utf8_unicode_ci NOT NULL,
    scheduled_at datetime NOT NULL DEFAULT CURRENT_TIMESTAMP,
    created_at datetime NOT NULL DEFAULT CURRENT_TIMESTAMP,
    PRIMARY KEY (id),
    KEY status (status,scheduled_at)
) ENGINE=InnoDB";

#[actix_rt::test]
async fn fresh_database_migrates_once_and_is_idempotent() {
    let db = TestDb::new("migrate_fresh").await;
    let queue = db.queue();
    assert_eq!(queue.migrate().await.unwrap(), all_versions());
    assert_eq!(queue.migrate().await.unwrap(), Vec::<u32>::new());
    let recorded: u64 = db
        .scalar("SELECT COUNT(*) FROM lightjobs_migrations WHERE success = 1")
        .await;
    assert_eq!(recorded, all_versions().len() as u64);
    let claim_index: u64 = db
        .scalar(
            "SELECT COUNT(*) FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE() \
             AND TABLE_NAME = 'jobs' AND INDEX_NAME = 'jobs_claim'",
        )
        .await;
    assert_eq!(
        claim_index, 5,
        "jobs_claim covers queue, status, priority, scheduled_at, id"
    );
    db.drop_db().await;
}

#[actix_rt::test]
async fn concurrent_migrations_apply_each_step_once() {
    let db = TestDb::new("migrate_concurrent").await;
    let runs = (0..6).map(|_| {
        let q = db.queue();
        async move { q.migrate().await.unwrap() }
    });
    let applied: Vec<Vec<u32>> = futures::future::join_all(runs).await;
    let total: usize = applied.iter().map(Vec::len).sum();
    assert_eq!(
        total,
        all_versions().len(),
        "each migration applied by exactly one process: {applied:?}"
    );
    db.drop_db().await;
}

#[actix_rt::test]
async fn seed_table_with_rows_is_upgraded_in_place_and_its_jobs_run() {
    let db = TestDb::new("migrate_seed").await;
    db.exec(SEED_SQL).await;
    db.exec(
        "INSERT INTO jobs (name, payload, status) VALUES \
         ('record', '{\"tag\":\"seed-1\"}', 'new'), \
         ('record', '{\"tag\":\"seed-2\"}', 'new'), \
         ('record', '{\"tag\":\"old-failure\"}', 'failed')",
    )
    .await;
    let queue = db.queue();
    // Before the upgrade the queue refuses to work and says what to do.
    let err = queue.check_ready().await.unwrap_err().to_string();
    assert!(
        err.contains(&format!("migration {}", latest().version)),
        "{err}"
    );

    assert_eq!(queue.migrate().await.unwrap(), all_versions()[1..].to_vec());
    let adopted: u64 = db
        .scalar("SELECT COUNT(*) FROM lightjobs_migrations WHERE version = 1")
        .await;
    assert_eq!(adopted, 1);
    assert_eq!(db.count("pending").await, 2);
    assert_eq!(db.count("failed").await, 1);

    // 4-byte characters fit after the utf8mb4 conversion.
    let queue = JobQueue::connect(&db.url).unwrap();
    db.migrated().await;
    let id = queue
        .dispatch(Record {
            tag: "📬 émoji".into(),
        })
        .await
        .unwrap();

    let workers = Workers::new(queue.clone())
        .register::<Record>()
        .data(db.pool.clone())
        .stop_when_empty(true)
        .start()
        .await
        .unwrap();
    let report = tokio::time::timeout(Duration::from_secs(20), workers.wait())
        .await
        .unwrap();
    assert_eq!(report.processed, 3);
    let mut conn = db.pool.get_conn().await.unwrap();
    let tags: Vec<String> = conn
        .query("SELECT tag FROM runs ORDER BY tag")
        .await
        .unwrap();
    assert_eq!(tags, vec!["seed-1", "seed-2", "📬 émoji"]);
    assert_eq!(db.job(id).await.0, "processed");
    drop(conn);
    db.drop_db().await;
}

#[actix_rt::test]
async fn foreign_jobs_table_is_refused() {
    let db = TestDb::new("migrate_foreign").await;
    db.exec("CREATE TABLE jobs (id INT PRIMARY KEY, title VARCHAR(10))")
        .await;
    let err = db.queue().migrate().await.unwrap_err().to_string();
    assert!(err.contains("not a jobs table"), "{err}");
    db.drop_db().await;
}

#[actix_rt::test]
async fn dirty_migration_is_reported_by_name() {
    let db = TestDb::new("migrate_dirty").await;
    db.queue().migrate().await.unwrap();
    db.exec("UPDATE lightjobs_migrations SET success = 0 WHERE version = 3")
        .await;
    let err = db.queue().migrate().await.unwrap_err().to_string();
    assert!(
        err.contains("0003_queue_columns.sql") && err.contains("dirty"),
        "{err}"
    );
    db.drop_db().await;
}

#[actix_rt::test]
async fn unmigrated_database_gives_a_clear_error_at_dispatch() {
    let db = TestDb::new("migrate_missing").await;
    let err = db
        .queue()
        .dispatch(Record { tag: "x".into() })
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!(
            "migration {} ({}) has not been applied",
            latest().version,
            latest().name
        )),
        "{err}"
    );
    db.drop_db().await;
}

/// Several processes start with `migrate` at once (every process with `migrate(true)`, as
/// the README shows): one applies, the others wait and find nothing to do; none fails,
/// none reports a migration "dirty" that another is applying.
#[actix_rt::test]
async fn processes_migrating_at_once_all_succeed() {
    let db = TestDb::new("migrate_processes").await;
    let bin = env!("CARGO_BIN_EXE_lightjobs");
    let children: Vec<std::process::Child> = (0..4)
        .map(|_| {
            std::process::Command::new(bin)
                .args(["migrate", "--database-url", &db.url])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "migrate failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let applied: u64 = db
        .scalar("SELECT COUNT(*) FROM lightjobs_migrations WHERE success = 1")
        .await;
    assert_eq!(applied, all_versions().len() as u64);
    db.queue().check_ready().await.unwrap();
    db.drop_db().await;
}
