//! Flow control in the claim: which claimed rows of a flow key may start, under a lock on
//! the key's row; the rest are parked as `blocked`, out of the claim range, and come back
//! to `pending` when the key has room.
//!
//! The limits are checked in one place, the claim, against what the table holds: the
//! key's `running` rows and its starts in the window, counted while the claim holds the
//! key's row in `lightjobs_flow_keys`. Nothing is a counter that a crash could leave
//! wrong: a dead process's running jobs stop counting when the rescuer takes them back.
//! Parking and unparking only move rows between `pending` and `blocked`; a row unparked
//! too early is parked again by the claim that reads it, and one left parked too long is
//! unparked by the sweep ([`Store::sweep_flow_keys`]) at the key's `recheck_at`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use super::claim::read_sets;
use super::*;
use crate::flow::FlowKeyState;

/// Added to every rate window: the claim records a start before its commit and the job
/// starts after it, so starts a window apart on the database's clock could land a little
/// closer on the job's. This much room covers that gap.
pub(crate) const RATE_MARGIN: Duration = Duration::from_millis(25);

/// When a key is parked only for its concurrency, its jobs are looked at again this late
/// at most: finishing jobs unpark the next ones at once, this is the safety net (a
/// process that died between a finish and its unpark).
pub(crate) const CONCURRENCY_RECHECK: Duration = Duration::from_secs(5);

/// A claimed row's flow key and limits, as stored with the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RowFlow {
    pub key: String,
    pub concurrency: Option<u32>,
    /// Starts and window (ms).
    pub rate: Option<(u32, u32)>,
}

/// A key's limits: the tightest of its claimed rows, else those stored at its last park.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Limits {
    concurrency: Option<u32>,
    rate: Option<(u32, u32)>,
}

impl Limits {
    fn merge(self, row: &RowFlow) -> Limits {
        let min = |a: Option<u32>, b: Option<u32>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Limits {
            concurrency: min(self.concurrency, row.concurrency),
            rate: match (self.rate, row.rate) {
                (Some((n, w)), Some((m, v))) => Some((n.min(m), w.max(v))),
                (a, b) => a.or(b),
            },
        }
    }
}

/// What the database says about a key, read under its lock.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct KeyState {
    stored: Limits,
    /// Microseconds left of a pause a job asked for (0: none).
    paused_us: u64,
    /// Whether it has parked jobs (its `recheck_at` is set).
    has_blocked: bool,
    running: u64,
    /// Starts in the window, and microseconds until the oldest of them leaves it.
    starts: u64,
    next_free_us: u64,
}

/// What a claim does with its rows of flow keys, decided from the keys' states.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Rows that start (every unkeyed row, and keyed rows within their limits), in order.
    pub admitted: Vec<u64>,
    /// Rows parked as `blocked`.
    pub parked: Vec<u64>,
    /// Per parked key: its limits and how soon (µs) to look at it again.
    parks: BTreeMap<String, (Limits, u64)>,
    /// Per rate-limited key: the window (ms) and the starts to record.
    starts: BTreeMap<String, (u32, Vec<u64>)>,
    /// Per key with parked jobs and room left: how many to unpark.
    unpark: BTreeMap<String, u64>,
}

