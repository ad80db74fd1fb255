//! Returns jobs held by dead worker processes to `pending`. Every worker process runs one;
//! the `rescuer` lease (a row in `lightjobs_leases`, which holds across the nodes of a
//! cluster) lets one at a time do the writing.
//!
//! A process is dead when its heartbeat has not *changed* for its own staleness, as this
//! rescuer saw it, by this rescuer's clock. No time written by another clock is compared
//! with any other: on a cluster each node stamps with its own clock, and after a move
//! to a node whose clock is 15 s ahead every heartbeat would look 15 s old. And nobody is
//! judged from what this rescuer could not see: what it saw before its own lease ran out
//! (see [`Fence`](crate::runtime::fence::Fence)) is forgotten, so after an outage live processes
//! get a whole staleness to beat again.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::role::Role;
use crate::runtime::fence::Fence;
#[cfg(test)]
use crate::store::WorkerSeen;
use crate::store::{Liveness, Store, WorkerInfo};

/// How long the rescuer lease lasts if its holder dies during a pass (it is given back at
/// the end of each pass).
const LEASE: Duration = Duration::from_secs(30);

/// Most jobs moved by one statement.
const BATCH: u64 = 1000;

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Rescued {
    pub pending: u64,
    pub failed: u64,
}

/// A process judged dead, with what the judgement saw: the rescue is guarded by it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Dead {
    /// `jobs.reserved_by` (`None`: running rows nobody holds).
    pub holder: Option<String>,
    /// Its heartbeat's value (`None`: it has no row).
    pub beat: Option<String>,
    /// Claims its shutdown gave back without being able to write them (`id:token,…`).
    pub given_back: String,
}

/// What the rescuer has seen of each process: since when its heartbeat has had the value
/// it has now, and since when a holder of running jobs has had no row at all. A pure
/// policy, tested without a database.
#[derive(Debug, Default)]
pub(crate) struct Observations {
    beats: HashMap<String, (String, Instant)>,
    absent: HashMap<Option<String>, Instant>,
}

impl Observations {
    /// Forgets everything: what was seen while this process could not see is worth nothing.
    pub(crate) fn clear(&mut self) {
        self.beats.clear();
        self.absent.clear();
    }

    /// Takes in one reading made at `now`; returns the processes dead by it: a heartbeat
    /// unchanged for the process's own staleness, a holder without a row for `stale`.
    pub(crate) fn judge(&mut self, seen: &Liveness, now: Instant, stale: Duration) -> Vec<Dead> {
        let mut dead = Vec::new();
        let mut rows = HashSet::new();
        for w in &seen.workers {
            rows.insert(w.id.as_str());
            let entry = self
                .beats
                .entry(w.id.clone())
                .or_insert_with(|| (w.beat.clone(), now));
            if entry.0 != w.beat {
                *entry = (w.beat.clone(), now);
            }
            // A process that stopped leaving claims behind is dead at once.
            if w.stopped || now.duration_since(entry.1) >= w.stale {
                dead.push(Dead {
                    holder: Some(w.id.clone()),
                    beat: Some(w.beat.clone()),
                    given_back: w.left_behind.clone(),
                });
            }
        }
        self.beats.retain(|id, _| rows.contains(id.as_str()));
        let absent: HashSet<Option<String>> = seen
            .holders
            .iter()
            .filter(|h| h.as_deref().is_none_or(|h| !rows.contains(h)))
            .cloned()
            .collect();
        self.absent.retain(|h, _| absent.contains(h));
        for holder in absent {
            let since = *self.absent.entry(holder.clone()).or_insert(now);
            if now.duration_since(since) >= stale {
                dead.push(Dead {
                    holder,
                    beat: None,
                    given_back: String::new(),
                });
            }
        }
        dead.retain(|d| seen.holders.contains(&d.holder));
        dead
    }
}

pub(crate) struct Rescuer {
    store: Store,
    /// This process's worker id: the holder of the lease.
    worker_id: String,
    /// This process's staleness: the one used for holders whose row does not say.
    stale_after: Duration,
    interval: Duration,
    /// This process's own lease: while it is not valid, this rescuer sees nothing.
    fence: Arc<Fence>,
    seen: RefCell<Observations>,
    /// The fence's trips when the observations started.
    trips: std::cell::Cell<u64>,
}

impl Rescuer {
    pub(crate) fn new(store: Store, info: &WorkerInfo, fence: Arc<Fence>) -> Rescuer {
        Rescuer {
            store,
            worker_id: info.id.clone(),
            stale_after: info.stale_after,
            interval: info.interval,
            fence,
            seen: RefCell::default(),
            trips: std::cell::Cell::new(0),
        }
    }

