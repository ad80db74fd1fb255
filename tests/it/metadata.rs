//! Tags, metadata and output: set at dispatch, handed to the job, recorded by it, read
//! back with `find`; refused when they break their limits; an output whose run lost its
//! claim is not written.

use crate::common::{Drain, TestDb};

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lightjobs::testing::TestQueue;
use lightjobs::{Error, Job, JobContext, JobError, Workers};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// A job's tags and metadata.
type Carried = (Vec<String>, Option<serde_json::Value>);

/// What the jobs saw.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<Carried>>>);

#[derive(Serialize, Deserialize)]
struct Report {
    rows: u64,
}

impl Job for Report {
    const NAME: &'static str = "report";
    async fn execute(self, ctx: &JobContext) -> Result<(), JobError> {
        if let Some(seen) = ctx.data::<Seen>() {
            seen.0
                .lock()
                .unwrap()
                .push((ctx.tags().to_vec(), ctx.meta().cloned()));
        }
        if self.rows > 1_000_000 {
            // Over the output limit: the run fails with a clear error.
            let big = "x".repeat(lightjobs::defaults::MAX_OUTPUT_BYTES);
            return ctx.record_output(&big).await;
        }
        ctx.record_output(&json!({ "rows": self.rows, "file": "report.csv" }))
            .await
    }
}

/// Records its output only after the test took its claim away (as a rescue would).
#[derive(Serialize, Deserialize)]
struct Late;

impl Job for Late {
    const NAME: &'static str = "late";
    const MAX_ATTEMPTS: u32 = 1;
    async fn execute(self, ctx: &JobContext) -> Result<(), JobError> {
        crate::common::until_own_row(ctx, "claim_token = 0").await?;
        ctx.record_output(&json!({ "late": true })).await
    }
}

#[actix_rt::test]
async fn tags_and_metadata_reach_the_job_and_its_output_is_read_back() {
    let db = TestDb::new("meta_output").await;
    let queue = db.migrated().await;
    let seen = Seen::default();
    let id = queue
        .dispatch(Report { rows: 42 })
        .tags(["tenant:42", "nightly"])
        .meta(json!({ "requested_by": "ada@example.com" }))
        .await
        .unwrap();
    let big = queue.dispatch(Report { rows: 2_000_000 }).await.unwrap();
    Workers::new(queue.clone())
        .register::<Report>()
        .data(seen.clone())
        .poll_interval(Duration::from_millis(10), Duration::from_millis(50))
        .drain()
        .await;
    let saw = seen.0.lock().unwrap().clone();
    assert!(saw.contains(&(
        vec!["tenant:42".to_owned(), "nightly".to_owned()],
        Some(json!({ "requested_by": "ada@example.com" }))
    )));
    assert!(
        saw.contains(&(Vec::new(), None)),
        "the untagged one: {saw:?}"
    );

    let job = queue.find(id).await.unwrap().unwrap();
    assert_eq!(job.status, "processed");
    assert_eq!(job.tags, ["tenant:42", "nightly"]);
    assert_eq!(
        job.meta
            .as_deref()
            .map(|m| serde_json::from_str::<serde_json::Value>(m).unwrap()),
        Some(json!({ "requested_by": "ada@example.com" }))
    );
    let output: serde_json::Value = serde_json::from_str(job.output.as_deref().unwrap()).unwrap();
    assert_eq!(output, json!({ "rows": 42, "file": "report.csv" }));

    let big = queue.find(big).await.unwrap().unwrap();
    assert_eq!(big.status, "failed");
    assert!(
        big.last_error.unwrap().contains("over the limit"),
        "no retry either"
    );
    assert_eq!(big.output, None);
    db.drop_db().await;
}