/// Decides which of `rows` (claim order) start. A key's room is its concurrency less its
/// running jobs, and its rate less its starts in the window, none while it is paused.
pub(crate) fn plan(rows: &[(u64, Option<&RowFlow>)], states: &BTreeMap<String, KeyState>) -> Plan {
    let mut limits: BTreeMap<&str, Limits> = BTreeMap::new();
    for flow in rows.iter().filter_map(|(_, f)| *f) {
        let l = limits.entry(&flow.key).or_default();
        *l = l.merge(flow);
    }
    let room = |key: &str, state: &KeyState| -> (Limits, u64) {
        let l = limits.get(key).copied().unwrap_or(state.stored);
        if state.paused_us > 0 {
            return (l, 0);
        }
        let by_conc = l
            .concurrency
            .map_or(u64::MAX, |c| u64::from(c).saturating_sub(state.running));
        let by_rate = l
            .rate
            .map_or(u64::MAX, |(n, _)| u64::from(n).saturating_sub(state.starts));
        (l, by_conc.min(by_rate))
    };
    // Per key: its limits, its room left, and the starts this claim adds.
    let mut left: BTreeMap<&str, (Limits, u64, u64)> = states
        .iter()
        .map(|(k, s)| {
            let (l, n) = room(k, s);
            (k.as_str(), (l, n, 0))
        })
        .collect();
    let mut plan = Plan::default();
    for (id, flow) in rows {
        let Some(flow) = flow else {
            plan.admitted.push(*id);
            continue;
        };
        let Some((l, n, used)) = left.get_mut(flow.key.as_str()) else {
            // Never read (cannot happen: every key is locked and read): safest to wait.
            plan.parked.push(*id);
            continue;
        };
        if *n > 0 {
            *n -= 1;
            *used += 1;
            plan.admitted.push(*id);
            if let Some((_, window)) = l.rate {
                plan.starts
                    .entry(flow.key.clone())
                    .or_insert_with(|| (window, Vec::new()))
                    .1
                    .push(*id);
            }
        } else {
            plan.parked.push(*id);
            let state = &states[&flow.key];
            plan.parks
                .insert(flow.key.clone(), (*l, recheck_us(*l, state, *used)));
        }
    }
    for (key, (l, n, used)) in left {
        let state = &states[key];
        if !state.has_blocked || plan.parks.contains_key(key) {
            continue;
        }
        if n > 0 {
            // Bounded by the key's limits; whatever is over is parked again by its claim.
            plan.unpark.insert(key.to_owned(), n.min(10_000));
        } else {
            // No room, jobs parked earlier: looked at again when it can have room (the
            // starts this claim adds may have filled the window).
            plan.parks
                .insert(key.to_owned(), (l, recheck_us(l, state, used)));
        }
    }
    plan
}

/// How soon a parked key can have room, `started` starts having just been added to its
/// window: the end of its pause; else, when the window is full, the oldest start leaving
/// it (a full window from now if they are all new); else (concurrency) the safety recheck.
fn recheck_us(l: Limits, state: &KeyState, started: u64) -> u64 {
    if state.paused_us > 0 {
        return state.paused_us;
    }
    if let Some((n, window)) = l.rate {
        if state.starts + started >= u64::from(n) {
            let full = u64::from(window) * 1000 + micros(RATE_MARGIN).unsigned_abs();
            return if state.starts > 0 && state.next_free_us > 0 {
                state.next_free_us
            } else {
                full
            };
        }
    }
    micros(CONCURRENCY_RECHECK).unsigned_abs()
}

/// The earliest recheck this process set, in ms since [`epoch`]: the maintenance thread
/// sweeps then rather than at its next regular pass.
static NEXT_SWEEP_MS: AtomicU64 = AtomicU64::new(u64::MAX);

fn epoch() -> std::time::Instant {
    static EPOCH: once_cell::sync::Lazy<std::time::Instant> =
        once_cell::sync::Lazy::new(std::time::Instant::now);
    *EPOCH
}

fn note_recheck(after_us: u64) {
    let at = epoch().elapsed().as_millis() as u64 + after_us / 1000 + 1;
    NEXT_SWEEP_MS.fetch_min(at, Ordering::Relaxed);
}

/// Whether a recheck this process set is due (and forgets it).
pub(crate) fn sweep_due() -> bool {
    let now = epoch().elapsed().as_millis() as u64;
    if NEXT_SWEEP_MS.load(Ordering::Relaxed) <= now {
        NEXT_SWEEP_MS.store(u64::MAX, Ordering::Relaxed);
        return true;
    }
    false
}

/// The statement that locks `keys` (sorted, so two claims never wait on each other in a
/// cycle), making the rows of new ones and writing the limits the claimed rows give (a key
/// only freed keeps its stored ones); `used_at` tells which keys are idle.
fn lock_sql(keys: &[(&str, Limits)]) -> String {
    let opt = |v: Option<u32>| v.map_or("NULL".to_owned(), |v| v.to_string());
    let mut sql = String::from(
        "INSERT INTO lightjobs_flow_keys (flow_key, used_at, concurrency, rate, window_ms) VALUES ",
    );
    for (i, (key, l)) in keys.iter().enumerate() {
        let _ = write!(
            sql,
            "{}({}, UTC_TIMESTAMP(6), {}, {}, {})",
            if i > 0 { ", " } else { "" },
            sql_string(key),
            opt(l.concurrency),
            opt(l.rate.map(|r| r.0)),
            opt(l.rate.map(|r| r.1)),
        );
    }
    sql.push_str(
        " ON DUPLICATE KEY UPDATE used_at = VALUES(used_at), \
         concurrency = COALESCE(VALUES(concurrency), concurrency), \
         rate = COALESCE(VALUES(rate), rate), window_ms = COALESCE(VALUES(window_ms), window_ms)",
    );
    sql
}

