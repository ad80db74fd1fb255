//! One audit for every fault test: each run is recorded by the job itself (start, and end
//! when it finished), in memory for in-process workers or in an append-only file for
//! worker processes (so a database outage cannot lose the record). Afterwards the runs
//! and the rows are checked together: no job ran twice or overlapped itself (unless the
//! process running it died or stalled), every job is finished, none is left `running`,
//! and every `failed` job was meant to be able to fail.

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lightjobs::{Job, JobContext, JobError};
use mysql_async::prelude::*;
use serde::{Deserialize, Serialize};

/// One run of a job.
#[derive(Debug, Clone)]
pub struct Run {
    pub job: u64,
    pub attempt: u32,
    /// The process (pid) or worker that ran it.
    pub worker: String,
    /// Microseconds since the epoch.
    pub started: u128,
    /// When it finished successfully; `None` if it was cut short (killed, cancelled).
    pub ended: Option<u128>,
    /// When it was cut short (its future dropped: cancelled, released); `None` if it
    /// finished or its process was killed.
    pub cut: Option<u128>,
}

impl Run {
    /// The end of the interval it ran in, as far as known.
    fn until(&self) -> u128 {
        self.ended.or(self.cut).unwrap_or(self.started)
    }
}

pub fn now_us() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros()
}

/// Runs recorded in memory by in-process jobs (given to workers with `Workers::data`).
#[derive(Clone, Default)]
pub struct Audit(Arc<Mutex<Vec<Run>>>);

impl Audit {
    pub fn start(&self, ctx: &JobContext, worker: &str) -> usize {
        let mut runs = self.0.lock().unwrap();
        runs.push(Run {
            job: ctx.id(),
            attempt: ctx.attempt(),
            worker: worker.to_owned(),
            started: now_us(),
            ended: None,
            cut: None,
        });
        runs.len() - 1
    }

    pub fn end(&self, run: usize) {
        self.0.lock().unwrap()[run].ended = Some(now_us());
    }

    fn cut(&self, run: usize) {
        let mut runs = self.0.lock().unwrap();
        if runs[run].ended.is_none() {
            runs[run].cut = Some(now_us());
        }
    }

    pub fn runs(&self) -> Vec<Run> {
        self.0.lock().unwrap().clone()
    }
}

/// Appends one line per event to `path` (O_APPEND, one write per line, so several
/// processes can share the file).
pub fn log_line(path: &str, line: &str) {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("audit file opens");
    file.write_all(format!("{line}\n").as_bytes())
        .expect("audit line written");
}

/// The runs recorded in an audit file: `start RUN JOB ATTEMPT WORKER US`, `end RUN US`
/// and `cut RUN US` lines.
pub fn runs_from_file(path: &str) -> Vec<Run> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut runs: Vec<Run> = Vec::new();
    let mut by_run: HashMap<String, usize> = HashMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["start", run, job, attempt, worker, at] => {
                by_run.insert((*run).to_owned(), runs.len());
                runs.push(Run {
                    job: job.parse().unwrap(),
                    attempt: attempt.parse().unwrap(),
                    worker: (*worker).to_owned(),
                    started: at.parse().unwrap(),
                    ended: None,
                    cut: None,
                });
            }
            ["end", run, at] => {
                let i = by_run[*run];
                runs[i].ended = Some(at.parse().unwrap());
            }
            // A run that stopped itself on a cancel is cut short like a dropped one.
            ["cut" | "cancelled", run, at] => {
                let i = by_run[*run];
                runs[i].cut = Some(at.parse().unwrap());
            }
            _ => panic!("bad audit line {line:?}"),
        }
    }
    runs
}

/// Sleeps `millis`, recording its run in the [`Audit`] it is given.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Audited {
    pub millis: u64,
}

impl Job for Audited {
    const NAME: &'static str = "audited";
    const MAX_ATTEMPTS: u32 = 3;

    fn backoff(_attempt: u32) -> Duration {
        Duration::from_millis(20)
    }

