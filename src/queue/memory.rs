//! The record of a queue without a database (a
//! [`TestQueue`](crate::testing::TestQueue)'s): every dispatch, in order, and whether it
//! has run.

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use crate::store::{NewJob, When};

/// Dispatches recorded in memory, in the order they were made. Ids count from 1 like a
/// fresh `jobs` table's, so a handler that returns the id returns something plausible.
#[derive(Debug, Default)]
pub(crate) struct Log {
    rows: Mutex<Vec<Row>>,
}

/// One recorded dispatch.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub id: u64,
    pub job: NewJob,
    pub at: SystemTime,
    pub state: State,
    /// What its run recorded, as JSON.
    pub output: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// Dispatched, not run yet.
    Waiting,
    /// Taken by an inline run.
    Running,
    /// Run, whatever the outcome.
    Done { at: SystemTime },
}

impl Row {
    /// How long after its dispatch the job is due (zero: at once).
    pub(crate) fn delay(&self) -> Duration {
        match self.job.when {
            When::After(d) => d,
            When::At(t) => t.duration_since(self.at).unwrap_or_default(),
        }
    }

    /// Whether the row holds `key` as a unique dispatch would find it in the table: while
    /// it waits or runs, and for its period after the dispatch.
    fn holds(&self, key: &str, now: SystemTime) -> bool {
        let Some((own, period)) = &self.job.unique else {
            return false;
        };
        own == key
            && match self.state {
                State::Waiting | State::Running => true,
                State::Done { .. } => self.at + *period > now,
            }
    }
}

impl Log {
    fn rows(&self) -> std::sync::MutexGuard<'_, Vec<Row>> {
        // A test that panicked while holding the lock left whole rows behind: still usable.
        self.rows.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a dispatch; returns its id, or the id of the job already holding its unique
    /// key (what the table's unique index does).
    /// [`record`](Self::record) for a dispatch: batches and dependencies need the table.
    pub(crate) fn record_unlinked(&self, job: NewJob) -> crate::Result<u64> {
        if job.is_linked() {
            return Err(crate::Error::NoDatabase);
        }
        Ok(self.record(job))
    }

    pub(crate) fn record(&self, job: NewJob) -> u64 {
        let now = SystemTime::now();
        let mut rows = self.rows();
        if let Some((key, _)) = &job.unique {
            if let Some(holder) = rows.iter().find(|r| r.holds(key, now)) {
                return holder.id;
            }
        }
        let id = rows.len() as u64 + 1;
        rows.push(Row {
            id,
            job,
            at: now,
            state: State::Waiting,
            output: None,
        });
        id
    }

    /// Every row, in dispatch order.
    pub(crate) fn snapshot(&self) -> Vec<Row> {
        self.rows().clone()
    }

    /// The first waiting row that is due (any waiting row, with `delayed`), now marked
    /// running.
    pub(crate) fn take_next(&self, delayed: bool) -> Option<Row> {
        let now = SystemTime::now();
        let mut rows = self.rows();
        let row = rows
            .iter_mut()
            .find(|r| r.state == State::Waiting && (delayed || r.at + r.delay() <= now))?;
        row.state = State::Running;
        Some(row.clone())
    }

    pub(crate) fn set_output(&self, id: u64, json: String) {
        if let Some(row) = self.rows().iter_mut().find(|r| r.id == id) {
            row.output = Some(json);
        }
    }

    /// Gives a taken row back, not run.
    pub(crate) fn release(&self, id: u64) {
        if let Some(row) = self.rows().iter_mut().find(|r| r.id == id) {
            row.state = State::Waiting;
        }
    }

    pub(crate) fn finish(&self, id: u64) {
        if let Some(row) = self.rows().iter_mut().find(|r| r.id == id) {
            row.state = State::Done {
                at: SystemTime::now(),
            };
        }
    }

    /// Forgets every dispatch.
    pub(crate) fn clear(&self) {
        self.rows().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(unique: Option<(&str, Duration)>) -> NewJob {
        NewJob {
            name: "mail",
            payload: "{}".into(),
            queue: "default".into(),
            priority: 0,
            max_attempts: 1,
            when: When::After(Duration::ZERO),
            unique: unique.map(|(k, p)| (k.to_owned(), p)),
            flow: None,
            trace: None,
            tags: Vec::new(),
            meta: None,
            batch: None,
            after: None,
        }
    }

    #[test]
    fn a_unique_key_is_held_while_waiting_and_for_its_period() {
        let log = Log::default();
        let a = log.record(job(Some(("k", Duration::ZERO))));
        assert_eq!(log.record(job(Some(("k", Duration::ZERO)))), a);
        assert_ne!(log.record(job(None)), a);
        let taken = log.take_next(true).map(|r| r.id);
        assert_eq!(taken, Some(a));
        assert_eq!(log.record(job(Some(("k", Duration::ZERO)))), a, "running");
        log.finish(a);
        let b = log.record(job(Some(("k", Duration::from_secs(60)))));
        assert_ne!(b, a, "finished, no period: free again");
        log.take_next(true);
        log.take_next(true);
        log.finish(b);
        assert_eq!(
            log.record(job(Some(("k", Duration::ZERO)))),
            b,
            "in b's period"
        );
    }
}