/// The reads of the keys' states, three statements whatever the number of keys (plain
/// reads: the keys' rows are already locked, and a locking read would wait on job rows
/// other claims hold): each key's row, its running jobs, its starts in its window.
fn state_sql(keys: &[&str]) -> String {
    let list = keys
        .iter()
        .map(|k| sql_string(k))
        .collect::<Vec<_>>()
        .join(", ");
    let w = format!("(k.window_ms * 1000 + {})", micros(RATE_MARGIN));
    format!(
        concat!(
            "SELECT k.flow_key, k.concurrency, k.rate, k.window_ms, \
             CAST(GREATEST(COALESCE(TIMESTAMPDIFF(MICROSECOND, UTC_TIMESTAMP(6), \
             k.paused_until), 0), 0) AS SIGNED), k.recheck_at IS NOT NULL \
             FROM lightjobs_flow_keys k WHERE k.flow_key IN ({list}); \
             SELECT flow_key, COUNT(*) FROM jobs FORCE INDEX (jobs_flow) \
             WHERE flow_key IN ({list}) AND status = ",
            st!(running),
            " GROUP BY flow_key; \
             SELECT s.flow_key, COUNT(*), CAST(GREATEST(TIMESTAMPDIFF(MICROSECOND, \
             UTC_TIMESTAMP(6), MIN(s.started_at) + INTERVAL {w} MICROSECOND), 0) AS SIGNED) \
             FROM lightjobs_flow_keys k JOIN lightjobs_flow_starts s ON s.flow_key = k.flow_key \
             WHERE k.flow_key IN ({list}) AND k.window_ms IS NOT NULL \
             AND s.started_at > UTC_TIMESTAMP(6) - INTERVAL {w} MICROSECOND \
             GROUP BY s.flow_key"
        ),
        list = list,
        w = w
    )
}

/// The keys' states from [`state_sql`]'s three result sets.
fn decode_states(sets: &[Vec<Row>]) -> BTreeMap<String, KeyState> {
    let num = |row: &mut Row, i: usize| -> Option<i64> { row.take_opt(i).and_then(|v| v.ok()) };
    let u32_of = |v: Option<i64>| v.and_then(|v| u32::try_from(v).ok());
    let non_neg = |v: Option<i64>| v.map_or(0, |v| u64::try_from(v).unwrap_or(0));
    let mut states = BTreeMap::new();
    for mut row in sets.first().cloned().unwrap_or_default() {
        let Some(key) = text(&mut row, 0) else {
            continue;
        };
        let (conc, rate, window) = (
            u32_of(num(&mut row, 1)),
            u32_of(num(&mut row, 2)),
            u32_of(num(&mut row, 3)),
        );
        let state = KeyState {
            stored: Limits {
                concurrency: conc,
                rate: rate.zip(window),
            },
            paused_us: non_neg(num(&mut row, 4)),
            has_blocked: num(&mut row, 5).unwrap_or(0) != 0,
            ..KeyState::default()
        };
        states.insert(key, state);
    }
    for mut row in sets.get(1).cloned().unwrap_or_default() {
        if let Some(state) = text(&mut row, 0).and_then(|k| states.get_mut(&k)) {
            state.running = non_neg(num(&mut row, 1));
        }
    }
    for mut row in sets.get(2).cloned().unwrap_or_default() {
        if let Some(state) = text(&mut row, 0).and_then(|k| states.get_mut(&k)) {
            state.starts = non_neg(num(&mut row, 1));
            state.next_free_us = non_neg(num(&mut row, 2));
        }
    }
    states
}

