//! The claim step of the fetch loop: one claim transaction per queue, with the successes
//! since the last one folded into the first, each under the statement deadline.

use std::time::Instant;

use mysql_async::Conn;
use tokio::sync::OwnedSemaphorePermit;

use super::{Claimed, Fetcher, Round, Stopped};
use crate::runtime::completer::Finished;
use crate::store::{claim_and_complete_or_report, new_token, Ask, ClaimedJob, Held};

impl Fetcher {
    /// Claims from the queues in turn (one claim per queue at most) until the permits are
    /// used up or every queue came back short, and starts a run per job. The first
    /// claim's transaction also writes the successes finished since the last one.
    pub(super) async fn claim(
        &self,
        round: &mut Round,
        permits: &mut Vec<OwnedSemaphorePermit>,
    ) -> Claimed {
        match self.claim_queues(round, permits).await {
            Ok(got) => {
                if let Some(since) = round.outage.take() {
                    tracing::info!(target: "lightjobs::fetcher", down_for = ?since.elapsed(), "database reachable again");
                }
                Claimed::Jobs { got }
            }
            Err(Stopped::Settling) => Claimed::Settling,
            Err(Stopped::Failed(error)) if error.is_lock_conflict() => {
                round.conn.close();
                tracing::debug!(target: "lightjobs::fetcher", %error, "claim lost a lock race; retrying");
                Claimed::Conflict
            }
            Err(Stopped::Failed(error)) => {
                round.conn.close();
                if round.outage.is_none() {
                    round.outage = Some(Instant::now());
                    tracing::error!(target: "lightjobs::fetcher", %error, "claiming jobs failed; backing off until the database answers");
                } else {
                    tracing::debug!(target: "lightjobs::fetcher", %error, "claim still failing");
                }
                Claimed::Failed
            }
        }
    }

    pub(super) async fn claim_queues(
        &self,
        round: &mut Round,
        permits: &mut Vec<OwnedSemaphorePermit>,
    ) -> Result<usize, Stopped> {
        let mut done = self.shared.completions.take();
        let mut got = 0;
        let queues = &self.settings.queues;
        for _ in 0..queues.len() {
            if permits.is_empty() && done.is_empty() {
                break;
            }
            let queue = &queues[round.next_queue % queues.len()];
            round.next_queue = round.next_queue.wrapping_add(1);
            let (limit, limited, mut queue_permits) = self.claimable(queue, permits.len());
            if limit == 0 && done.is_empty() {
                continue;
            }
            let jobs = match self.claim_one(round, queue, limit, limited, done).await {
                Ok(jobs) => jobs,
                Err((unwritten, stopped)) => {
                    // The completer writes them on its own from now on: a success write the
                    // server keeps refusing must not hold up the claims.
                    self.to_completer(unwritten);
                    return Err(stopped);
                }
            };
            done = Vec::new();
            self.claimed.set(self.claimed.get() + jobs.len() as u64);
            got += jobs.len();
            for job in jobs {
                let Some(permit) = permits.pop() else { break };
                self.spawn(job, (permit, queue_permits.pop()));
            }
        }
        Ok(got)
    }

    /// How many jobs `queue` may give now (its pause, this process's limit for it), whether
    /// it has a limit across processes, and the per-queue permits taken.
    fn claimable(&self, queue: &str, free: usize) -> (usize, bool, Vec<OwnedSemaphorePermit>) {
        let (paused, limited) = self
            .shared
            .queue_states
            .read()
            .map(|s| (s.is_paused(queue), s.is_limited(queue)))
            .unwrap_or((false, false));
        // This process's own limit for the queue: a permit per job, on top of the slot.
        let mut queue_permits = Vec::new();
        let own_limit = self.shared.queue_slots.get(queue);
        if let Some(sem) = own_limit {
            while queue_permits.len() < free {
                match sem.clone().try_acquire_owned() {
                    Ok(p) => queue_permits.push(p),
                    Err(_) => break,
                }
            }
        }
        let limit = match (paused, own_limit.is_some()) {
            (true, _) => 0,
            (false, true) => queue_permits.len(),
            (false, false) => free,
        };
        (limit, limited, queue_permits)
    }

