//! Small helpers shared by the strategies: database URLs, admin statements, statistics,
//! the process's resident set size.

use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts};

/// Errors of the benchmark: any error, with its message kept.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// `Result` with [`BoxError`].
pub type AnyResult<T> = Result<T, BoxError>;

/// `server` (`mysql://user:pass@host:port`, with or without a database path) with its
/// database replaced by `db`.
pub fn db_url(server: &str, db: &str) -> String {
    let (scheme, rest) = server.split_once("://").unwrap_or(("mysql", server));
    let (authority, query) = match rest.split_once('/') {
        Some((authority, path)) => (authority, path.split_once('?').map(|(_, q)| q)),
        None => match rest.split_once('?') {
            Some((authority, q)) => (authority, Some(q)),
            None => (rest, None),
        },
    };
    match query {
        Some(q) => format!("{scheme}://{authority}/{db}?{q}"),
        None => format!("{scheme}://{authority}/{db}"),
    }
}

/// One connection to `url`, opened for a few statements.
pub async fn connect(url: &str) -> AnyResult<Conn> {
    Ok(Conn::new(Opts::from_url(url)?).await?)
}

/// Drops and creates database `db` on `server` (a fresh table per run).
pub async fn recreate_database(server: &str, db: &str) -> AnyResult<()> {
    let mut conn = connect(&db_url(server, "mysql")).await?;
    conn.query_drop(format!("DROP DATABASE IF EXISTS `{db}`"))
        .await?;
    conn.query_drop(format!(
        "CREATE DATABASE `{db}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
    ))
    .await?;
    conn.disconnect().await?;
    Ok(())
}

/// Drops database `db` (cleaning up after a part).
pub async fn drop_database(server: &str, db: &str) -> AnyResult<()> {
    let mut conn = connect(&db_url(server, "mysql")).await?;
    conn.query_drop(format!("DROP DATABASE IF EXISTS `{db}`"))
        .await?;
    conn.disconnect().await?;
    Ok(())
}

/// `SELECT COUNT(*) FROM <table> WHERE <condition>` on database `db`.
pub async fn count(server: &str, db: &str, table: &str, condition: &str) -> AnyResult<u64> {
    let mut conn = connect(&db_url(server, db)).await?;
    let n: Option<u64> = conn
        .query_first(format!("SELECT COUNT(*) FROM {table} WHERE {condition}"))
        .await?;
    conn.disconnect().await?;
    Ok(n.unwrap_or(0))
}

/// `SELECT status, COUNT(*) … GROUP BY status`, as `status=n, …`, for error messages.
pub async fn status_counts(server: &str, db: &str, table: &str) -> AnyResult<String> {
    let mut conn = connect(&db_url(server, db)).await?;
    let rows: Vec<(String, u64)> = conn
        .query(format!(
            "SELECT status, COUNT(*) FROM {table} GROUP BY status ORDER BY status"
        ))
        .await?;
    conn.disconnect().await?;
    Ok(rows
        .iter()
        .map(|(s, n)| format!("{s}={n}"))
        .collect::<Vec<_>>()
        .join(", "))
}

/// What the table tells about a drain of the lightjobs schema: rows claimed by one
/// statement share their `reserved_at` (`UTC_TIMESTAMP(6)` is evaluated once per
/// statement), rows completed together share their `finished_at`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Diag {
    /// Claim statements (distinct `reserved_at`).
    pub claims: u64,
    /// Completion statements (distinct `finished_at`).
    pub completions: u64,
    /// The first claim, µs since the Unix epoch (the database's clock, same host).
    pub first_claim_us: i64,
    /// The last completion, µs since the Unix epoch.
    pub last_finish_us: i64,
}

/// Reads [`Diag`] from `jobs` in `db`.
pub async fn diagnostics(server: &str, db: &str) -> AnyResult<Diag> {
    let mut conn = connect(&db_url(server, db)).await?;
    let row: Option<(u64, u64, Option<i64>, Option<i64>)> = conn
        .query_first(
            "SELECT COUNT(DISTINCT reserved_at), COUNT(DISTINCT finished_at), \
             TIMESTAMPDIFF(MICROSECOND, '1970-01-01', MIN(reserved_at)), \
             TIMESTAMPDIFF(MICROSECOND, '1970-01-01', MAX(finished_at)) FROM jobs",
        )
        .await?;
    conn.disconnect().await?;
    let (claims, completions, first, last) = row.ok_or("no row from the diagnostics query")?;
    Ok(Diag {
        claims,
        completions,
        first_claim_us: first.unwrap_or(0),
        last_finish_us: last.unwrap_or(0),
    })
}