fn decode_limited(mut row: Row) -> Option<FlowKeyState> {
    let key = text(&mut row, 0)?;
    let mut get = |i: usize| -> Option<i64> { row.take_opt(i).and_then(|v| v.ok()) };
    let u32_of = |v: Option<i64>| v.and_then(|v| u32::try_from(v).ok());
    let (concurrency, rate, window) = (u32_of(get(1)), u32_of(get(2)), u32_of(get(3)));
    let non_neg = |v: Option<i64>| v.map_or(0, |v| u64::try_from(v).unwrap_or(0));
    let (paused_us, running, blocked) = (non_neg(get(4)), non_neg(get(5)), non_neg(get(6)));
    // A recheck left from a wait that is over: nothing waits, nothing is paused.
    if blocked == 0 && paused_us == 0 {
        return None;
    }
    Some(FlowKeyState {
        key,
        running,
        blocked,
        concurrency,
        rate: rate.zip(window.map(|w| Duration::from_millis(u64::from(w)))),
        paused_for: (paused_us > 0).then(|| Duration::from_micros(paused_us)),
    })
}

/// Locks the keys of `rows` and of `freed` (the keys of jobs this transaction finished)
/// and reads their states: one round trip, inside the claim's transaction. Returns the
/// result sets of `first` (statements run before, in the same round trip) and the states.
pub(crate) async fn read_states(
    conn: &mut Conn,
    first: String,
    rows: &[(u64, Option<&RowFlow>)],
    freed: &[&str],
) -> Result<(Vec<Vec<Row>>, BTreeMap<String, KeyState>)> {
    let mut limits: BTreeMap<&str, Limits> = BTreeMap::new();
    for flow in rows.iter().filter_map(|(_, f)| *f) {
        let l = limits.entry(&flow.key).or_default();
        *l = l.merge(flow);
    }
    for key in freed {
        limits.entry(key).or_default();
    }
    let keys: Vec<&str> = limits.keys().copied().collect();
    let locks: Vec<(&str, Limits)> = limits.into_iter().collect();
    let sql = format!("{first}{}; {}", lock_sql(&locks), state_sql(&keys));
    let mut sets: Vec<Vec<Row>> = read_sets(conn.query_iter(sql).await?).await?;
    let states = decode_states(&sets.split_off(sets.len().saturating_sub(3)));
    Ok((sets, states))
}

impl Plan {
    /// How many parked jobs it moves back to `pending` (at most).
    pub(crate) fn unparked(&self) -> u64 {
        self.unpark.values().sum()
    }

    /// The statements that carry the plan out, for the claim's commit round trip (before
    /// its COMMIT): parks, the keys' recheck times, recorded starts, unparks.
    pub(crate) fn sql(&self) -> String {
        let mut sql = String::new();
        if !self.parked.is_empty() {
            let _ = write!(
                sql,
                concat!(
                    "UPDATE jobs SET status = ",
                    st!(blocked),
                    " WHERE id IN ({}); "
                ),
                id_list(self.parked.iter().copied())
            );
        }
        let opt = |v: Option<u32>| v.map_or("NULL".to_owned(), |v| v.to_string());
        for (key, (l, after)) in &self.parks {
            note_recheck(*after);
            let at = format!("UTC_TIMESTAMP(6) + INTERVAL {after} MICROSECOND");
            let _ = write!(
                sql,
                "UPDATE lightjobs_flow_keys SET concurrency = {}, rate = {}, window_ms = {}, \
                 recheck_at = LEAST(COALESCE(recheck_at, {at}), {at}) WHERE flow_key = {}; ",
                opt(l.concurrency),
                opt(l.rate.map(|r| r.0)),
                opt(l.rate.map(|r| r.1)),
                sql_string(key)
            );
        }
        for (key, (window, ids)) in &self.starts {
            let k = sql_string(key);
            let _ = write!(
                sql,
                "DELETE FROM lightjobs_flow_starts WHERE flow_key = {k} AND started_at <= \
                 UTC_TIMESTAMP(6) - INTERVAL {} MICROSECOND; \
                 INSERT INTO lightjobs_flow_starts (flow_key, started_at, job_id) VALUES ",
                u64::from(*window) * 1000 + micros(RATE_MARGIN).unsigned_abs()
            );
            for (i, id) in ids.iter().enumerate() {
                let sep = if i > 0 { ", " } else { "" };
                let _ = write!(sql, "{sep}({k}, UTC_TIMESTAMP(6), {id})");
            }
            sql.push_str("; ");
        }
        for (key, n) in &self.unpark {
            let _ = write!(sql, "{}; ", unpark_sql(key, *n));
        }
        sql
    }
}