    /// One claim transaction on `queue` with the successes `done` folded in. On error,
    /// the successes not written are given back with it, and claims in doubt go to the
    /// completer (and the reconciler) to be released.
    async fn claim_one(
        &self,
        round: &mut Round,
        queue: &str,
        limit: usize,
        limited: bool,
        done: Vec<Finished>,
    ) -> Result<Vec<ClaimedJob>, (Vec<Finished>, Stopped)> {
        let nodes = self.shared.store.nodes();
        let conn = match self.claim_conn(round).await {
            Ok(conn) => conn,
            Err(error) => return Err((done, Stopped::Failed(error))),
        };
        if nodes.settle_left().is_some() {
            // A check moved the process while this connection was had (here or on another
            // thread): the move settles before any claim.
            return Err((done, Stopped::Settling));
        }
        let ids: Vec<Held> = done.iter().map(Finished::held).collect();
        let freed: Vec<&str> = done.iter().filter_map(Finished::freed_key).collect();
        let token = new_token();
        let ask = Ask {
            queue,
            limit,
            limited,
            names: &self.settings.names,
            token,
            turn: (!limited)
                .then(|| self.turns.take(queue, Instant::now()))
                .flatten(),
            freed: &freed,
        };
        let turn = ask.turn;
        let mut in_doubt = Vec::new();
        let limit = nodes.deadlines().statement;
        let worker = &self.settings.worker_id;
        self.shared.ledger.set_claiming(Some(token));
        let result = tokio::time::timeout(
            limit,
            claim_and_complete_or_report(conn, ask, worker, &ids, &mut in_doubt),
        )
        .await
        .unwrap_or(Err(crate::Error::Timeout {
            what: "claim",
            after: limit,
            sent: true,
        }));
        self.shared.ledger.set_claiming(None);
        let claim = match result {
            Ok(claim) => claim,
            Err(error) => {
                self.release_in_doubt(in_doubt);
                if turn.is_some() && error.is_lock_wait_timeout() {
                    self.turn_stalled(queue);
                }
                return Err((done, Stopped::Failed(error)));
            }
        };
        if !done.is_empty() {
            match claim.completed {
                Some(written) => self.completed(done, &written),
                // Committed, but which ones were ours is unknown: the completer writes
                // them again (a no-op for those already written) and finds out.
                None => self.to_completer(done),
            }
        }
        self.turns.claimed(queue, claim.jobs.len());
        if claim.unparked > 0 {
            // Jobs of flow keys with room again are pending now: claim again at once.
            crate::runtime::wake::wake_workers();
        }
        Ok(claim.jobs)
    }

    /// The loop's kept connection, or a new one to the node in use after a move or an error.
    async fn claim_conn<'r>(&self, round: &'r mut Round) -> Result<&'r mut Conn, crate::Error> {
        let nodes = self.shared.store.nodes();
        if round.conn.is_open() && nodes.moved_from(self.conn_node.get()).await {
            round.conn.close();
        }
        let conn = match round.conn.take() {
            Some(c) => c,
            None => {
                let (node, c) = nodes
                    .get_conn_at()
                    .await
                    .map_err(|e| crate::Error::Connect(e.to_string()))?;
                self.conn_node.set(node);
                c
            }
        };
        Ok(round.conn.insert(conn))
    }

    /// A claim of `queue` waited its turn out: its holder stalled.
    fn turn_stalled(&self, queue: &str) {
        if self.turns.stalled(queue, Instant::now()) {
            tracing::warn!(
                target: "lightjobs::fetcher",
                queue,
                "a claim turn is held by a stalled claimer; claiming without turns for 30 s"
            );
        }
    }
}