    /// One pass: reads who is alive, and rescues the jobs of the dead. `None` when
    /// another process holds the rescuer lease.
    pub(crate) async fn run_once(&self) -> crate::Result<Option<Rescued>> {
        if !self.fence.is_open() || self.fence.trips() != self.trips.get() {
            self.seen.borrow_mut().clear();
            self.trips.set(self.fence.trips());
            return Ok(Some(Rescued::default()));
        }
        let reading = match self.store.read_liveness(self.stale_after).await {
            Ok(reading) => reading,
            Err(error) => {
                // A gap in what it sees: start over.
                self.seen.borrow_mut().clear();
                return Err(error);
            }
        };
        let dead = self
            .seen
            .borrow_mut()
            .judge(&reading, Instant::now(), self.stale_after);
        if dead.is_empty() {
            return Ok(Some(Rescued::default()));
        }
        self.store
            .with_lease("rescuer", &self.worker_id, LEASE, || async {
                let mut total = Rescued::default();
                for d in &dead {
                    loop {
                        let (pending, failed) = self
                            .store
                            .rescue_holder(
                                d.holder.as_deref(),
                                d.beat.as_deref(),
                                &d.given_back,
                                BATCH,
                            )
                            .await?;
                        total.pending += pending;
                        total.failed += failed;
                        if pending + failed < BATCH {
                            break;
                        }
                    }
                }
                Ok(total)
            })
            .await
    }
}

impl Role for Rescuer {
    const NAME: &'static str = "rescuer";

    fn first_pause(&self) -> Duration {
        self.interval
    }

    async fn pass(&self) -> crate::Result<Duration> {
        if let Some(r) = self.run_once().await? {
            if r != Rescued::default() {
                tracing::warn!(target: "lightjobs::rescuer", to_pending = r.pending, to_failed = r.failed, "rescued jobs of dead workers");
            }
        }
        Ok(self.interval)
    }

    fn after_error(&self) -> Duration {
        self.interval
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(workers: &[(&str, &str, u64)], holders: &[Option<&str>]) -> Liveness {
        Liveness {
            workers: workers
                .iter()
                .map(|(id, beat, secs)| WorkerSeen {
                    id: (*id).to_owned(),
                    beat: (*beat).to_owned(),
                    stale: Duration::from_secs(*secs),
                    ..WorkerSeen::default()
                })
                .collect(),
            holders: holders.iter().map(|h| h.map(str::to_owned)).collect(),
        }
    }

    #[test]
    fn a_process_is_dead_when_its_beat_stood_still_for_its_own_staleness() {
        let mut seen = Observations::default();
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let holders = [Some("a"), Some("b"), Some("gone"), None];
        let first = reading(&[("a", "1", 10), ("b", "1", 2)], &holders);
        assert!(
            seen.judge(&first, t0, s(5)).is_empty(),
            "nothing judged at first sight"
        );
        // 'a' beats on; 'b' stands still past its own 2 s; 'gone' has no row for 5 s.
        let later = reading(&[("a", "2", 10), ("b", "1", 2)], &holders);
        let dead = seen.judge(&later, t0 + s(3), s(5));
        assert_eq!(
            dead,
            vec![Dead {
                holder: Some("b".into()),
                beat: Some("1".into()),
                given_back: String::new(),
            }]
        );
        let dead = seen.judge(&later, t0 + s(6), s(5));
        assert_eq!(
            dead.len(),
            3,
            "b, then gone and the unheld rows after 5 s: {dead:?}"
        );
        assert!(dead
            .iter()
            .any(|d| d.holder.as_deref() == Some("gone") && d.beat.is_none()));
        assert!(dead.iter().any(|d| d.holder.is_none()));
        // 'a' stood still from t0+3 (its value "2"): judged by its own 10 s, not 5.
        let dead = seen.judge(&later, t0 + s(12), s(5));
        assert!(!dead.iter().any(|d| d.holder.as_deref() == Some("a")));
        assert!(seen
            .judge(&later, t0 + s(13), s(5))
            .iter()
            .any(|d| d.holder.as_deref() == Some("a")));
    }

    #[test]
    fn what_was_seen_before_a_gap_counts_for_nothing() {
        let mut seen = Observations::default();
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let r = reading(&[("b", "1", 2)], &[Some("b")]);
        seen.judge(&r, t0, s(5));
        seen.clear();
        assert!(seen.judge(&r, t0 + s(60), s(5)).is_empty());
        assert_eq!(seen.judge(&r, t0 + s(62), s(5)).len(), 1);
    }

    #[test]
    fn a_process_that_stopped_leaving_claims_behind_is_dead_at_once() {
        let mut seen = Observations::default();
        let mut r = reading(&[("left", "1", 60)], &[Some("left")]);
        r.workers[0].stopped = true;
        r.workers[0].left_behind = "7:42".into();
        let dead = seen.judge(&r, Instant::now(), Duration::from_secs(60));
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].given_back, "7:42");
    }

    #[test]
    fn a_process_holding_nothing_is_not_rescued() {
        let mut seen = Observations::default();
        let t0 = Instant::now();
        let r = reading(&[("idle", "1", 1)], &[]);
        seen.judge(&r, t0, Duration::from_secs(1));
        assert!(seen
            .judge(&r, t0 + Duration::from_secs(9), Duration::from_secs(1))
            .is_empty());
    }
}