/// The statements of flow control whose plans matter as the table grows, for `EXPLAIN` in
/// the tests: a key's state (its running count and its window), an unpark, the sweep's
/// read of due keys, and the read of the keys at a limit.
pub fn flow_plan_sql(key: &str) -> Vec<String> {
    let mut all: Vec<String> = state_sql(&[key, "other"])
        .split("; ")
        .map(str::to_owned)
        .collect();
    all.extend([
        unpark_sql(key, 10),
        "SELECT flow_key FROM lightjobs_flow_keys FORCE INDEX (flow_recheck) \
         WHERE recheck_at <= UTC_TIMESTAMP(6) ORDER BY recheck_at LIMIT 100"
            .to_owned(),
    ]);
    all
}

/// Moves up to `n` of `key`'s parked jobs back to `pending`, oldest first (in claim order).
/// The ids are picked by a read in index order first: an UPDATE … ORDER BY … LIMIT that
/// changes `status`, a column of the index it walks, would read and sort the key's whole
/// parked backlog instead (the plan test shows it).
fn unpark_sql(key: &str, n: u64) -> String {
    format!(
        concat!(
            "UPDATE jobs JOIN (SELECT id FROM jobs FORCE INDEX (jobs_flow) \
             WHERE flow_key = {} AND status = ",
            st!(blocked),
            " ORDER BY priority, scheduled_at, id LIMIT {}) AS next USING (id) \
             SET jobs.status = ",
            st!(pending),
            " WHERE jobs.status = ",
            st!(blocked)
        ),
        sql_string(key),
        n
    )
}

