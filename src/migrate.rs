//! Embedded SQL migrations from `migrations/`, applied in order under a lock and recorded
//! in `lightjobs_migrations`.
//!
//! MySQL DDL is not transactional, so each migration is recorded as started (`success = 0`)
//! before it runs and as done after: a migration that failed halfway leaves a "dirty" row and
//! later runs refuse to guess, naming the migration to repair.

use crate::backoff::Doubling;
use mysql_async::prelude::*;
use std::time::Duration;

use mysql_async::{Conn, Pool};

pub use crate::error::MigrateError;
use crate::nodes::Nodes;

/// One embedded migration.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Its number, from the file name.
    pub version: u32,
    /// The file name.
    pub name: &'static str,
    /// The SQL, statements separated by `;` at the end of a line.
    pub sql: &'static str,
}

macro_rules! migration {
    ($version:expr, $file:literal) => {
        Migration {
            version: $version,
            name: $file,
            sql: include_str!(concat!("../migrations/", $file)),
        }
    };
}

/// What a migration run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Migrated {
    /// The versions applied, in order (empty when the schema was already current).
    pub applied: Vec<u32>,
    /// Set when an existing seed-era (Lightpack) `jobs` table was taken over with its rows.
    pub adopted: Option<Adoption>,
}

/// The rows of an adopted seed table, by status, before and after the migrations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Adoption {
    /// (status, rows) as the seed's code left them: `new` waiting, `queued` in progress
    /// under a Lightpack worker, `failed`.
    pub before: Vec<(String, u64)>,
    /// (status, rows) after: unfinished rows `pending` (or `scheduled` when due later),
    /// `failed` kept, with a `finished_at` so that pruning applies to them.
    pub after: Vec<(String, u64)>,
}

impl std::fmt::Display for Adoption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |rows: &[(String, u64)]| {
            if rows.is_empty() {
                return "no rows".to_owned();
            }
            rows.iter()
                .map(|(status, n)| format!("{n} {status}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        write!(
            f,
            "adopted the existing `jobs` table (before: {}; now: {})",
            list(&self.before),
            list(&self.after)
        )
    }
}

/// Every migration this build knows, in order.
pub const MIGRATIONS: &[Migration] = &[
    migration!(1, "0001_create_jobs.sql"),
    migration!(2, "0002_utf8mb4.sql"),
    migration!(3, "0003_queue_columns.sql"),
    migration!(4, "0004_workers.sql"),
    migration!(5, "0005_scheduled_status.sql"),
    migration!(6, "0006_unique_and_queues.sql"),
    migration!(7, "0007_queue_limits.sql"),
    migration!(8, "0008_claim_token.sql"),
    migration!(9, "0009_worker_liveness.sql"),
    migration!(10, "0010_adopted_finished_at.sql"),
    migration!(11, "0011_worker_left_behind.sql"),
    migration!(12, "0012_counts.sql"),
    migration!(13, "0013_worker_wake.sql"),
    migration!(14, "0014_claim_turns.sql"),
    migration!(15, "0015_flow_columns.sql"),
    migration!(16, "0016_flow_keys.sql"),
    migration!(17, "0017_trace_parent.sql"),
    migration!(18, "0018_cancel_requests.sql"),
    migration!(19, "0019_tags_meta_output.sql"),
    migration!(20, "0020_batches_and_dependencies.sql"),
    migration!(21, "0021_error_history.sql"),
];

/// The newest migration the running code needs.
pub(crate) fn latest() -> &'static Migration {
    &MIGRATIONS[MIGRATIONS.len() - 1]
}

/// How long the migration lease lasts without renewal: a migrator that died lets the
/// others go on after this (they then find its migration dirty).
const MIGRATE_LEASE: Duration = Duration::from_secs(60);
/// How long a process waits for another one's migrations.
const MIGRATE_WAIT: Duration = Duration::from_secs(600);

/// Applies every migration not yet applied; safe to call from many processes at once, on
/// one server or on any nodes of a Galera cluster: one process at a time holds the
/// `migrate` lease (a row in `lightjobs_leases`, renewed while it works); the others wait,
/// then find nothing to do.
pub async fn run(pool: &Pool) -> Result<Migrated, MigrateError> {
    run_on(&Nodes::single(pool.clone())).await
}

