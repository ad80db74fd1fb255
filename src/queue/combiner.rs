//! Combines the dispatches that arrive together into one multi-row INSERT.
//!
//! A web app dispatches from many handlers at once, and a dispatch on its own pays a whole
//! commit. The combiner runs on the queue's connection thread: it inserts what has arrived
//! (up to [`MAX_ROWS`] rows and [`MAX_BYTES`] of payload) in one statement, which is its own
//! transaction. It never waits for more to come: a lone dispatch goes at once.
//!
//! While a statement is in flight, what arrives waits for it, so that batches grow with the
//! load rather than the statements multiplying: on two cores shared with the app, batches
//! of ten rows cost the server 50 µs a row and batches of five 57. Another statement
//! starts beside it only when a whole batch is waiting (the server's other cores can take
//! it), or when the newest statement has been in flight for [`STALL`] (a slow commit or a
//! stalled connection must not hold every dispatch), [`MAX_IN_FLIGHT`] at most.
//!
//! Each caller gets its own id, or its own error: when the server refuses a combined
//! statement nothing of it was written, and its rows are inserted one by one, so a bad row
//! fails alone. A dispatch handed to a local worker joins the batch as a row inserted
//! already claimed (`running` under that worker, with the claim's token) and goes to the
//! worker once the statement commits. Unique dispatches and `within(tx)` keep their own
//! paths.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::ticket::Ticket;
use crate::error::{Error, Result};
use crate::runtime::handoff::Reservation;
use crate::store::{Claim, NewIds, NewJob, Store};

/// Rows in one statement at most.
pub(crate) const MAX_ROWS: usize = 100;
/// Payload bytes in one statement at most (well below the server's default 16 MiB
/// `max_allowed_packet`, which a batch of rows each under the limit could otherwise pass).
pub(crate) const MAX_BYTES: usize = 1 << 20;
/// Combined statements in flight at once, at most.
pub(crate) const MAX_IN_FLIGHT: usize = 4;
/// How long the newest statement may be in flight before a partial batch starts beside it:
/// well above a commit on a healthy server (about a millisecond), well below what a caller
/// would notice.
pub(crate) const STALL: Duration = Duration::from_millis(5);

/// One dispatch waiting for its row.
pub(crate) struct Pending {
    pub(crate) job: NewJob,
    /// How the INSERT learns its ids on this server.
    pub(crate) ids: NewIds,
    /// A local worker's free slot: the row is inserted already claimed and handed over.
    pub(crate) handoff: Option<Reservation>,
    pub(crate) reply: oneshot::Sender<Result<u64>>,
    /// Sent, or given up by its caller: whichever comes first.
    pub(crate) ticket: Arc<Ticket>,
    /// Its place among the dispatches allowed to wait (see
    /// [`MAX_WAITING_DISPATCHES`](crate::defaults::MAX_WAITING_DISPATCHES)).
    pub(crate) _place: OwnedSemaphorePermit,
}

impl Pending {
    /// Still wanted: its caller waits and has not given up.
    fn wanted(&self) -> bool {
        !self.reply.is_closed() && !self.ticket.abandoned()
    }
}

/// How often a long waiting list is swept of dispatches whose callers gave up.
const SWEEP_EVERY: Duration = Duration::from_millis(100);

/// Whether a batch may start now, given how many statements are in flight, how long ago
/// the newest of them started, and whether a whole batch is waiting.
fn may_start(in_flight: usize, newest_age: Option<Duration>, batch_full: bool) -> bool {
    in_flight == 0
        || (in_flight < MAX_IN_FLIGHT && (batch_full || newest_age.is_some_and(|age| age >= STALL)))
}

/// The statements in flight, with when each started.
#[derive(Default)]
struct Flights {
    tasks: JoinSet<()>,
    started: Vec<(tokio::task::Id, Instant)>,
}

impl Flights {
    fn len(&self) -> usize {
        self.started.len()
    }

    fn newest(&self) -> Option<Instant> {
        self.started.iter().map(|(_, at)| *at).max()
    }

    fn spawn(&mut self, store: Store, batch: Vec<Pending>) {
        let task = self.tasks.spawn(async move { insert(&store, batch).await });
        self.started.push((task.id(), Instant::now()));
    }

    /// Waits for one statement to end; pending forever while none is in flight.
    async fn ended(&mut self) {
        let id = match self.tasks.join_next_with_id().await {
            Some(Ok((id, ()))) => id,
            // Were `insert` to panic, its callers would see the queue closed.
            Some(Err(error)) => error.id(),
            None => return std::future::pending().await,
        };
        self.started.retain(|(i, _)| *i != id);
    }
}

