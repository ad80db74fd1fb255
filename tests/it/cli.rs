//! The commands as an operator runs them: real processes of the `lightjobs` binary and of
//! the `worker` example (`lightjobs::cli::run` with the examples' jobs registered).

use crate::common;

use common::Drain;
#[path = "../../examples/shared/jobs.rs"]
mod jobs;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use common::procs::wait_exit;
use common::TestDb;
use jobs::{GenerateReport, SendMail};
use lightjobs::{JobQueue, Workers};

const SEED_FAILURE: &str = "Recipient email address is missing";

fn lightjobs_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_lightjobs"))
}

/// The `worker` example, built next to the `lightjobs` binary.
///
/// `cargo test --test cli` does not build examples, and a binary left by an earlier build
/// would test old code, so cargo is asked once per run (a no-op when it is fresh).
fn worker_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let profile_dir = lightjobs_bin().parent().expect("binary has a directory");
        let target_dir = profile_dir.parent().expect("profile has a target dir");
        let mut cargo = Command::new(env!("CARGO"));
        cargo
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["build", "--quiet", "--example", "worker", "--target-dir"])
            .arg(target_dir);
        match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => {}
            Some("release") => {
                cargo.arg("--release");
            }
            Some(profile) => {
                cargo.args(["--profile", profile]);
            }
        }
        let status = cargo.status().expect("cargo runs");
        assert!(status.success(), "cargo build --example worker: {status}");
        let bin = profile_dir
            .join("examples")
            .join(format!("worker{}", std::env::consts::EXE_SUFFIX));
        assert!(bin.exists(), "{} was not built", bin.display());
        bin
    })
}

/// `program args… --database-url url`, with nothing inherited that could name another
/// database.
fn command(program: &Path, url: Option<&str>, args: &[&str]) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_remove("DATABASE_URL")
        .env_remove("LIGHTJOBS_DATABASE_URL")
        .stdin(Stdio::null());
    if let Some(url) = url {
        cmd.args(["--database-url", url]);
    }
    cmd
}