/// [`run`] on the node in use of a queue's nodes.
pub(crate) async fn run_on(pool: &Nodes) -> Result<Migrated, MigrateError> {
    let mut conn = pool.get_conn().await?;
    conn.query_drop(crate::store::CREATE_LEASES).await?;
    let holder = format!("migrate:{}:{:016x}", std::process::id(), fastrand::u64(..));
    let waited = std::time::Instant::now();
    let mut pause = Doubling::new(Duration::from_millis(20), Duration::from_millis(500));
    while !crate::store::acquire_lease(&mut conn, "migrate", &holder, MIGRATE_LEASE).await? {
        if waited.elapsed() > MIGRATE_WAIT {
            return Err(MigrateError::LockTimeout);
        }
        tokio::time::sleep(pause.next_jittered(fastrand::f64())).await;
    }
    // Kept alive on a second connection while the migrations run (an ALTER of a large
    // table can outlast the lease).
    let renew = async {
        let Ok(mut renew) = pool.get_conn().await else {
            return std::future::pending::<()>().await;
        };
        loop {
            tokio::time::sleep(MIGRATE_LEASE / 4).await;
            if let Err(error) =
                crate::store::acquire_lease(&mut renew, "migrate", &holder, MIGRATE_LEASE).await
            {
                tracing::warn!(target: "lightjobs::migrate", %error, "renewing the migration lease failed");
            }
        }
    };
    let result = tokio::select! {
        result = apply_pending(&mut conn) => result,
        // The renewal loop never ends; this arm is only there to drive it.
        () = renew => Err(MigrateError::LockTimeout),
    };
    // Given back even when a migration failed; it would lapse anyway.
    let _ = crate::store::release_lease(&mut conn, "migrate", &holder).await;
    result
}

async fn apply_pending(conn: &mut Conn) -> Result<Migrated, MigrateError> {
    conn.query_drop(
        "CREATE TABLE IF NOT EXISTS lightjobs_migrations (
            version INT UNSIGNED NOT NULL PRIMARY KEY,
            name VARCHAR(255) NOT NULL,
            checksum BIGINT UNSIGNED NOT NULL,
            success TINYINT(1) NOT NULL,
            applied_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
        ) ENGINE=InnoDB",
    )
    .await?;
    let applied: Vec<(u32, u64, bool)> = conn
        .query("SELECT version, checksum, success FROM lightjobs_migrations ORDER BY version")
        .await?;
    let mut done = Migrated::default();
    for m in MIGRATIONS {
        if let Some(&(_, checksum, success)) = applied.iter().find(|a| a.0 == m.version) {
            if !success {
                return Err(MigrateError::Dirty {
                    version: m.version,
                    name: m.name,
                });
            }
            if checksum != crate::fnv::fnv1a(m.sql.as_bytes()) {
                return Err(MigrateError::Changed {
                    version: m.version,
                    name: m.name,
                });
            }
            continue;
        }
        if m.version == 1 && adopt_seed_table(conn).await? {
            // The seed's own table is there (created by hand or by Lightpack): it *is*
            // migration 1, so record it and upgrade it in place with its rows.
            record(conn, m, true).await?;
            done.adopted = Some(Adoption {
                before: rows_by_status(conn).await?,
                after: Vec::new(),
            });
            continue;
        }
        record(conn, m, false).await?;
        for statement in statements(m.sql) {
            conn.query_drop(statement)
                .await
                .map_err(|source| MigrateError::Failed {
                    version: m.version,
                    name: m.name,
                    source,
                })?;
        }
        conn.exec_drop(
            "UPDATE lightjobs_migrations SET success = 1 WHERE version = ?",
            (m.version,),
        )
        .await?;
        tracing::info!(target: "lightjobs::migrate", version = m.version, name = m.name, "applied");
        done.applied.push(m.version);
    }
    if let Some(adoption) = &mut done.adopted {
        adoption.after = rows_by_status(conn).await?;
        tracing::info!(target: "lightjobs::migrate", "{adoption}");
    }
    Ok(done)
}