    async fn execute(self, ctx: &JobContext) -> Result<(), JobError> {
        let audit = ctx
            .data::<Audit>()
            .ok_or_else(|| JobError::fail("no audit"))?;
        let run = audit.start(ctx, "local");
        // Records when the run is cut short (its future dropped) rather than finished.
        struct Cut<'a>(&'a Audit, usize);
        impl Drop for Cut<'_> {
            fn drop(&mut self) {
                self.0.cut(self.1);
            }
        }
        let _cut = Cut(audit, run);
        if self.millis > 0 {
            tokio::time::sleep(Duration::from_millis(self.millis)).await;
        }
        audit.end(run);
        Ok(())
    }
}

/// What the audit found; the note of the issue reports these per fault.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub jobs: u64,
    pub runs: u64,
    /// Runs that ran to their end (the others were cut short).
    pub finished: u64,
    /// Jobs with more than one finished run, none of them in a disturbed process.
    pub twice: u64,
    /// Pairs of runs of one job that overlapped in time (a run cut short counts until it
    /// was cut), neither in a disturbed process.
    pub overlaps: u64,
    /// Jobs not `processed`, `failed` or `cancelled`.
    pub unfinished: u64,
    /// `failed` jobs that were not allowed to fail.
    pub wrongly_failed: u64,
}

impl Verdict {
    pub fn print(&self, fault: &str) {
        eprintln!(
            "audit [{fault}]: {} jobs, {} runs ({} to the end), {} ran twice, {} overlaps, \
             {} unfinished, {} wrongly failed",
            self.jobs,
            self.runs,
            self.finished,
            self.twice,
            self.overlaps,
            self.unfinished,
            self.wrongly_failed
        );
    }

    pub fn assert_clean(&self, fault: &str) {
        self.print(fault);
        assert_eq!(
            (
                self.twice,
                self.overlaps,
                self.unfinished,
                self.wrongly_failed
            ),
            (0, 0, 0, 0),
            "[{fault}] {self:?}"
        );
    }
}

/// Checks `runs` against the rows of `db`. Runs in a `disturbed` worker (a process that was
/// killed or stopped during the test) are excused from "twice" and "overlap"; `may_fail`
/// says which jobs are allowed to end `failed`.
pub async fn audit(
    db_url: &str,
    runs: &[Run],
    disturbed: &[String],
    may_fail: impl Fn(u64) -> bool,
) -> Verdict {
    let pool = mysql_async::Pool::new(db_url);
    let mut conn = pool.get_conn().await.unwrap();
    let rows: Vec<(u64, String)> = conn.query("SELECT id, status FROM jobs").await.unwrap();
    drop(conn);
    let _ = pool.disconnect().await;
    let mut verdict = Verdict {
        jobs: rows.len() as u64,
        runs: runs.len() as u64,
        finished: runs.iter().filter(|r| r.ended.is_some()).count() as u64,
        ..Verdict::default()
    };
    let mut by_job: HashMap<u64, Vec<&Run>> = HashMap::new();
    for run in runs {
        by_job.entry(run.job).or_default().push(run);
    }
    for (id, status) in &rows {
        match status.as_str() {
            "processed" | "cancelled" => {}
            "failed" if may_fail(*id) => {}
            "failed" => verdict.wrongly_failed += 1,
            _ => verdict.unfinished += 1,
        }
        let runs = by_job.remove(id).unwrap_or_default();
        let counted: Vec<&&Run> = runs
            .iter()
            .filter(|r| !disturbed.contains(&r.worker))
            .collect();
        if counted.iter().filter(|r| r.ended.is_some()).count() > 1 {
            verdict.twice += 1;
        }
        for (i, a) in counted.iter().enumerate() {
            for b in &counted[i + 1..] {
                if a.started < b.until() && b.started < a.until() {
                    verdict.overlaps += 1;
                }
            }
        }
    }
    assert!(by_job.is_empty(), "runs of jobs that are not in the table");
    verdict
}