/// Takes dispatches from `rx` until every sender is gone and the batches in flight end.
pub(crate) async fn run(store: Store, mut rx: mpsc::UnboundedReceiver<Pending>) {
    let mut flights = Flights::default();
    let mut waiting: VecDeque<Pending> = VecDeque::new();
    let mut open = true;
    let mut swept = Instant::now();
    loop {
        while let Ok(p) = rx.try_recv() {
            waiting.push_back(p);
        }
        // While the database is away the list grows: the callers whose deadline passed
        // give their places back now, not when their turn would have come.
        if waiting.len() > MAX_ROWS && swept.elapsed() >= SWEEP_EVERY {
            waiting.retain(Pending::wanted);
            swept = Instant::now();
        }
        if waiting.is_empty() && !open {
            break;
        }
        let newest = flights.newest();
        let newest_age = newest.map(|at| at.elapsed());
        if !waiting.is_empty() && may_start(flights.len(), newest_age, batch_full(&waiting)) {
            let batch = gather(&mut waiting);
            if !batch.is_empty() {
                flights.spawn(store.clone(), batch);
            }
            continue;
        }
        // A partial batch waits for a statement to end, for more dispatches (they may fill
        // it), or for the newest statement to have stalled.
        let stall_at = match (waiting.is_empty(), newest) {
            (false, Some(at)) if flights.len() < MAX_IN_FLIGHT => Some(at + STALL),
            _ => None,
        };
        tokio::select! {
            () = flights.ended() => {}
            p = rx.recv(), if open => match p {
                Some(p) => waiting.push_back(p),
                None => open = false,
            },
            () = tokio::time::sleep_until(stall_at.unwrap_or_else(Instant::now)), if stall_at.is_some() => {}
        }
    }
    while flights.tasks.join_next().await.is_some() {}
}

/// Whether `waiting` holds at least a whole batch.
fn batch_full(waiting: &VecDeque<Pending>) -> bool {
    waiting.len() >= MAX_ROWS
        || waiting.iter().map(|p| p.job.payload.len()).sum::<usize>() >= MAX_BYTES
}

/// The first of `waiting` and those after it, up to [`MAX_ROWS`] rows and [`MAX_BYTES`] of
/// payload, all of one protocol; the rest stay waiting, in order.
/// Dispatches whose callers gave up are dropped, never sent.
fn gather(waiting: &mut VecDeque<Pending>) -> Vec<Pending> {
    let mut batch: Vec<Pending> = Vec::new();
    let mut bytes = 0;
    while batch.len() < MAX_ROWS {
        let Some(p) = waiting.front() else {
            break;
        };
        let fits = batch
            .first()
            .is_none_or(|first| bytes + p.job.payload.len() <= MAX_BYTES && p.ids == first.ids);
        if !fits {
            break;
        }
        let Some(p) = waiting.pop_front() else {
            break;
        };
        if !p.wanted() {
            continue;
        }
        bytes += p.job.payload.len();
        batch.push(p);
    }
    batch
}

