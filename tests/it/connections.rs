//! Connection reuse against the real server: a dispatch or a claim cycle borrows a pooled
//! connection and gives it back open, instead of opening a new one each time.

use crate::common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::TestDb;
use lightjobs::{Job, JobContext, JobError, JobQueue, Workers};
use mysql_async::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Nothing {}

impl Job for Nothing {
    const NAME: &'static str = "nothing";

    async fn execute(self, _ctx: &JobContext) -> Result<(), JobError> {
        Ok(())
    }
}

/// Ids of the server connections whose current database is `db`, seen from a connection
/// on another database (so the observer is not counted).
async fn connections_on(db: &str) -> BTreeSet<u64> {
    let pool = mysql_async::Pool::new(common::base_url().as_str());
    let mut conn = pool.get_conn().await.unwrap();
    let ids: Vec<u64> = conn
        .exec(
            "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = ?",
            (db,),
        )
        .await
        .unwrap();
    drop(conn);
    pool.disconnect().await.unwrap();
    ids.into_iter().collect()
}

/// A migrated queue made without touching the test's own pool, whose connections would
/// otherwise show up on the same database.
async fn queue_on(db: &TestDb) -> JobQueue {
    let queue = db.queue();
    queue.migrate().await.unwrap();
    queue
}

#[actix_rt::test]
async fn dispatches_reuse_the_queues_connection() {
    let db = TestDb::new("conn_dispatch").await;
    let queue = queue_on(&db).await;
    queue.dispatch(Nothing {}).await.unwrap();
    let after_one = connections_on(&db.name).await;
    for _ in 0..20 {
        queue.dispatch(Nothing {}).await.unwrap();
    }
    let after_many = connections_on(&db.name).await;
    assert!(
        !after_one.is_empty(),
        "the dispatch connection was closed when given back"
    );
    assert_eq!(
        after_one, after_many,
        "sequential dispatches opened new connections"
    );
    db.drop_db().await;
}

#[actix_rt::test]
async fn claim_cycles_keep_their_connections_open() {
    let db = TestDb::new("conn_workers").await;
    let queue = queue_on(&db).await;
    let workers = Workers::new(queue.clone())
        .register::<Nothing>()
        .poll_interval(Duration::from_millis(10), Duration::from_millis(20))
        .start()
        .await
        .unwrap();
    let ids = queue
        .dispatch_many((0..50).map(|_| Nothing {}))
        .await
        .unwrap();
    let last = *ids.last().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while queue.find(last).await.unwrap().unwrap().status != "processed" {
        assert!(Instant::now() < deadline, "the jobs did not run");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let every maintenance task run at least once, then watch dozens of poll cycles.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = connections_on(&db.name).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = connections_on(&db.name).await;
    workers.shutdown().await;
    assert!(
        before.len() >= 2,
        "expected the workers' and the maintenance connections to stay open, saw {before:?}"
    );
    let closed: Vec<_> = before.difference(&after).collect();
    assert!(
        closed.is_empty(),
        "connections {closed:?} were closed between poll cycles (before {before:?}, after {after:?})"
    );
    db.drop_db().await;
}
