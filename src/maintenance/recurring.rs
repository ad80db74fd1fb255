//! Recurring jobs: each tick of a cron schedule is dispatched once, however many processes
//! run the schedule, because the dispatch is unique on (job, tick).

use std::cell::RefCell;
use std::hash::Hasher;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::role::Role;
use crate::fnv::Fnv64;
use crate::queue::JobQueue;
use crate::store::{NewJob, When};

/// How often the schedules are checked: ticks are whole seconds.
const CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// One recurring job: its schedule and the row each tick dispatches.
#[derive(Debug, Clone)]
pub(crate) struct RecurringJob {
    pub schedule: cron::Schedule,
    pub job: NewJob,
}

impl RecurringJob {
    /// Parses a cron expression with a seconds field (`sec min hour day month weekday`,
    /// e.g. `0 */5 * * * *` for every five minutes).
    pub(crate) fn new(expression: &str, job: NewJob) -> crate::Result<Self> {
        let schedule = cron::Schedule::from_str(expression).map_err(|e| {
            crate::Error::invalid(
                "cron expression",
                format!("`{expression}` for job `{}`: {e}", job.name),
            )
        })?;
        if schedule.upcoming(Utc).next().is_none() {
            return Err(crate::Error::invalid(
                "cron expression",
                format!("`{expression}` never fires"),
            ));
        }
        Ok(RecurringJob { schedule, job })
    }

    /// The unique key of one tick. It names the job and fingerprints the schedule, the
    /// queue and the payload, so that two registrations of one job type (other payloads,
    /// other schedules) whose ticks coincide are two jobs, while every process running the
    /// same registration computes the same key.
    pub(crate) fn key(&self, tick: DateTime<Utc>) -> String {
        format!(
            "cron:{}:{:016x}:{}",
            self.job.name,
            self.fingerprint(),
            tick.timestamp()
        )
    }

    /// What tells two registrations of one job type apart.
    pub(crate) fn fingerprint(&self) -> u64 {
        let mut hasher = Fnv64::default();
        for part in [
            self.schedule.source().as_bytes(),
            self.job.queue.as_bytes(),
            self.job.payload.as_bytes(),
            &self.job.priority.to_le_bytes(),
        ] {
            hasher.write(part);
            // A separator, so ("ab", "c") and ("a", "bc") differ.
            hasher.write(&[0xff]);
        }
        hasher.finish()
    }

    /// The latest tick at or before `now`, and the gap to the tick after it.
    fn latest_tick(&self, now: DateTime<Utc>) -> Option<(DateTime<Utc>, Duration)> {
        let just_after = now + chrono::Duration::milliseconds(1);
        let tick = self.schedule.after(&just_after).next_back()?;
        let next = self.schedule.after(&tick).next()?;
        let gap = (next - tick).to_std().ok()?;
        Some((tick, gap))
    }
}

pub(crate) struct Recurring {
    queue: JobQueue,
    jobs: Vec<RecurringJob>,
    /// The last tick dispatched (or found already dispatched) per job.
    last: RefCell<Vec<Option<DateTime<Utc>>>>,
}

impl Recurring {
    pub(crate) fn new(queue: JobQueue, jobs: Vec<RecurringJob>) -> Self {
        let last = RefCell::new(vec![None; jobs.len()]);
        Recurring { queue, jobs, last }
    }

    /// Dispatches the latest tick of each schedule if this process has not yet. A tick
    /// missed while nothing ran is caught up once; older missed ticks are skipped, never
    /// replayed in a flood. Returns how many dispatches were made (new or already there).
    pub(crate) async fn run_once(&self, now: DateTime<Utc>) -> crate::Result<u64> {
        let mut made = 0;
        for (i, recurring) in self.jobs.iter().enumerate() {
            let Some((tick, gap)) = recurring.latest_tick(now) else {
                continue;
            };
            if self.last.borrow()[i] == Some(tick) {
                continue;
            }
            let mut job = recurring.job.clone();
            // The key stays taken until the next tick, so a process that starts later in
            // the same period finds this tick done rather than running it again.
            job.unique = Some((recurring.key(tick), gap + Duration::from_secs(1)));
            job.when = When::After(Duration::ZERO);
            self.queue.insert(job).await?;
            self.last.borrow_mut()[i] = Some(tick);
            made += 1;
        }
        Ok(made)
    }
}

impl Role for Recurring {
    const NAME: &'static str = "recurring";

    async fn pass(&self) -> crate::Result<Duration> {
        if self.jobs.is_empty() {
            // Nothing to dispatch, ever: sleep until the stop.
            return Ok(Duration::from_secs(24 * 3600));
        }
        self.run_once(Utc::now()).await?;
        Ok(CHECK_INTERVAL)
    }

    fn after_error(&self) -> Duration {
        CHECK_INTERVAL
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn job() -> NewJob {
        NewJob {
            name: "report",
            payload: "{}".into(),
            queue: "default".into(),
            priority: 0,
            max_attempts: 3,
            when: When::After(Duration::ZERO),
            unique: None,
            flow: None,
            trace: None,
            tags: Vec::new(),
            meta: None,
            batch: None,
            after: None,
        }
    }

    #[test]
    fn latest_tick_and_gap() {
        let r = RecurringJob::new("0 */5 * * * *", job()).unwrap();
        let now = Utc.with_ymd_and_hms(2026, 11, 28, 10, 7, 30).unwrap();
        let (tick, gap) = r.latest_tick(now).unwrap();
        assert_eq!(tick, Utc.with_ymd_and_hms(2026, 11, 28, 10, 5, 0).unwrap());
        assert_eq!(gap, Duration::from_secs(300));
        let on_tick = Utc.with_ymd_and_hms(2026, 11, 28, 10, 10, 0).unwrap();
        assert_eq!(r.latest_tick(on_tick).unwrap().0, on_tick);
    }

    #[test]
    fn tick_keys_tell_registrations_apart() {
        let tick = Utc.with_ymd_and_hms(2026, 11, 28, 10, 5, 0).unwrap();
        let a = RecurringJob::new("0 */5 * * * *", job()).unwrap();
        let same = RecurringJob::new("0 */5 * * * *", job()).unwrap();
        assert_eq!(
            a.key(tick),
            same.key(tick),
            "every process computes one key"
        );
        let mut other_payload = job();
        other_payload.payload = r#"{"kind":"weekly"}"#.into();
        let b = RecurringJob::new("0 */5 * * * *", other_payload).unwrap();
        let c = RecurringJob::new("0 */10 * * * *", job()).unwrap();
        assert_ne!(a.key(tick), b.key(tick));
        assert_ne!(a.key(tick), c.key(tick));
        assert!(a.key(tick).starts_with("cron:report:"));
        assert!(a.key(tick).ends_with(&format!(":{}", tick.timestamp())));
        // Pinned: a key must not change between builds, or a rolling deploy would run a
        // tick once per version.
        assert_eq!(
            RecurringJob::new("0 0 * * * *", job())
                .unwrap()
                .fingerprint(),
            0x6bba_6d4c_9533_2ac4
        );
    }

    #[test]
    fn bad_expressions_are_errors() {
        let e = RecurringJob::new("every five minutes", job()).unwrap_err();
        assert!(
            e.to_string()
                .contains("`every five minutes` for job `report`"),
            "{e}"
        );
    }
}
