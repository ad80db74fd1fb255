//! The statuses of a job row, in one place: [`Status`] for Rust code, [`st!`] for SQL
//! text (checked when the crate compiles: a misspelt status does not build).

use std::fmt;

/// A status lightjobs writes in `jobs.status`. Rows may hold others (written by another
/// program): those stay text where they are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
// Without the tools, Rust code names only the finished statuses (SQL text uses `st!`).
#[cfg_attr(not(any(feature = "cli", feature = "dashboard")), allow(dead_code))]
pub(crate) enum Status {
    /// Due later (a delay, a retry's backoff).
    Scheduled,
    /// Due: the claim takes it.
    Pending,
    /// Due, but its flow key is at a limit: waits out of the claim's way until the key
    /// has room (see [`Flow`](crate::Flow)).
    Blocked,
    /// Waits for a job or a batch to finish ([`Dispatch::after`](crate::Dispatch::after),
    /// batch callbacks): out of the claim's way until then.
    Awaiting,
    /// Claimed by a worker process.
    Running,
    /// Ran to success.
    Processed,
    /// Failed for good.
    Failed,
    /// Stopped before it started.
    Cancelled,
}

impl Status {
    /// Every status, in the order a job passes through them.
    #[cfg_attr(not(any(feature = "cli", feature = "dashboard")), allow(dead_code))]
    pub(crate) const ALL: [Status; 8] = [
        Status::Pending,
        Status::Blocked,
        Status::Scheduled,
        Status::Awaiting,
        Status::Running,
        Status::Processed,
        Status::Failed,
        Status::Cancelled,
    ];

    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Status::Scheduled => "scheduled",
            Status::Pending => "pending",
            Status::Blocked => "blocked",
            Status::Awaiting => "awaiting",
            Status::Running => "running",
            Status::Processed => "processed",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }

    /// Whether a job in this status is done: counted per minute by the rollup, listed by
    /// when it finished, removed by the pruner.
    pub(crate) const fn is_finished(self) -> bool {
        matches!(self, Status::Processed | Status::Failed | Status::Cancelled)
    }

    /// The status `s` names, if it is one of lightjobs'.
    pub(crate) fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

/// The names of [`Status::ALL`], for tools that take a status as text.
#[cfg(any(feature = "cli", feature = "dashboard"))]
pub(crate) const JOB_STATUSES: [&str; 8] = {
    let all = Status::ALL;
    [
        all[0].as_str(),
        all[1].as_str(),
        all[2].as_str(),
        all[3].as_str(),
        all[4].as_str(),
        all[5].as_str(),
        all[6].as_str(),
        all[7].as_str(),
    ]
};

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A status as an SQL literal for statements built with `concat!`: `st!(pending)` is
/// `'pending'`. The same words as [`Status::as_str`] (a test checks it).
macro_rules! st {
    (scheduled) => {
        "'scheduled'"
    };
    (pending) => {
        "'pending'"
    };
    (blocked) => {
        "'blocked'"
    };
    (awaiting) => {
        "'awaiting'"
    };
    (running) => {
        "'running'"
    };
    (processed) => {
        "'processed'"
    };
    (failed) => {
        "'failed'"
    };
    (cancelled) => {
        "'cancelled'"
    };
}
pub(crate) use st;

/// The statuses of a job that waits to run (not yet claimed, not finished), as an SQL
/// list for `status IN (…)`.
macro_rules! waiting_list {
    () => {
        concat!(
            st!(pending),
            ", ",
            st!(scheduled),
            ", ",
            st!(blocked),
            ", ",
            st!(awaiting)
        )
    };
}
pub(crate) use waiting_list;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sql_literals_are_the_statuses() {
        let literals = [
            (Status::Scheduled, st!(scheduled)),
            (Status::Pending, st!(pending)),
            (Status::Blocked, st!(blocked)),
            (Status::Awaiting, st!(awaiting)),
            (Status::Running, st!(running)),
            (Status::Processed, st!(processed)),
            (Status::Failed, st!(failed)),
            (Status::Cancelled, st!(cancelled)),
        ];
        assert_eq!(literals.len(), Status::ALL.len());
        for (status, literal) in literals {
            assert_eq!(literal, format!("'{status}'"));
            assert_eq!(Status::parse(status.as_str()), Some(status));
        }
        assert_eq!(Status::parse("PENDING"), None);
    }
}