async fn rows_by_status(conn: &mut Conn) -> Result<Vec<(String, u64)>, MigrateError> {
    Ok(conn
        .query("SELECT status, COUNT(*) FROM jobs GROUP BY status ORDER BY status")
        .await?)
}

/// True when a `jobs` table already exists with the seed's columns.
async fn adopt_seed_table(conn: &mut Conn) -> Result<bool, MigrateError> {
    let columns: Vec<String> = conn
        .query(
            "SELECT COLUMN_NAME FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'jobs'",
        )
        .await?;
    if columns.is_empty() {
        return Ok(false);
    }
    let needed = [
        "id",
        "name",
        "payload",
        "status",
        "scheduled_at",
        "created_at",
    ];
    let missing: Vec<_> = needed
        .iter()
        .filter(|c| !columns.iter().any(|have| have.eq_ignore_ascii_case(c)))
        .collect();
    if !missing.is_empty() {
        return Err(MigrateError::ForeignTable(format!(
            "it lacks the column(s) {missing:?}"
        )));
    }
    Ok(true)
}

async fn record(conn: &mut Conn, m: &Migration, success: bool) -> Result<(), MigrateError> {
    conn.exec_drop(
        "INSERT INTO lightjobs_migrations (version, name, checksum, success) VALUES (?, ?, ?, ?)",
        (
            m.version,
            m.name,
            crate::fnv::fnv1a(m.sql.as_bytes()),
            success,
        ),
    )
    .await?;
    Ok(())
}

/// Statements end with `;` at the end of a line; `--` comment lines are dropped.
fn statements(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in sql.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("--") || trimmed.is_empty() {
            continue;
        }
        current.push_str(line);
        current.push('\n');
        if trimmed.ends_with(';') {
            let stmt = current.trim().trim_end_matches(';').trim().to_owned();
            out.push(stmt);
            current.clear();
        }
    }
    if !current.trim().is_empty() {
        out.push(current.trim().to_owned());
    }
    out
}

/// Refuses servers without `SKIP LOCKED`: MySQL before 8.0.1, MariaDB before 10.6.
pub(crate) fn check_server_version(version: &str) -> crate::Result<()> {
    let unsupported = || crate::Error::UnsupportedServer {
        version: version.to_owned(),
    };
    let numbers: Vec<u32> = version
        .split(|c: char| !c.is_ascii_digit())
        .take(3)
        .map(|n| n.parse().unwrap_or(0))
        .collect();
    let (major, minor, patch) = match numbers.as_slice() {
        [a, b, c] => (*a, *b, *c),
        _ => return Err(unsupported()),
    };
    let ok = if version.to_ascii_lowercase().contains("mariadb") {
        (major, minor) >= (10, 6)
    } else {
        (major, minor, patch) >= (8, 0, 1)
    };
    if ok {
        Ok(())
    } else {
        Err(unsupported())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert!(check_server_version("10.11.19-MariaDB-0+deb12u1").is_ok());
        assert!(check_server_version("11.4.2-MariaDB").is_ok());
        assert!(check_server_version("8.0.36").is_ok());
        assert!(check_server_version("8.4.0-commercial").is_ok());
        assert!(check_server_version("10.5.23-MariaDB").is_err());
        assert!(check_server_version("5.7.44-log").is_err());
        assert!(check_server_version("8.0.0").is_err());
        let e = check_server_version("10.3.39-MariaDB")
            .unwrap_err()
            .to_string();
        assert!(e.contains("MariaDB 10.6+"), "{e}");
    }

    #[test]
    fn splits_statements_and_skips_comments() {
        let s = statements("-- a comment\nALTER TABLE t\n  ADD x INT;\n\nUPDATE t SET x = 1\n");
        assert_eq!(s, vec!["ALTER TABLE t\n  ADD x INT", "UPDATE t SET x = 1"]);
        assert_eq!(statements(MIGRATIONS[0].sql).len(), 1);
        assert_eq!(statements(MIGRATIONS[2].sql).len(), 2);
        assert_eq!(statements(MIGRATIONS[5].sql).len(), 2);
    }

    #[test]
    fn migrations_are_numbered_in_order() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version as usize, i + 1);
            assert!(m.name.starts_with(&format!("{:04}_", m.version)));
        }
    }
}