async fn insert(store: &Store, mut batch: Vec<Pending>) {
    let ids = batch[0].ids;
    let inserted = store
        .nodes()
        .run(async |conn| {
            // Only now, with a connection in hand, is a row sent: a caller whose deadline
            // passed while the connection was being had is left out, and told so.
            batch.retain(|p| !p.reply.is_closed() && p.ticket.send());
            let jobs: Vec<&NewJob> = batch.iter().map(|p| &p.job).collect();
            let claims: Vec<Option<Claim<'_>>> = batch
                .iter()
                .map(|p| p.handoff.as_ref().map(Reservation::claim))
                .collect();
            if jobs.is_empty() {
                return Ok(Vec::new());
            }
            Store::insert_rows(conn, &jobs, &claims, ids).await
        })
        .await;
    match inserted {
        Ok(ids) if ids.len() == batch.len() => {
            tracing::trace!(target: "lightjobs::queue", rows = ids.len(), "dispatches combined");
            for (p, id) in batch.into_iter().zip(ids) {
                let id = match p.handoff {
                    Some(reservation) => reservation.deliver(store, id, p.job),
                    None => id,
                };
                let _ = p.reply.send(Ok(id));
            }
        }
        Ok(ids) => {
            let message = format!(
                "INSERT INTO jobs returned {} ids for {} rows",
                ids.len(),
                batch.len()
            );
            for p in batch {
                // The rows were written, but which id is whose is unknown.
                if let Some(reservation) = p.handoff {
                    reservation.in_doubt();
                }
                let _ = p.reply.send(Err(Error::UnexpectedReply(message.clone())));
            }
        }
        Err(error) if batch.len() > 1 && error.is_server_refusal() => {
            // The statement was refused whole, so nothing of it was written: each row on
            // its own, and only the bad one fails.
            tracing::debug!(target: "lightjobs::queue", %error, rows = batch.len(), "combined dispatch refused; inserting its rows one by one");
            for p in batch {
                let one = match p.handoff {
                    Some(reservation) => reservation.insert(store.clone(), p.job).await,
                    None => {
                        store
                            .nodes()
                            .run(async |conn| Store::insert_job(conn, &p.job).await)
                            .await
                    }
                };
                let _ = p.reply.send(one);
            }
        }
        Err(error) => {
            // The connection failed: the statement may or may not have committed, for all
            // of the rows alike, and each caller is told so; a row handed to a worker is
            // released by its token if it exists. A refusal wrote nothing.
            for p in batch {
                if let (Some(reservation), true) = (p.handoff, error.in_doubt()) {
                    reservation.in_doubt();
                }
                let _ = p.reply.send(Err(error.duplicate()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::When;

    fn pending(bytes: usize, mariadb: bool) -> Pending {
        let ids = if mariadb {
            NewIds::Returning
        } else {
            NewIds::Consecutive { step: 1 }
        };
        Pending {
            job: NewJob {
                name: "t",
                payload: "x".repeat(bytes),
                queue: "default".into(),
                priority: 0,
                max_attempts: 1,
                when: When::After(Duration::ZERO),
                unique: None,
                flow: None,
                trace: None,
                tags: Vec::new(),
                meta: None,
                batch: None,
                after: None,
            },
            ids,
            handoff: None,
            reply: {
                // A caller that waits: its receiver outlives the test.
                let (reply, waits) = oneshot::channel();
                std::mem::forget(waits);
                reply
            },
            ticket: Arc::default(),
            _place: Arc::new(tokio::sync::Semaphore::new(1))
                .try_acquire_owned()
                .expect("a free place"),
        }
    }

    #[test]
    fn a_batch_takes_what_has_arrived_up_to_its_limits() {
        let mut waiting: VecDeque<Pending> = (0..4).map(|_| pending(10, true)).collect();
        assert_eq!(gather(&mut waiting).len(), 4);
        assert!(waiting.is_empty());

        let mut many: VecDeque<Pending> = (0..250).map(|_| pending(10, true)).collect();
        assert!(batch_full(&many));
        assert_eq!(gather(&mut many).len(), MAX_ROWS);
        assert_eq!(many.len(), 250 - MAX_ROWS);

        let mut big: VecDeque<Pending> = [pending(10, true), pending(MAX_BYTES, true)].into();
        assert!(batch_full(&big));
        assert_eq!(gather(&mut big).len(), 1);
        assert_eq!(big.front().map(|p| p.job.payload.len()), Some(MAX_BYTES));

        let mut other: VecDeque<Pending> = [pending(10, true), pending(10, false)].into();
        assert!(!batch_full(&other));
        assert_eq!(gather(&mut other).len(), 1);
        assert!(other.front().is_some_and(|p| p.ids != NewIds::Returning));
    }

    #[test]
    fn dispatches_whose_callers_gave_up_are_never_sent() {
        let gone = Pending {
            reply: oneshot::channel().0,
            ..pending(10, true)
        };
        let abandoned = pending(10, true);
        assert!(
            abandoned.ticket.abandon(),
            "still waiting: the caller may give up"
        );
        let kept = pending(10, true);
        let ticket = kept.ticket.clone();
        let mut waiting: VecDeque<Pending> = [gone, abandoned, kept].into();
        let batch = gather(&mut waiting);
        assert_eq!(batch.len(), 1);
        assert!(Arc::ptr_eq(&batch[0].ticket, &ticket));
        assert!(
            batch[0].ticket.send(),
            "taken into a statement, not yet sent"
        );
        assert!(
            !ticket.abandon(),
            "sent: its caller must be told it may be inserted"
        );
    }

    #[test]
    fn a_partial_batch_waits_for_the_statement_in_flight_unless_it_stalls() {
        let fresh = Some(Duration::from_micros(300));
        let stalled = Some(STALL);
        assert!(may_start(0, None, false), "nothing in flight: at once");
        assert!(
            !may_start(1, fresh, false),
            "a partial batch grows meanwhile"
        );
        assert!(may_start(1, fresh, true), "a whole batch goes beside it");
        assert!(
            may_start(1, stalled, false),
            "a stalled statement holds nobody up"
        );
        assert!(may_start(MAX_IN_FLIGHT - 1, stalled, false));
        assert!(
            !may_start(MAX_IN_FLIGHT, stalled, true),
            "never more than the limit"
        );
    }
}