#[actix_rt::test]
async fn an_output_recorded_after_the_claim_was_taken_is_not_written() {
    let db = TestDb::new("meta_late_output").await;
    let queue = db.migrated().await;
    let id = queue.dispatch(Late).await.unwrap();
    let handle = Workers::new(queue.clone())
        .register::<Late>()
        .data(db.pool.clone())
        .shutdown_timeout(Duration::from_secs(1))
        .poll_interval(Duration::from_millis(10), Duration::from_millis(50))
        .start()
        .await
        .unwrap();
    db.wait_for("running", 1, Duration::from_secs(10)).await;
    // What a rescue followed by another claim does to the row: a token not this run's.
    db.exec(&format!("UPDATE jobs SET claim_token = 0 WHERE id = {id}"))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let output: Option<String> = db
        .scalar(&format!("SELECT output FROM jobs WHERE id = {id}"))
        .await;
    assert_eq!(output, None);
    handle.shutdown().await;
    db.drop_db().await;
}

#[actix_rt::test]
async fn tags_and_metadata_over_their_limits_are_refused() {
    let jobs = TestQueue::new();
    let q = jobs.queue();
    let too_many: Vec<String> = (0..11).map(|i| format!("t{i}")).collect();
    for (what, result) in [
        ("tags", q.dispatch(Report { rows: 1 }).tags(too_many).await),
        (
            "tag",
            q.dispatch(Report { rows: 1 }).tags(["has space"]).await,
        ),
        ("tag", q.dispatch(Report { rows: 1 }).tags(["a,b"]).await),
        ("tag", q.dispatch(Report { rows: 1 }).tags([""]).await),
        (
            "meta",
            q.dispatch(Report { rows: 1 }).meta(json!([1, 2])).await,
        ),
        (
            "meta",
            q.dispatch(Report { rows: 1 })
                .meta(json!({ "blob": "x".repeat(5000) }))
                .await,
        ),
    ] {
        assert!(
            matches!(&result, Err(Error::Invalid { what: w, .. }) if *w == what),
            "{what}: {result:?}"
        );
    }
    assert!(jobs.all_dispatched().await.unwrap().is_empty());

    // In memory: the dispatch keeps them, the run records its output.
    let jobs = jobs.register::<Report>();
    let id = jobs
        .queue()
        .dispatch(Report { rows: 7 })
        .tags(["a"])
        .meta(json!({ "k": 1 }))
        .await
        .unwrap();
    let d = jobs.assert_dispatched::<Report>(|d| d.tags == ["a"]).await;
    assert_eq!(d.meta, Some(json!({ "k": 1 })));
    jobs.run_all().await.unwrap();
    assert_eq!(
        jobs.output(id).await.unwrap(),
        Some(json!({ "rows": 7, "file": "report.csv" }))
    );
}

#[actix_rt::test]
async fn jobs_are_listed_by_tag() {
    let db = TestDb::new("meta_by_tag").await;
    let queue = db.migrated().await;
    let mut tagged = Vec::new();
    for i in 0..5u64 {
        let tags = if i % 2 == 0 {
            vec!["tenant:42", "export"]
        } else {
            vec!["tenant:7"]
        };
        let id = queue.dispatch(Report { rows: i }).tags(tags).await.unwrap();
        if i % 2 == 0 {
            tagged.push(id);
        }
    }
    // A tag that is a prefix or a part of another is not a match.
    queue
        .dispatch(Report { rows: 9 })
        .tags(["tenant:4"])
        .await
        .unwrap();
    let page = queue
        .list_tagged("pending", "tenant:42", 2, None)
        .await
        .unwrap();
    let mut ids: Vec<u64> = page.jobs.iter().map(|j| j.id).collect();
    let next = queue
        .list_tagged("pending", "tenant:42", 2, page.next.as_deref())
        .await
        .unwrap();
    ids.extend(next.jobs.iter().map(|j| j.id));
    ids.sort_unstable();
    assert_eq!(ids, tagged);
    assert!(queue
        .list_tagged("pending", "nobody", 10, None)
        .await
        .unwrap()
        .jobs
        .is_empty());
    db.drop_db().await;
}