/// Microseconds since the Unix epoch by this host's clock.
pub fn wall_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// One drain's measurements.
#[derive(Debug, Clone, Copy)]
pub struct Drain {
    /// From just before the workers/claimers start to when they have all stopped.
    pub time: Duration,
    /// How long loading the backlog took, where measured.
    pub load: Option<Duration>,
    /// Claim transactions retried after a deadlock or lock wait timeout.
    pub lock_retries: u64,
    /// What the table says (lightjobs schema only).
    pub diag: Option<Diag>,
    /// [`wall_us`] when the drain started.
    pub start_us: i64,
    /// [`wall_us`] when it ended.
    pub end_us: i64,
}

/// `SELECT VERSION()`.
pub async fn server_version(server: &str) -> AnyResult<String> {
    let mut conn = connect(&db_url(server, "mysql")).await?;
    let v: Option<String> = conn.query_first("SELECT VERSION()").await?;
    conn.disconnect().await?;
    Ok(v.unwrap_or_default())
}

/// The value at quantile `q` (0..=1) of `sorted` (nearest rank).
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Median, min and max of `values`.
/// A table row of rates measured per run.
pub struct RateRow {
    pub label: String,
    pub rates: Vec<f64>,
}

/// Writes `| <first> | jobs/s | ÷ <base> |` and a row per `rows`: median (min–max)
/// jobs/s and the median over the first row's median.
pub fn print_rate_table(out: &mut String, first: &str, base: &str, rows: &[RateRow]) {
    use std::fmt::Write as _;
    let _ = writeln!(out, "| {first} | jobs/s | ÷ {base} |\n|---|---:|---:|");
    let base = rows
        .first()
        .map(|r| median_min_max(&r.rates).0)
        .unwrap_or(1.0);
    for r in rows {
        let (med, min, max) = median_min_max(&r.rates);
        let _ = writeln!(
            out,
            "| {} | {} ({}–{}) | {:.2} |",
            r.label,
            thousands(med),
            thousands(min),
            thousands(max),
            med / base
        );
    }
    out.push('\n');
}

pub fn median_min_max(values: &[f64]) -> (f64, f64, f64) {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (median, v[0], v[n - 1])
}

/// A field of `/proc/self/status` in KiB (`VmRSS`, `VmHWM`), None where unavailable.
pub fn proc_status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Milliseconds with two decimals.
/// CPU seconds (user + system) process `pid` (or `self`) has used, from `/proc`.
pub fn cpu_secs(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces:
    // state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / clock_ticks())
}

/// Clock ticks per second of `/proc` times (`getconf CLK_TCK`; 100 on Linux if unreadable).
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `12345.6` as `12,346`.
pub fn thousands(x: f64) -> String {
    if !x.is_finite() {
        return "–".to_owned();
    }
    let n = x.round() as i64;
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// True for the server errors a claim may simply retry: deadlock (1213), lock wait timeout
/// (1205).
pub fn is_lock_conflict(e: &mysql_async::Error) -> bool {
    matches!(e, mysql_async::Error::Server(s) if s.code == 1213 || s.code == 1205)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            db_url("mysql://root@127.0.0.1:3306/test", "x"),
            "mysql://root@127.0.0.1:3306/x"
        );
        assert_eq!(
            db_url("mysql://root@127.0.0.1:3306", "x"),
            "mysql://root@127.0.0.1:3306/x"
        );
        assert_eq!(
            db_url("mysql://a:b@h/test?ssl-mode=disabled", "x"),
            "mysql://a:b@h/x?ssl-mode=disabled"
        );
    }

    #[test]
    fn stats() {
        assert_eq!(median_min_max(&[3.0, 1.0, 2.0]), (2.0, 1.0, 3.0));
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(thousands(1234567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
    }
}