struct Ran {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn assert_success(&self) -> &Self {
        assert!(
            self.status.success(),
            "exit {}\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }

    fn assert_failure(&self) -> &Self {
        assert!(
            !self.status.success(),
            "expected a failure\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    /// The seed's ✔/✖ lines, sorted: jobs run concurrently, so their order varies.
    fn job_lines(&self) -> Vec<String> {
        let mut lines: Vec<String> = self
            .stdout
            .lines()
            .filter(|l| l.starts_with('✔') || l.starts_with('✖'))
            .map(str::to_owned)
            .collect();
        lines.sort();
        lines
    }
}

fn in_dir(mut cmd: Command, dir: &Path) -> Command {
    cmd.current_dir(dir);
    cmd
}

fn run(mut cmd: Command) -> Ran {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("command starts");
    Ran {
        status,
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

fn lightjobs(db: &TestDb, args: &[&str]) -> Ran {
    run(command(lightjobs_bin(), Some(&db.url), args))
}

fn worker(db: &TestDb, args: &[&str]) -> Ran {
    run(command(worker_bin(), Some(&db.url), args))
}

fn mail(to: &str) -> SendMail {
    SendMail {
        to: to.to_owned(),
        subject: "Welcome".to_owned(),
    }
}

/// Runs every ready job in this process until the queue is empty.
async fn process_all(queue: &JobQueue) {
    Workers::new(queue.clone())
        .register::<SendMail>()
        .drain()
        .await;
}

/// The exited child's stdout, then stderr (its log), as one text for assertion messages.
fn read_output(child: &mut Child) -> (String, String) {
    let mut stdout = String::new();
    if let Some(mut pipe) = child.stdout.take() {
        pipe.read_to_string(&mut stdout).unwrap();
    }
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        pipe.read_to_string(&mut stderr).unwrap();
    }
    (stdout, stderr)
}

/// `migrate` on a Lightpack app's table says it adopted the table and what became of its rows.
#[actix_rt::test]
async fn migrate_reports_an_adopted_seed_table() {
    let db = TestDb::new("cli_migrate_seed").await;
    // The seed's CREATE TABLE, verbatim: migration 1.
    db.exec(lightjobs::migrate::MIGRATIONS[0].sql).await;
    db.exec(
        "INSERT INTO jobs (name, payload, status) VALUES \
         ('App\\\\Jobs\\\\SendMail', '[]', 'new'), ('App\\\\Jobs\\\\SendMail', '[]', 'new'), \
         ('App\\\\Jobs\\\\SendMail', '[]', 'queued'), ('App\\\\Jobs\\\\SendMail', '[]', 'failed')",
    )
    .await;
    let ran = lightjobs(&db, &["migrate"]);
    ran.assert_success();
    assert!(
        ran.stdout.contains(
            "Adopted the existing `jobs` table (before: 1 failed, 2 new, 1 queued; \
             now: 1 failed, 3 pending)."
        ),
        "{}",
        ran.stdout
    );
    let names: Vec<String> = {
        use mysql_async::prelude::Queryable;
        let mut conn = db.pool.get_conn().await.unwrap();
        conn.query("SELECT DISTINCT name FROM jobs").await.unwrap()
    };
    assert_eq!(names, ["App\\Jobs\\SendMail"], "rows kept as they were");
    db.drop_db().await;
}

#[actix_rt::test]
async fn migrate_applies_then_reports_nothing_to_do() {
    let db = TestDb::new("cli_migrate").await;
    // Through the environment this time, as a deploy script would.
    let mut cmd = command(lightjobs_bin(), None, &["migrate"]);
    cmd.env("LIGHTJOBS_DATABASE_URL", &db.url);
    let first = run(cmd);
    first.assert_success();
    let all: Vec<u32> = lightjobs::migrate::MIGRATIONS
        .iter()
        .map(|m| m.version)
        .collect();
    assert!(
        first
            .stdout
            .contains(&format!("Applied migrations {all:?}.")),
        "{}",
        first.stdout
    );
    let applied: usize = db
        .scalar("SELECT COUNT(*) FROM lightjobs_migrations WHERE success = 1")
        .await;
    assert_eq!(applied, all.len());

    let again = lightjobs(&db, &["migrate"]);
    again.assert_success();
    assert!(
        again.stdout.contains("Nothing to migrate"),
        "{}",
        again.stdout
    );
    db.drop_db().await;
}

#[actix_rt::test]
async fn stats_prints_counts_per_queue_and_status() {
    let db = TestDb::new("cli_stats").await;
    let queue = db.migrated().await;
    queue
        .dispatch_many((0..3).map(|i| mail(&format!("user{i}@example.com"))))
        .await
        .unwrap();
    queue
        .dispatch(mail("ops@example.com"))
        .on_queue("mail")
        .await
        .unwrap();

    let ran = lightjobs(&db, &["stats"]);
    ran.assert_success();
    let rows: Vec<Vec<&str>> = ran
        .stdout
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0], ["queue", "status", "jobs"], "{}", ran.stdout);
    assert_eq!(
        rows[1..],
        [["default", "pending", "3"], ["mail", "pending", "1"]],
        "{}",
        ran.stdout
    );
    db.drop_db().await;
}

#[actix_rt::test]
async fn failed_lists_failed_jobs_with_their_error() {
    let db = TestDb::new("cli_failed").await;
    let queue = db.migrated().await;
    let none = lightjobs(&db, &["failed"]);
    none.assert_success();
    assert!(none.stdout.contains("No failed jobs."), "{}", none.stdout);

    let bad = queue.dispatch(mail("")).await.unwrap();
    let good = queue.dispatch(mail("ada@example.com")).await.unwrap();
    process_all(&queue).await;

    let ran = lightjobs(&db, &["failed"]);
    ran.assert_success();
    let lines: Vec<&str> = ran.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "only the failed job: {}", ran.stdout);
    let fields: Vec<&str> = lines[0].split('\t').collect();
    assert_eq!(
        fields[..4],
        [&*bad.to_string(), "default", "send_mail", "1/3 attempts"]
    );
    assert_eq!(fields.last(), Some(&SEED_FAILURE));
    assert_eq!(db.job(good).await.0, "processed");
    db.drop_db().await;
}

#[actix_rt::test]
async fn retry_puts_failed_jobs_back_to_pending() {
    let db = TestDb::new("cli_retry").await;
    let queue = db.migrated().await;
    let ids = queue.dispatch_many((0..3).map(|_| mail(""))).await.unwrap();
    process_all(&queue).await;
    assert_eq!(db.count("failed").await, 3);

    let one = lightjobs(&db, &["retry", &ids[0].to_string()]);
    one.assert_success();
    assert!(
        one.stdout.contains(&format!("Retrying job {}.", ids[0])),
        "{}",
        one.stdout
    );
    let (status, attempts, _) = db.job(ids[0]).await;
    assert_eq!((status.as_str(), attempts), ("pending", 0));
    assert_eq!(db.job(ids[1]).await.0, "failed");

    let all = lightjobs(&db, &["retry", "--all"]);
    all.assert_success();
    assert!(
        all.stdout.contains("Retrying 2 failed job(s)."),
        "{}",
        all.stdout
    );
    assert_eq!(db.count("failed").await, 0);
    assert_eq!(db.count("pending").await, 3);
    db.drop_db().await;
}

#[actix_rt::test]
async fn retry_of_a_job_that_is_not_failed_exits_non_zero() {
    let db = TestDb::new("cli_retry_missing").await;
    let queue = db.migrated().await;
    let unknown = lightjobs(&db, &["retry", "999999"]);
    unknown.assert_failure();
    assert!(
        unknown.stderr.contains("no failed job with id 999999"),
        "{}",
        unknown.stderr
    );

    // A job that exists but is not failed is refused the same way, and left alone.
    let pending = queue.dispatch(mail("ada@example.com")).await.unwrap();
    let ran = lightjobs(&db, &["retry", &pending.to_string()]);
    ran.assert_failure();
    assert!(
        ran.stderr
            .contains(&format!("no failed job with id {pending}")),
        "{}",
        ran.stderr
    );
    assert_eq!(db.job(pending).await.0, "pending");
    db.drop_db().await;
}

#[actix_rt::test]
async fn prune_deletes_processed_jobs_older_than_asked() {
    let db = TestDb::new("cli_prune").await;
    let queue = db.migrated().await;
    queue
        .dispatch_many([mail("a@example.com"), mail("b@example.com"), mail("")])
        .await
        .unwrap();
    process_all(&queue).await;
    assert_eq!(db.count("processed").await, 2);

    // The default keeps a day of history: nothing is that old yet.
    let kept = lightjobs(&db, &["prune"]);
    kept.assert_success();
    assert!(kept.stdout.contains("Pruned 0 job(s)."), "{}", kept.stdout);
    assert_eq!(db.count("processed").await, 2);

    let ran = lightjobs(&db, &["prune", "--processed-hours", "0"]);
    ran.assert_success();
    assert!(ran.stdout.contains("Pruned 2 job(s)."), "{}", ran.stdout);
    assert_eq!(db.count("processed").await, 0);
    assert_eq!(
        db.count("failed").await,
        1,
        "failed jobs are kept by default"
    );
    db.drop_db().await;
}

/// The file `create:job` writes, compiled here against the crate's public API: the
/// generated code builds as long as this test binary does.
#[path = "../../src/cli/job_template.rs"]
mod job_template;

#[test]
fn the_job_template_compiles_and_registers() {
    let registry = lightjobs::Registry::new().register::<job_template::JobName>();
    assert_eq!(registry.names(), ["job_name"]);
}

/// A fresh Cargo project (`Cargo.toml`, `src/main.rs` without `mod jobs;`) under the
/// test's temp dir, which is itself not inside one.
fn cargo_project(name: &str) -> PathBuf {
    let root = std::env::temp_dir().join(format!("lightjobs-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("src")).unwrap();
    std::fs::write(root.join("Cargo.toml"), "[package]\nname = \"app\"\n").unwrap();
    std::fs::write(root.join("src/main.rs"), "fn main() {}\n").unwrap();
    root
}

#[test]
fn create_job_writes_a_module_and_declares_it() {
    let project = cargo_project("create_job");
    // No database is configured: creating a file must not need one.
    let ran = run(in_dir(
        command(lightjobs_bin(), None, &["create:job", "HTTPRequest"]),
        &project,
    ));
    ran.assert_success();
    let path = project.join("src/jobs/http_request.rs");
    assert!(
        ran.stdout.contains(&format!("Created {}", path.display())),
        "{}",
        ran.stdout
    );
    let source = std::fs::read_to_string(&path).unwrap();
    assert!(source.contains("pub struct HTTPRequest {"), "{source}");
    assert!(
        source.contains(r#"const NAME: &'static str = "http_request";"#),
        "{source}"
    );
    assert_eq!(
        std::fs::read_to_string(project.join("src/jobs/mod.rs")).unwrap(),
        "pub mod http_request;\n"
    );
    let main = project.join("src/main.rs");
    assert!(
        ran.stdout
            .contains(&format!("Add `mod jobs;` to {}.", main.display())),
        "{}",
        ran.stdout
    );
    assert!(
        ran.stdout
            .contains("`.register::<jobs::http_request::HTTPRequest>()`"),
        "{}",
        ran.stdout
    );

    // A second job: declared after the first; main.rs has `mod jobs;` now, so no hint.
    std::fs::write(&main, "mod jobs;\nfn main() {}\n").unwrap();
    let second = run(in_dir(
        command(lightjobs_bin(), None, &["create:job", "SendMail"]),
        &project,
    ));
    second.assert_success();
    assert_eq!(
        std::fs::read_to_string(project.join("src/jobs/mod.rs")).unwrap(),
        "pub mod http_request;\npub mod send_mail;\n"
    );
    assert!(
        !second.stdout.contains("Add `mod jobs;`"),
        "{}",
        second.stdout
    );

    std::fs::write(&path, "// edited by hand\n").unwrap();
    let again = run(in_dir(
        command(lightjobs_bin(), None, &["create:job", "HTTPRequest"]),
        &project,
    ));
    again.assert_failure();
    assert!(
        again.stderr.contains(&path.display().to_string())
            && again.stderr.contains("already exists"),
        "the error names the file: {}",
        again.stderr
    );
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "// edited by hand\n",
        "an existing module is never overwritten"
    );
    std::fs::remove_dir_all(&project).unwrap();
}

#[test]
fn create_job_refuses_to_write_outside_a_cargo_project() {
    let outside = std::env::temp_dir().join(format!("lightjobs-no-project-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&outside);
    std::fs::create_dir_all(&outside).unwrap();
    let ran = run(in_dir(
        command(lightjobs_bin(), None, &["create:job", "SendMail"]),
        &outside,
    ));
    ran.assert_failure();
    assert!(
        ran.stderr.contains("not inside a Cargo project"),
        "{}",
        ran.stderr
    );
    assert!(!outside.join("src").exists(), "nothing was written");
    std::fs::remove_dir_all(&outside).unwrap();
}

#[actix_rt::test]
async fn process_jobs_prints_the_seed_lines() {
    let db = TestDb::new("cli_process").await;
    let queue = db.migrated().await;
    let ids = queue
        .dispatch_many([mail("ada@example.com"), mail(""), mail("grace@example.com")])
        .await
        .unwrap();

    let ran = worker(&db, &["process:jobs", "--stop-when-empty"]);
    ran.assert_success();
    let mut expected = vec![
        format!("✔ Job processed successfully: {}", ids[0]),
        format!("✖ Error dispatching job: {} - {SEED_FAILURE}", ids[1]),
        format!("✔ Job processed successfully: {}", ids[2]),
    ];
    expected.sort();
    assert_eq!(ran.job_lines(), expected, "{}", ran.stdout);
    assert_eq!(db.job(ids[0]).await.0, "processed");
    assert_eq!(
        db.job(ids[1]).await,
        ("failed".to_owned(), 1, Some(SEED_FAILURE.to_owned()))
    );
    assert_eq!(db.job(ids[2]).await.0, "processed");
    db.drop_db().await;
}

#[actix_rt::test]
async fn process_jobs_stops_after_max_jobs() {
    let db = TestDb::new("cli_max_jobs").await;
    let queue = db.migrated().await;
    queue
        .dispatch_many((0..5).map(|i| mail(&format!("user{i}@example.com"))))
        .await
        .unwrap();

    let ran = worker(&db, &["process:jobs", "--max-jobs", "2"]);
    ran.assert_success();
    assert_eq!(ran.job_lines().len(), 2, "{}", ran.stdout);
    assert_eq!(db.count("processed").await, 2);
    assert_eq!(db.count("pending").await, 3);
    db.drop_db().await;
}

#[actix_rt::test]
async fn process_jobs_on_an_unmigrated_database_names_the_migration() {
    let db = TestDb::new("cli_unmigrated").await;
    let ran = worker(&db, &["process:jobs", "--stop-when-empty"]);
    ran.assert_failure();
    assert!(
        ran.stderr.contains("has not been applied") && ran.stderr.contains("lightjobs migrate"),
        "{}",
        ran.stderr
    );
    assert!(ran.job_lines().is_empty());
    db.drop_db().await;
}

#[actix_rt::test]
async fn tools_on_an_unmigrated_database_name_the_migration() {
    let db = TestDb::new("cli_tools_unmigrated").await;
    for tool in [&["stats"][..], &["failed"], &["list"], &["retry", "--all"]] {
        let ran = lightjobs(&db, tool);
        ran.assert_failure();
        assert!(
            ran.stderr.contains("has not been applied") && ran.stderr.contains("lightjobs migrate"),
            "{tool:?}: {}",
            ran.stderr
        );
    }
    db.drop_db().await;
}

#[test]
fn the_lightjobs_binary_does_not_offer_process_jobs() {
    let ran = run(command(lightjobs_bin(), None, &["--help"]));
    assert!(ran.status.success(), "{}", ran.stderr);
    assert!(ran.stdout.contains("migrate"), "{}", ran.stdout);
    assert!(!ran.stdout.contains("process:jobs"), "{}", ran.stdout);
    // An application's own binary, with job types, does.
    let ran = run(command(worker_bin(), None, &["--help"]));
    assert!(ran.stdout.contains("process:jobs"), "{}", ran.stdout);
}

#[test]
fn the_lightjobs_binary_cannot_process_jobs() {
    // An unreachable database: the refusal must come before any connection attempt.
    let ran = run(command(
        lightjobs_bin(),
        Some("mysql://root@127.0.0.1:1/unused"),
        &["process:jobs"],
    ));
    ran.assert_failure();
    assert!(
        ran.stderr.contains("from your own binary"),
        "{}",
        ran.stderr
    );
    assert!(!ran.stderr.contains("database error"), "{}", ran.stderr);
}

#[actix_rt::test]
async fn sigterm_lets_running_jobs_finish() {
    let db = TestDb::new("cli_sigterm").await;
    let queue = db.migrated().await;
    let ids = queue
        .dispatch_many((0..3).map(|i| GenerateReport {
            title: format!("report {i}"),
            millis: 1500,
        }))
        .await
        .unwrap();

    let mut child = command(worker_bin(), Some(&db.url), &["process:jobs"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    db.wait_for("running", 3, Duration::from_secs(20)).await;
    common::procs::signal(&child, "-TERM");
    let status = wait_exit(&mut child, Duration::from_secs(30)).await;
    let (stdout, stderr) = read_output(&mut child);
    assert_eq!(status.code(), Some(0), "{status}\n{stdout}\n{stderr}");
    assert_eq!(db.count("running").await, 0);
    for id in ids {
        assert_eq!(db.job(id).await.0, "processed", "{stdout}");
    }
    assert!(
        stdout.contains("Stopped: 3 processed, 0 retried, 0 failed, 0 released."),
        "{stdout}"
    );
    db.drop_db().await;
}

#[actix_rt::test]
async fn sigterm_past_the_grace_period_releases_jobs_without_spending_attempts() {
    let db = TestDb::new("cli_sigterm_release").await;
    let queue = db.migrated().await;
    let ids = queue
        .dispatch_many((0..2).map(|i| GenerateReport {
            title: format!("huge report {i}"),
            millis: 60_000,
        }))
        .await
        .unwrap();

    let mut child = command(
        worker_bin(),
        Some(&db.url),
        &["process:jobs", "--shutdown-timeout", "1"],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    db.wait_for("running", 2, Duration::from_secs(20)).await;
    common::procs::signal(&child, "-TERM");
    let status = wait_exit(&mut child, Duration::from_secs(20)).await;
    let (stdout, stderr) = read_output(&mut child);
    assert_eq!(status.code(), Some(0), "{status}\n{stdout}\n{stderr}");
    assert_eq!(db.count("running").await, 0);
    for id in ids {
        let (status, attempts, _) = db.job(id).await;
        assert_eq!((status.as_str(), attempts), ("pending", 0), "{stdout}");
    }
    assert!(stdout.contains("2 released."), "{stdout}");
    db.drop_db().await;
}

/// `list` rows: (id, queue, status, error), from the tab-separated output.
fn listed(ran: &Ran) -> Vec<(u64, String, String, String)> {
    ran.stdout
        .lines()
        .filter(|l| *l != "No jobs.")
        .map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            assert_eq!(f.len(), 7, "{line}");
            (
                f[0].parse().expect("an id"),
                f[1].to_owned(),
                f[3].to_owned(),
                f[6].to_owned(),
            )
        })
        .collect()
}

#[actix_rt::test]
async fn list_shows_jobs_of_every_status_newest_first() {
    let db = TestDb::new("cli_list").await;
    let queue = db.migrated().await;
    let empty = lightjobs(&db, &["list"]);
    empty.assert_success();
    assert_eq!(empty.stdout.trim(), "No jobs.");

    let failed = queue.dispatch(mail("")).await.unwrap();
    let processed = queue.dispatch(mail("ada@example.com")).await.unwrap();
    process_all(&queue).await;
    let scheduled = queue
        .dispatch(mail("later@example.com"))
        .delay(Duration::from_secs(3600))
        .await
        .unwrap();
    let pending = queue
        .dispatch(mail("ops@example.com"))
        .on_queue("mail")
        .await
        .unwrap();

    let all = lightjobs(&db, &["list"]);
    all.assert_success();
    let status = |id, queue: &str, status: &str, error: &str| {
        (id, queue.to_owned(), status.to_owned(), error.to_owned())
    };
    assert_eq!(
        listed(&all),
        [
            status(pending, "mail", "pending", ""),
            status(scheduled, "default", "scheduled", ""),
            status(processed, "default", "processed", ""),
            status(failed, "default", "failed", SEED_FAILURE),
        ],
        "{}",
        all.stdout
    );

    let ran = lightjobs(&db, &["list", "--status", "failed"]);
    ran.assert_success();
    assert_eq!(
        listed(&ran),
        [status(failed, "default", "failed", SEED_FAILURE)]
    );
    let ran = lightjobs(&db, &["list", "--queue", "mail"]);
    assert_eq!(listed(&ran), [status(pending, "mail", "pending", "")]);
    let ran = lightjobs(&db, &["list", "--limit", "2"]);
    let ids: Vec<u64> = listed(&ran).into_iter().map(|row| row.0).collect();
    assert_eq!(ids, [pending, scheduled]);
    let ran = lightjobs(&db, &["list", "--status", "lost"]);
    ran.assert_failure();
    assert!(ran.stderr.contains("possible values"), "{}", ran.stderr);
    db.drop_db().await;
}

#[actix_rt::test]
async fn discard_deletes_a_failed_job_and_nothing_else() {
    let db = TestDb::new("cli_discard").await;
    let queue = db.migrated().await;
    let failed = queue.dispatch(mail("")).await.unwrap();
    process_all(&queue).await;
    let pending = queue.dispatch(mail("ada@example.com")).await.unwrap();

    let ran = lightjobs(&db, &["discard", &failed.to_string()]);
    ran.assert_success();
    assert!(
        ran.stdout.contains(&format!("Discarded job {failed}.")),
        "{}",
        ran.stdout
    );
    assert_eq!(queue.find(failed).await.unwrap(), None);

    for id in [failed, pending] {
        let ran = lightjobs(&db, &["discard", &id.to_string()]);
        ran.assert_failure();
        assert!(
            ran.stderr.contains(&format!("no failed job with id {id}")),
            "{}",
            ran.stderr
        );
    }
    assert_eq!(db.job(pending).await.0, "pending");
    db.drop_db().await;
}

#[actix_rt::test]
async fn cancel_stops_a_job_that_has_not_started() {
    let db = TestDb::new("cli_cancel").await;
    let queue = db.migrated().await;
    let done = queue.dispatch(mail("ada@example.com")).await.unwrap();
    process_all(&queue).await;
    let waiting = queue
        .dispatch(mail("later@example.com"))
        .delay(Duration::from_secs(3600))
        .await
        .unwrap();

    let ran = lightjobs(&db, &["cancel", &waiting.to_string()]);
    ran.assert_success();
    assert!(
        ran.stdout.contains(&format!("Cancelled job {waiting} ")),
        "{}",
        ran.stdout
    );
    assert_eq!(db.job(waiting).await.0, "cancelled");

    for id in [waiting, done] {
        let ran = lightjobs(&db, &["cancel", &id.to_string()]);
        ran.assert_failure();
        assert!(
            ran.stderr
                .contains(&format!("no waiting or running job with id {id}")),
            "{}",
            ran.stderr
        );
    }
    assert_eq!(db.job(done).await.0, "processed");
    db.drop_db().await;
}

#[actix_rt::test]
async fn pause_and_resume_show_in_stats() {
    let db = TestDb::new("cli_pause").await;
    let queue = db.migrated().await;
    queue
        .dispatch(mail("ops@example.com"))
        .on_queue("mail")
        .await
        .unwrap();

    let ran = lightjobs(&db, &["pause", "mail"]);
    ran.assert_success();
    assert!(ran.stdout.contains("Paused queue mail"), "{}", ran.stdout);
    lightjobs(&db, &["pause", "reports"]).assert_success();
    assert_eq!(queue.paused_queues().await.unwrap(), ["mail", "reports"]);
    let stats = lightjobs(&db, &["stats"]);
    stats.assert_success();
    assert_eq!(
        stats.stdout.lines().last(),
        Some("Paused queues: mail, reports"),
        "{}",
        stats.stdout
    );

    let ran = lightjobs(&db, &["resume", "mail"]);
    ran.assert_success();
    assert!(ran.stdout.contains("Resumed queue mail."), "{}", ran.stdout);
    lightjobs(&db, &["resume", "reports"]).assert_success();
    assert!(queue.paused_queues().await.unwrap().is_empty());
    let stats = lightjobs(&db, &["stats"]);
    assert!(!stats.stdout.contains("Paused"), "{}", stats.stdout);

    let bad = lightjobs(&db, &["pause", " mail"]);
    bad.assert_failure();
    assert!(bad.stderr.contains("invalid queue name"), "{}", bad.stderr);
    db.drop_db().await;
}

#[actix_rt::test]
async fn show_prints_a_job_with_its_tags_and_metadata() {
    let db = TestDb::new("cli_show").await;
    let queue = db.migrated().await;
    let id = queue
        .dispatch(mail("ada@example.com"))
        .tags(["tenant:42"])
        .meta(serde_json::json!({ "requested_by": "ops" }))
        .await
        .unwrap();
    let ran = lightjobs(&db, &["show", &id.to_string()]);
    ran.assert_success();
    let job: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(job["id"], id);
    assert_eq!(job["status"], "pending");
    assert_eq!(job["tags"], serde_json::json!(["tenant:42"]));
    assert_eq!(job["meta"], r#"{"requested_by":"ops"}"#);
    let ran = lightjobs(&db, &["show", "999999"]);
    ran.assert_failure();
    assert!(
        ran.stderr.contains("no known job with id 999999"),
        "{}",
        ran.stderr
    );
    db.drop_db().await;
}

#[actix_rt::test]
async fn batch_prints_a_batch_and_its_progress() {
    let db = TestDb::new("cli_batch").await;
    let queue = db.migrated().await;
    let batch = queue
        .batch()
        .description("welcome mails")
        .jobs([mail("a@example.com"), mail("b@example.com")])
        .dispatch()
        .await
        .unwrap();
    assert!(queue.cancel(batch.jobs[1]).await.unwrap());
    let ran = lightjobs(&db, &["batch", &batch.id.to_string()]);
    ran.assert_success();
    let state: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(state["id"], batch.id);
    assert_eq!(state["description"], "welcome mails");
    assert_eq!(
        (&state["pending"], &state["cancelled"]),
        (&1.into(), &1.into())
    );
    assert_eq!(state["outcome"], serde_json::Value::Null);
    let ran = lightjobs(&db, &["batch", "424242"]);
    ran.assert_failure();
    assert!(
        ran.stderr.contains("batch 424242 does not exist"),
        "{}",
        ran.stderr
    );
    db.drop_db().await;
}

#[actix_rt::test]
async fn list_filters_by_tag() {
    let db = TestDb::new("cli_list_tag").await;
    let queue = db.migrated().await;
    let a = queue
        .dispatch(mail("a@example.com"))
        .tags(["tenant:42"])
        .await
        .unwrap();
    queue
        .dispatch(mail("b@example.com"))
        .tags(["tenant:7"])
        .await
        .unwrap();
    let c = queue
        .dispatch(mail("c@example.com"))
        .tags(["x", "tenant:42"])
        .await
        .unwrap();
    let ran = lightjobs(&db, &["list", "--tag", "tenant:42"]);
    ran.assert_success();
    let ids: Vec<&str> = ran
        .stdout
        .lines()
        .filter_map(|l| l.split('\t').next())
        .collect();
    assert_eq!(ids, [c.to_string(), a.to_string()], "{}", ran.stdout);
    db.drop_db().await;
}
