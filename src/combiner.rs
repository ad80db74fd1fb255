//! Combines the dispatches that arrive together into one multi-row INSERT.
//!
//! A web app dispatches from many handlers at once, and a dispatch on its own pays a whole
//! commit. The combiner runs on the queue's connection thread: it takes the first dispatch
//! waiting, everything else that has arrived by then (up to [`MAX_ROWS`] rows and
//! [`MAX_BYTES`] of payload), and inserts them in one statement, which is its own
//! transaction. It never waits for more to come: a lone dispatch goes at once, and batches
//! grow only while earlier ones are in flight ([`IN_FLIGHT`] at most). Each caller gets
//! its own id, or its own error: when the server refuses a combined statement nothing of
//! it was written, and its rows are inserted one by one, so a bad row fails alone.
//!
//! Unique dispatches, `within(tx)` and the in-process handoff keep their own paths.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::error::{Error, Result};
use crate::store::{NewJob, Store};

/// Rows in one statement at most.
pub(crate) const MAX_ROWS: usize = 100;
/// Payload bytes in one statement at most (well below the server's default 16 MiB
/// `max_allowed_packet`, which a batch of rows each under the limit could otherwise pass).
pub(crate) const MAX_BYTES: usize = 1 << 20;
/// Combined statements in flight at once.
pub(crate) const IN_FLIGHT: usize = 4;

/// One dispatch waiting for its row.
pub(crate) struct Pending {
    pub(crate) job: NewJob,
    /// The server speaks MariaDB (`INSERT … RETURNING`).
    pub(crate) mariadb: bool,
    pub(crate) reply: oneshot::Sender<Result<u64>>,
}

/// Takes dispatches from `rx` until every sender is gone and the batches in flight end.
pub(crate) async fn run(store: Store, mut rx: mpsc::UnboundedReceiver<Pending>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut carried: Option<Pending> = None;
    loop {
        let first = match carried.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => break,
            },
        };
        // While every slot is busy, more dispatches arrive: they join this batch.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let (batch, rest) = gather(first, || rx.try_recv().ok());
        carried = rest;
        let store = store.clone();
        tokio::spawn(async move {
            insert(&store, batch).await;
            drop(slot);
        });
    }
    // Every batch still in flight holds a slot; wait for them all.
    let _ = slots.acquire_many(IN_FLIGHT as u32).await;
}

/// `first` and what `next` yields, up to [`MAX_ROWS`] rows and [`MAX_BYTES`] of payload;
/// the dispatch that did not fit, if any, starts the next batch.
fn gather(
    first: Pending,
    mut next: impl FnMut() -> Option<Pending>,
) -> (Vec<Pending>, Option<Pending>) {
    let mut bytes = first.job.payload.len();
    let mut batch = vec![first];
    while batch.len() < MAX_ROWS {
        let Some(p) = next() else {
            break;
        };
        bytes += p.job.payload.len();
        if bytes > MAX_BYTES || p.mariadb != batch[0].mariadb {
            return (batch, Some(p));
        }
        batch.push(p);
    }
    (batch, None)
}

async fn insert(store: &Store, batch: Vec<Pending>) {
    let mariadb = batch[0].mariadb;
    let jobs: Vec<&NewJob> = batch.iter().map(|p| &p.job).collect();
    let inserted = async {
        let mut conn = store.nodes().get_conn().await?;
        Store::insert_rows(&mut conn, &jobs, mariadb).await
    }
    .await;
    match inserted {
        Ok(ids) if ids.len() == batch.len() => {
            tracing::trace!(target: "lightjobs::queue", rows = ids.len(), "dispatches combined");
            for (p, id) in batch.into_iter().zip(ids) {
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
                let _ = p.reply.send(Err(Error::Schema(message.clone())));
            }
        }
        Err(error) if batch.len() > 1 && error.is_server_refusal() => {
            // The statement was refused whole, so nothing of it was written: each row on
            // its own, and only the bad one fails.
            tracing::debug!(target: "lightjobs::queue", %error, rows = batch.len(), "combined dispatch refused; inserting its rows one by one");
            for p in batch {
                let one = async {
                    let mut conn = store.nodes().get_conn().await?;
                    Store::insert_job(&mut conn, &p.job).await
                }
                .await;
                let _ = p.reply.send(one);
            }
        }
        Err(error) => {
            // The connection failed: the statement may or may not have committed, for all
            // of the rows alike, and each caller is told so.
            for p in batch {
                let _ = p.reply.send(Err(error.duplicate()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::When;
    use std::time::Duration;

    fn pending(bytes: usize, mariadb: bool) -> Pending {
        Pending {
            job: NewJob {
                name: "t",
                payload: "x".repeat(bytes),
                queue: "default".into(),
                priority: 0,
                max_attempts: 1,
                when: When::After(Duration::ZERO),
                unique: None,
            },
            mariadb,
            reply: oneshot::channel().0,
        }
    }

    #[test]
    fn a_batch_takes_what_has_arrived_up_to_its_limits() {
        let mut waiting: Vec<Pending> = (0..3).map(|_| pending(10, true)).collect();
        let (batch, rest) = gather(pending(10, true), || waiting.pop());
        assert_eq!(batch.len(), 4);
        assert!(rest.is_none());

        let mut many: Vec<Pending> = (0..250).map(|_| pending(10, true)).collect();
        let (batch, rest) = gather(pending(10, true), || many.pop());
        assert_eq!(batch.len(), MAX_ROWS);
        assert!(rest.is_none());
        assert_eq!(many.len(), 250 - (MAX_ROWS - 1));

        let mut big = vec![pending(MAX_BYTES, true)];
        let (batch, rest) = gather(pending(10, true), || big.pop());
        assert_eq!(batch.len(), 1);
        assert_eq!(rest.map(|p| p.job.payload.len()), Some(MAX_BYTES));

        let mut other = vec![pending(10, false)];
        let (batch, rest) = gather(pending(10, true), || other.pop());
        assert_eq!(batch.len(), 1);
        assert!(rest.is_some_and(|p| !p.mariadb));
    }
}
