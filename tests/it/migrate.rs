//! Migrations against the real server: fresh install, idempotence, concurrency, the
//! upgrade of a seed (Lightpack) table with rows, and the refusals.

use crate::common;

use common::{record_run, Record, TestDb};
use lightjobs::{Job, JobContext, JobError, JobQueue, Workers};
use mysql_async::prelude::*;
use serde::{Deserialize, Serialize};
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

/// The seed's CREATE TABLE, verbatim (migration 1 is that statement).
const SEED_SQL: &str = lightjobs::migrate::MIGRATIONS[0].sql;

#[actix_rt::test]
async fn fresh_database_migrates_once_and_is_idempotent() {
    let db = TestDb::new("migrate_fresh").await;
    let queue = db.queue();
    assert_eq!(queue.migrate().await.unwrap().applied, all_versions());
    assert_eq!(queue.migrate().await.unwrap().applied, Vec::<u32>::new());
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
        async move { q.migrate().await.unwrap().applied }
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

    assert_eq!(
        queue.migrate().await.unwrap().applied,
        all_versions()[1..].to_vec()
    );
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

/// The Rust port of a Lightpack job the PHP app dispatched as
/// `(new SendMail)->dispatch(['to' => …])`.
#[derive(Debug, Serialize, Deserialize)]
struct SendMail {
    to: String,
}

impl Job for SendMail {
    const NAME: &'static str = "send_mail";
    const ALIASES: &'static [&'static str] = &["App\\Jobs\\SendMail"];

    async fn execute(self, ctx: &JobContext) -> Result<(), JobError> {
        record_run(ctx, &self.to).await
    }
}

/// `(new Cleanup)->dispatch()`: PHP's `json_encode([])` is `[]`, which a struct with
/// braces and no fields decodes (a unit struct `Cleanup;` would want `null`).
#[derive(Debug, Serialize, Deserialize)]
struct Cleanup {}

impl Job for Cleanup {
    const NAME: &'static str = "cleanup";
    const ALIASES: &'static [&'static str] = &["App\\Jobs\\Cleanup"];

    async fn execute(self, ctx: &JobContext) -> Result<(), JobError> {
        record_run(ctx, "cleanup").await
    }
}

/// An INSERT exactly as Lightpack's `dispatch()` writes it: the PHP class as `name`, the
/// `json_encode`d array, `scheduled_at` = now + delay in the app's time (UTC here), `new`.
async fn php_dispatch(db: &TestDb, class: &str, payload: &str, delay: Duration) {
    let at = chrono::Utc::now() + chrono::Duration::from_std(delay).unwrap();
    let mut conn = db.pool.get_conn().await.unwrap();
    conn.exec_drop(
        "INSERT INTO jobs (name, payload, scheduled_at, status) VALUES (?, ?, ?, 'new')",
        (class, payload, at.format("%Y-%m-%d %H:%M:%S").to_string()),
    )
    .await
    .unwrap();
}