impl Store {
    /// Whether a job of the types `names` (any when empty) waits on a flow key's limit in
    /// `blocked_in`, or is `pending` in `pending_in`: the jobs a worker that stops
    /// when empty must still run (a parked job may have just been unparked).
    pub(crate) async fn any_waiting(
        &self,
        blocked_in: &[&str],
        pending_in: &[&str],
        names: &[&str],
    ) -> Result<bool> {
        let list = |queues: &[&str]| {
            if queues.is_empty() {
                return "NULL".to_owned();
            }
            queues
                .iter()
                .map(|q| sql_string(q))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let only = if names.is_empty() {
            String::new()
        } else {
            format!(
                " AND CAST(name AS BINARY) IN ({})",
                bytes_list(names.iter().copied())
            )
        };
        let sql = format!(
            concat!(
                "SELECT 1 FROM jobs FORCE INDEX (jobs_claim) WHERE queue IN ({}) AND status = ",
                st!(blocked),
                "{only} UNION ALL SELECT 1 FROM jobs FORCE INDEX (jobs_claim) \
                 WHERE queue IN ({}) AND status = ",
                st!(pending),
                "{only} LIMIT 1"
            ),
            list(blocked_in),
            list(pending_in),
            only = only
        );
        let found: Option<u8> = self
            .nodes
            .run(async |conn| Ok(conn.query_first(sql.as_str()).await?))
            .await?;
        Ok(found.is_some())
    }

    /// The keys at a limit (with parked jobs, or paused), the longest waiting first: read
    /// through the recheck index and each key's own index ranges, never the backlog.
    pub(crate) async fn limited_flow_keys(&self, most: usize) -> Result<Vec<FlowKeyState>> {
        let rows: Vec<Row> = self
            .nodes
            .run(async |conn| {
                Ok(conn
                    .query(format!(
                        concat!(
                            "SELECT k.flow_key, k.concurrency, k.rate, k.window_ms, \
                             CAST(GREATEST(COALESCE(TIMESTAMPDIFF(MICROSECOND, \
                             UTC_TIMESTAMP(6), k.paused_until), 0), 0) AS SIGNED), \
                             (SELECT COUNT(*) FROM jobs FORCE INDEX (jobs_flow) \
                              WHERE flow_key = k.flow_key AND status = ",
                            st!(running),
                            "), (SELECT COUNT(*) FROM jobs FORCE INDEX (jobs_flow) \
                              WHERE flow_key = k.flow_key AND status = ",
                            st!(blocked),
                            ") FROM lightjobs_flow_keys k FORCE INDEX (flow_recheck) \
                             WHERE k.recheck_at IS NOT NULL ORDER BY k.recheck_at LIMIT {}"
                        ),
                        most
                    ))
                    .await?)
            })
            .await?;
        Ok(rows.into_iter().filter_map(decode_limited).collect())
    }

    /// After jobs of `keys` finished outside a claim (one entry per job): under each key's
    /// lock, one parked job per finished one back to `pending`. Whatever this misses (the
    /// write fails, the process dies first) the sweep catches at the key's recheck.
    pub(crate) async fn unpark_after(&self, keys: &[&str]) -> Result<()> {
        let mut per_key: BTreeMap<&str, u64> = BTreeMap::new();
        for key in keys {
            *per_key.entry(key).or_default() += 1;
        }
        if per_key.is_empty() {
            return Ok(());
        }
        let locks: Vec<(&str, Limits)> = per_key.keys().map(|k| (*k, Limits::default())).collect();
        let mut sql = format!("START TRANSACTION; {}; ", lock_sql(&locks));
        for (key, n) in &per_key {
            let _ = write!(sql, "{}; ", unpark_sql(key, *n));
        }
        sql.push_str("COMMIT");
        self.nodes
            .run(async |conn| {
                let result = read_sets::<Row>(conn.query_iter(sql.as_str()).await?).await;
                if result.is_err() {
                    let _ = conn.query_drop("ROLLBACK").await;
                }
                result.map(drop)
            })
            .await
    }

    /// A job of `key` reported its service's limit: no job of the key starts for `delay`.
    pub(crate) async fn pause_flow_key(&self, key: &str, delay: Duration) -> Result<()> {
        note_recheck(micros(delay).unsigned_abs());
        let until = format!("UTC_TIMESTAMP(6) + INTERVAL {} MICROSECOND", micros(delay));
        self.nodes
            .run(async |conn| {
                conn.query_drop(format!(
                    "INSERT INTO lightjobs_flow_keys (flow_key, used_at, paused_until, \
                     recheck_at) VALUES ({k}, UTC_TIMESTAMP(6), {until}, {until}) \
                     ON DUPLICATE KEY UPDATE used_at = VALUES(used_at), \
                     paused_until = GREATEST(COALESCE(paused_until, VALUES(paused_until)), \
                     VALUES(paused_until)), recheck_at = LEAST(COALESCE(recheck_at, \
                     VALUES(recheck_at)), VALUES(recheck_at))",
                    k = sql_string(key)
                ))
                .await?;
                Ok(())
            })
            .await
    }

    /// Looks again at keys whose recheck time has come: under each key's lock, as many of
    /// its parked jobs as it has room for go back to `pending`; the recheck moves to when
    /// it can next have room, or is cleared when nothing is parked. Returns the jobs
    /// unparked.
    pub(crate) async fn sweep_flow_keys(&self, batch: usize) -> Result<u64> {
        let keys: Vec<String> = self
            .nodes
            .run(async |conn| {
                Ok(conn
                    .query(format!(
                        "SELECT flow_key FROM lightjobs_flow_keys FORCE INDEX (flow_recheck) \
                         WHERE recheck_at <= UTC_TIMESTAMP(6) ORDER BY recheck_at LIMIT {batch}"
                    ))
                    .await?)
            })
            .await?;
        let mut total = 0;
        for key in keys {
            total += self
                .nodes
                .run(async |conn| sweep_key(conn, &key).await)
                .await?;
        }
        Ok(total)
    }
}

/// [`Store::sweep_flow_keys`] for one key, in one transaction. A key another claim holds
/// is left for the next sweep (`SKIP LOCKED`): that claim is looking at it already.
async fn sweep_key(conn: &mut Conn, key: &str) -> Result<u64> {
    let k = sql_string(key);
    let result = async {
        let sets: Vec<Vec<Row>> = read_sets(
            conn.query_iter(format!(
                "START TRANSACTION; SELECT flow_key FROM lightjobs_flow_keys \
                 WHERE flow_key = {k} FOR UPDATE SKIP LOCKED; {}",
                state_sql(&[key])
            ))
            .await?,
        )
        .await?;
        let locked = sets.get(1).is_some_and(|s| !s.is_empty());
        let state = decode_states(sets.get(2..).unwrap_or_default()).remove(key);
        let Some(state) = state.filter(|_| locked) else {
            conn.query_drop("COMMIT").await?;
            if !locked {
                // A claim holds the key: look again at the next pass, not the next
                // regular sweep, or a parked key waits seconds for nothing.
                note_recheck(0);
            }
            return Ok(0);
        };
        let plan = plan(&[], &BTreeMap::from([(key.to_owned(), state.clone())]));
        let n = plan.unpark.get(key).copied().unwrap_or(0);
        let mut sql = String::new();
        if n > 0 {
            let _ = write!(sql, "{}; ", unpark_sql(key, n));
        }
        let after = recheck_us(state.stored, &state, n);
        let at = format!("UTC_TIMESTAMP(6) + INTERVAL {after} MICROSECOND");
        // Cleared once nothing is parked; else set to when the key can next have room.
        let _ = write!(
            sql,
            concat!(
                "UPDATE lightjobs_flow_keys SET recheck_at = IF(EXISTS(SELECT 1 FROM jobs \
                 FORCE INDEX (jobs_flow) WHERE flow_key = {k} AND status = ",
                st!(blocked),
                "), {at}, NULL) WHERE flow_key = {k}; COMMIT"
            ),
            k = k,
            at = at
        );
        let _: Vec<Vec<Row>> = read_sets(conn.query_iter(sql).await?).await?;
        if n > 0 || state.has_blocked {
            note_recheck(after);
        }
        Ok(n)
    }
    .await;
    if result.is_err() {
        let _ = conn.query_drop("ROLLBACK").await;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(key: &str, conc: Option<u32>, rate: Option<(u32, u32)>) -> RowFlow {
        RowFlow {
            key: key.into(),
            concurrency: conc,
            rate,
        }
    }

    fn states(list: &[(&str, KeyState)]) -> BTreeMap<String, KeyState> {
        list.iter()
            .map(|(k, s)| (k.to_string(), s.clone()))
            .collect()
    }

    #[test]
    fn a_key_at_its_concurrency_parks_its_rows_and_holds_up_no_other() {
        let a = flow("a", Some(2), None);
        let b = flow("b", Some(5), None);
        let rows = [
            (1, Some(&a)),
            (2, None),
            (3, Some(&a)),
            (4, Some(&b)),
            (5, Some(&a)),
        ];
        let st = states(&[
            (
                "a",
                KeyState {
                    running: 1,
                    ..KeyState::default()
                },
            ),
            ("b", KeyState::default()),
        ]);
        let p = plan(&rows, &st);
        assert_eq!(p.admitted, vec![1, 2, 4]);
        assert_eq!(p.parked, vec![3, 5]);
        assert_eq!(
            p.parks.get("a").map(|x| x.1),
            Some(micros(CONCURRENCY_RECHECK) as u64)
        );
        assert!(p.sql().contains("'blocked' WHERE id IN (3,5)"));
    }

    #[test]
    fn a_rate_counts_starts_in_the_window_and_rechecks_when_the_oldest_leaves() {
        let a = flow("a", None, Some((3, 1000)));
        let rows = [(1, Some(&a)), (2, Some(&a)), (3, Some(&a))];
        let st = states(&[(
            "a",
            KeyState {
                starts: 2,
                next_free_us: 400_000,
                ..KeyState::default()
            },
        )]);
        let p = plan(&rows, &st);
        assert_eq!(p.admitted, vec![1]);
        assert_eq!(p.parked, vec![2, 3]);
        assert_eq!(p.parks["a"].1, 400_000);
        assert_eq!(p.starts["a"], (1000, vec![1]));
    }

    #[test]
    fn a_paused_key_starts_nothing_until_its_pause_ends() {
        let a = flow("a", Some(10), None);
        let p = plan(
            &[(1, Some(&a))],
            &states(&[(
                "a",
                KeyState {
                    paused_us: 3_000_000,
                    ..KeyState::default()
                },
            )]),
        );
        assert_eq!(p.parked, vec![1]);
        assert_eq!(p.parks["a"].1, 3_000_000);
    }

    #[test]
    fn room_left_on_a_key_with_parked_jobs_unparks_them() {
        let st = states(&[(
            "a",
            KeyState {
                stored: Limits {
                    concurrency: Some(3),
                    rate: None,
                },
                has_blocked: true,
                running: 1,
                ..KeyState::default()
            },
        )]);
        let p = plan(&[], &st);
        assert_eq!(p.unpark.get("a"), Some(&2));
        assert!(p.sql().contains("LIMIT 2"));
        // No room: nothing unparked.
        let mut full = st.clone();
        if let Some(s) = full.get_mut("a") {
            s.running = 3;
        }
        assert!(plan(&[], &full).unpark.is_empty());
    }
}
