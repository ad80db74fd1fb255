//! Leases: one row per role that one process at a time may play (the migrator, the
//! rescuer, the pruner). A guarded UPDATE of a row certifies across every node of a Galera
//! cluster, where `GET_LOCK` is local to the node it runs on.

use super::*;

/// The table of leases: one row per role that one process at a time may play (the
/// migrator, the rescuer, the pruner). A guarded UPDATE of a row certifies across every
/// node of a Galera cluster, where `GET_LOCK` is local to the node it runs on. Created by
/// the migration runner, which needs it before any migration runs.
pub const CREATE_LEASES: &str = "CREATE TABLE IF NOT EXISTS lightjobs_leases (
    name VARCHAR(191) NOT NULL,
    holder VARCHAR(191) NOT NULL,
    expires_at DATETIME(6) NOT NULL,
    PRIMARY KEY (name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin";

/// Takes (or extends) the lease `name` for `holder` until `ttl` from now, unless another
/// holder's lease has not expired. True when `holder` has it. A conflict with another
/// taker (a deadlock, a Galera certification failure) means it did not get it.
pub async fn acquire_lease(
    conn: &mut Conn,
    name: &str,
    holder: &str,
    ttl: Duration,
) -> mysql_async::Result<bool> {
    // Assignments run left to right: `expires_at` sees the holder just decided.
    let taken = conn
        .exec_drop(
            "INSERT INTO lightjobs_leases (name, holder, expires_at) \
             VALUES (?, ?, UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND) \
             ON DUPLICATE KEY UPDATE \
             holder = IF(expires_at < UTC_TIMESTAMP(6) OR holder = VALUES(holder), \
                         VALUES(holder), holder), \
             expires_at = IF(holder = VALUES(holder), VALUES(expires_at), expires_at)",
            (name, holder, micros(ttl)),
        )
        .await;
    match taken {
        Ok(()) => {}
        Err(mysql_async::Error::Server(e)) if matches!(e.code, 1213 | 1205) => return Ok(false),
        Err(e) => return Err(e),
    }
    let now: Option<String> = conn
        .exec_first(
            "SELECT holder FROM lightjobs_leases WHERE name = ?",
            (name,),
        )
        .await?;
    Ok(now.as_deref() == Some(holder))
}

/// Gives the lease back at once (if `holder` still has it): its expiry goes to a fixed
/// past, not "now" by the clock of the node that runs this, which a node whose clock is
/// behind would read as still in the future.
pub async fn release_lease(conn: &mut Conn, name: &str, holder: &str) -> mysql_async::Result<()> {
    conn.exec_drop(
        "UPDATE lightjobs_leases SET expires_at = TIMESTAMP'1970-01-01 00:00:00' \
         WHERE name = ? AND holder = ?",
        (name, holder),
    )
    .await
}

impl Store {
    /// Runs `f` only if `holder` gets the lease `name` (one process at a time across every
    /// node of a cluster); `None` when another process holds it. The lease is given back
    /// when `f` ends, and lapses after `ttl` if this process dies meanwhile.
    pub(crate) async fn with_lease<T, F, Fut>(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
        f: F,
    ) -> Result<Option<T>>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let taken = self
            .nodes
            .run(async |conn| Ok(acquire_lease(conn, name, holder, ttl).await?))
            .await?;
        if !taken {
            return Ok(None);
        }
        let result = f().await;
        self.nodes
            .run(async |conn| Ok(release_lease(conn, name, holder).await?))
            .await?;
        result.map(Some)
    }
}