/// The README's "Moving from Lightpack" guide, step by step: the seed table with what
/// the PHP app left in it, the PHP worker stopped, `migrate`, then lightjobs workers
/// running while the PHP app and the Rust app both dispatch. Every job runs once.
#[actix_rt::test]
async fn moving_from_lightpack_runs_every_job_once() {
    let db = TestDb::new("migrate_lightpack").await;
    db.exec(SEED_SQL).await;
    let send_mail = "App\\Jobs\\SendMail";
    php_dispatch(&db, send_mail, r#"{"to":"waiting-1"}"#, Duration::ZERO).await;
    php_dispatch(&db, send_mail, r#"{"to":"waiting-2"}"#, Duration::ZERO).await;
    php_dispatch(&db, "App\\Jobs\\Cleanup", "[]", Duration::ZERO).await;
    php_dispatch(&db, send_mail, r#"{"to":"later"}"#, Duration::from_secs(2)).await;
    // A job the PHP worker had claimed (`queued`) when it was stopped, and one it failed.
    db.exec(
        "INSERT INTO jobs (name, payload, status) VALUES \
         ('App\\\\Jobs\\\\SendMail', '{\"to\":\"in-progress\"}', 'queued'), \
         ('App\\\\Jobs\\\\SendMail', '{\"to\":\"\"}', 'failed')",
    )
    .await;

    let queue = db.queue();
    let migrated = queue.migrate().await.unwrap();
    let adoption = migrated.adopted.expect("the seed table is adopted");
    let counts = |rows: &[(&str, u64)]| -> Vec<(String, u64)> {
        rows.iter().map(|(s, n)| (s.to_string(), *n)).collect()
    };
    assert_eq!(
        adoption.before,
        counts(&[("failed", 1), ("new", 4), ("queued", 1)])
    );
    assert_eq!(
        adoption.after,
        counts(&[("failed", 1), ("pending", 4), ("scheduled", 1)])
    );
    let unfinished: u64 = db
        .scalar("SELECT COUNT(*) FROM jobs WHERE status = 'failed' AND finished_at IS NULL")
        .await;
    assert_eq!(
        unfinished, 0,
        "adopted failures get a finished_at, so pruning applies"
    );
    let queue = db.migrated().await;

    let workers = Workers::new(queue.clone())
        .register::<SendMail>()
        .register::<Cleanup>()
        .data(db.pool.clone())
        .start()
        .await
        .unwrap();
    // Side by side: the PHP app is still deployed and dispatching, and so is the Rust one.
    let php = async {
        for i in 0..30 {
            let payload = format!(r#"{{"to":"php-{i}"}}"#);
            php_dispatch(&db, send_mail, &payload, Duration::ZERO).await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let rust = async {
        for i in 0..30 {
            queue
                .dispatch(SendMail {
                    to: format!("rust-{i}"),
                })
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    futures::join!(php, rust);
    let expected = 5 + 30 + 30;
    db.wait_for("processed", expected, Duration::from_secs(30))
        .await;
    let report = workers.shutdown().await;
    assert_eq!(report.processed, expected);

    let mut conn = db.pool.get_conn().await.unwrap();
    let twice: Vec<(String, u64)> = conn
        .query("SELECT tag, COUNT(*) FROM runs GROUP BY tag HAVING COUNT(*) > 1")
        .await
        .unwrap();
    assert!(twice.is_empty(), "jobs ran twice: {twice:?}");
    let mut tags: Vec<String> = conn.query("SELECT tag FROM runs").await.unwrap();
    tags.sort();
    let mut want: Vec<String> = ["waiting-1", "waiting-2", "cleanup", "later", "in-progress"]
        .iter()
        .map(|s| s.to_string())
        .chain((0..30).flat_map(|i| [format!("php-{i}"), format!("rust-{i}")]))
        .collect();
    want.sort();
    assert_eq!(tags, want);
    let left: Vec<(String, u64)> = conn
        .query("SELECT status, COUNT(*) FROM jobs GROUP BY status ORDER BY status")
        .await
        .unwrap();
    assert_eq!(left, counts(&[("failed", 1), ("processed", expected)]));
    drop(conn);
    db.drop_db().await;
}

/// Taking up a Lightpack app's rows fails while the server refuses it (a trigger that
/// `SIGNAL`s on every `new` → `pending` for 2.5 s): the rows stay `new`, nothing runs, and
/// once the server accepts again each row is taken up and runs once.
#[actix_rt::test]
async fn seed_rows_the_server_refuses_to_take_up_wait_and_then_run_once() {
    use common::faults::{self, Fault};
    let db = TestDb::new("migrate_adopt_refused").await;
    let queue = db.migrated().await;
    faults::install(&db).await;
    let rule = faults::inject(
        &db,
        Fault::update("new", "pending", 1205, Duration::from_millis(2500)),
    )
    .await;
    for i in 0..5 {
        let payload = format!(r#"{{"to":"php-{i}"}}"#);
        php_dispatch(&db, "App\\Jobs\\SendMail", &payload, Duration::ZERO).await;
    }
    let workers = Workers::new(queue.clone())
        .register::<SendMail>()
        .data(db.pool.clone())
        .start()
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while faults::fired(&db, rule).await < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the promoter did not try twice"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        db.count("new").await,
        5,
        "refused: every row is still `new`"
    );
    let runs: u64 = db.scalar("SELECT COUNT(*) FROM runs").await;
    assert_eq!(runs, 0);
    db.wait_for("processed", 5, Duration::from_secs(20)).await;
    let report = workers.shutdown().await;
    assert_eq!(report.processed, 5);
    let mut conn = db.pool.get_conn().await.unwrap();
    let mut tags: Vec<String> = conn.query("SELECT tag FROM runs").await.unwrap();
    tags.sort();
    let want: Vec<String> = (0..5).map(|i| format!("php-{i}")).collect();
    assert_eq!(tags, want, "each row ran once");
    drop(conn);
    db.drop_db().await;
}
