//! `lightjobs::testing` as an app developer uses it: an actix-web test calls a handler,
//! asserts what it dispatched, and runs the jobs inline, jobs they dispatch included. The
//! same test body runs on a queue without a database and on a real one.

use crate::common::TestDb;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::test as actix_test;
use actix_web::{web, App, HttpResponse};
use futures::FutureExt;
use lightjobs::testing::{RunError, TestQueue};
use lightjobs::{Error, Job, JobContext, JobError, JobOutcome, JobQueue, Workers};
use serde::{Deserialize, Serialize};

/// What the jobs did, shared with them through `TestQueue::data`.
#[derive(Default, Clone)]
struct Seen(Arc<Mutex<Vec<String>>>);

impl Seen {
    fn push(&self, s: String) {
        self.0.lock().unwrap().push(s);
    }
    fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Welcome {
    email: String,
}

impl Job for Welcome {
    const NAME: &'static str = "welcome";
    const QUEUE: &'static str = "mail";
    async fn execute(self, ctx: &JobContext) -> Result<(), JobError> {
        let seen = ctx
            .data::<Seen>()
            .ok_or_else(|| JobError::fail("no Seen"))?;
        seen.push(format!("welcome {}", self.email));
        // A job that hands the next step on, to another queue.
        ctx.dispatch(Audit { email: self.email })
            .on_queue("audit")
            .await
            .map_err(JobError::retry)?;
        Ok(())
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Audit {
    email: String,
}

impl Job for Audit {
    const NAME: &'static str = "audit";
    async fn execute(self, ctx: &JobContext) -> Result<(), JobError> {
        let seen = ctx
            .data::<Seen>()
            .ok_or_else(|| JobError::fail("no Seen"))?;
        seen.push(format!("audit {}", self.email));
        Ok(())
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Broken;

impl Job for Broken {
    const NAME: &'static str = "broken";
    async fn execute(self, _: &JobContext) -> Result<(), JobError> {
        Err(JobError::fail("broken on purpose"))
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Forever;

impl Job for Forever {
    const NAME: &'static str = "forever";
    async fn execute(self, ctx: &JobContext) -> Result<(), JobError> {
        ctx.dispatch(Forever).await.map_err(JobError::retry)?;
        Ok(())
    }
}

#[derive(Deserialize)]
struct Signup {
    email: String,
}

async fn signup(
    queue: web::Data<JobQueue>,
    form: web::Query<Signup>,
) -> actix_web::Result<HttpResponse> {
    let email = form.into_inner().email;
    let id = queue
        .dispatch(Welcome {
            email: email.clone(),
        })
        .priority(-1)
        .unique(&format!("welcome:{email}"))
        .await?;
    queue
        .dispatch(Broken)
        .delay(Duration::from_secs(3600))
        .await?;
    Ok(HttpResponse::Accepted().json(id))
}

fn test_queue(jobs: TestQueue, seen: &Seen) -> TestQueue {
    jobs.register::<Welcome>()
        .register::<Audit>()
        .register::<Broken>()
        .data(seen.clone())
}

/// The body both kinds of queue pass: a handler's dispatch asserted, then run inline.
async fn signup_dispatches_and_runs(jobs: TestQueue, seen: Seen) {
    let app = actix_test::init_service(
        App::new()
            .configure(jobs.init())
            .route("/signup", web::post().to(signup)),
    )
    .await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let req = actix_test::TestRequest::post()
            .uri("/signup?email=a@example.com")
            .to_request();
        let id: u64 = actix_test::call_and_read_body_json(&app, req).await;
        ids.push(id);
    }
    assert_eq!(
        ids[0], ids[1],
        "the unique key made the second dispatch a no-op"
    );

    let welcome = jobs
        .assert_dispatched::<Welcome>(|w| w.job.email == "a@example.com")
        .await;
    assert_eq!(welcome.id, ids[0]);
    assert_eq!(
        (welcome.queue.as_str(), welcome.priority),
        ("mail", -1),
        "the dispatch's options"
    );
    assert_eq!(welcome.unique_key.as_deref(), Some("welcome:a@example.com"));
    assert_eq!(welcome.delay, Duration::ZERO);
    let broken = jobs.dispatched::<Broken>().await.unwrap();
    assert_eq!(broken.len(), 2, "one per request");
    assert!(
        broken.iter().all(|b| b.delay >= Duration::from_secs(3590)),
        "{broken:?}"
    );
    jobs.assert_not_dispatched::<Audit>(|_| true).await;

    let events = jobs.run_all().await.expect("welcome and audit succeed");
    let ran: Vec<&str> = events.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(ran, ["welcome", "audit"], "the delayed jobs did not run");
    assert_eq!(seen.all(), ["welcome a@example.com", "audit a@example.com"]);
    jobs.assert_not_dispatched::<Welcome>(|_| true).await;
    assert_eq!(jobs.dispatched::<Broken>().await.unwrap().len(), 2);

    // The delayed ones, made due: both fail, and the error is the job's.
    let err = jobs.run_all_with_delayed().await.unwrap_err();
    let RunError::Failed(failed) = &err else {
        panic!("{err}");
    };
    assert_eq!(failed.len(), 2, "{failed:?}");
    assert!(
        matches!(&failed[0].outcome, JobOutcome::Failed { error } if error == "broken on purpose"),
        "{failed:?}"
    );
    assert!(
        err.to_string().contains("broken on purpose (and 1 more)"),
        "{err}"
    );
    assert!(jobs.all_dispatched().await.unwrap().is_empty());
}

#[actix_web::test]
async fn a_handler_test_without_a_database() {
    let seen = Seen::default();
    let jobs = test_queue(TestQueue::new(), &seen);
    signup_dispatches_and_runs(jobs.clone(), seen).await;

    // What needs a table says so.
    assert!(matches!(jobs.queue().stats().await, Err(Error::NoDatabase)));
    let started = Workers::new(jobs.queue().clone()).start().await;
    assert!(matches!(started, Err(Error::NoDatabase)));
}

#[actix_web::test]
async fn a_handler_test_on_the_real_table() {
    let db = TestDb::new("testing_real").await;
    let queue = db.migrated().await;
    let seen = Seen::default();
    let jobs = test_queue(TestQueue::on(queue), &seen);
    signup_dispatches_and_runs(jobs, seen).await;
    // The runs went through the table: the rows say so.
    assert_eq!(db.count("processed").await, 2);
    assert_eq!(db.count("failed").await, 2);
    db.drop_db().await;
}

#[actix_web::test]
async fn a_real_run_reports_failures_and_unregistered_jobs() {
    let db = TestDb::new("testing_real_fail").await;
    let queue = db.migrated().await;
    let seen = Seen::default();
    let jobs = test_queue(TestQueue::on(queue.clone()), &seen);
    let id = queue.dispatch(Broken).await.unwrap();
    let err = jobs.run_all().await.unwrap_err();
    assert!(
        matches!(&err, RunError::Failed(f) if f[0].id == id),
        "{err}"
    );
    assert_eq!(db.job(id).await.0, "failed");

    queue.dispatch(Forever).await.unwrap();
    let err = jobs.run_all().await.unwrap_err();
    assert!(
        matches!(&err, RunError::Unregistered { name, .. } if name == "forever"),
        "{err}"
    );
    db.drop_db().await;
}

#[actix_web::test]
async fn runaway_and_unregistered_jobs_are_errors_in_memory() {
    let jobs = TestQueue::new().register::<Forever>();
    jobs.queue().dispatch(Forever).await.unwrap();
    let err = jobs.run_all().await.unwrap_err();
    assert!(matches!(err, RunError::Runaway(10_000)), "{err}");
    jobs.clear().unwrap();

    jobs.queue()
        .dispatch(Audit { email: "c".into() })
        .await
        .unwrap();
    let err = jobs.run_all().await.unwrap_err();
    assert!(
        matches!(&err, RunError::Unregistered { name, .. } if name == "audit"),
        "{err}"
    );
    assert_eq!(
        jobs.all_dispatched().await.unwrap().len(),
        1,
        "left waiting"
    );
}

#[actix_web::test]
async fn a_failed_assertion_lists_what_was_dispatched() {
    let jobs = TestQueue::new();
    jobs.queue()
        .dispatch(Welcome {
            email: "x@example.com".into(),
        })
        .await
        .unwrap();
    let missing = std::panic::AssertUnwindSafe(
        jobs.assert_dispatched::<Welcome>(|w| w.job.email == "y@example.com"),
    )
    .catch_unwind()
    .await;
    let panic = missing.expect_err("no such job");
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        message.contains("no waiting `welcome` job matches")
            && message.contains(r#"#1 welcome on `mail`: {"email":"x@example.com"}"#),
        "{message}"
    );
    let present = std::panic::AssertUnwindSafe(jobs.assert_not_dispatched::<Welcome>(|_| true))
        .catch_unwind()
        .await;
    assert!(present.is_err());
}

#[derive(Debug, Serialize, Deserialize)]
struct Traced;

impl Job for Traced {
    const NAME: &'static str = "traced";
    async fn execute(self, ctx: &JobContext) -> Result<(), JobError> {
        let seen = ctx
            .data::<Seen>()
            .ok_or_else(|| JobError::fail("no Seen"))?;
        seen.push(ctx.trace_parent().unwrap_or("none").to_owned());
        Ok(())
    }
}

/// A `traceparent` given at dispatch is stored with the job and reaches it, in memory
/// and through the table; a value that is not one is refused before it is stored.
#[actix_web::test]
async fn a_trace_parent_travels_with_the_job() {
    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let db = TestDb::new("testing_trace").await;
    let real = db.migrated().await;
    for jobs in [TestQueue::new(), TestQueue::on(real)] {
        let seen = Seen::default();
        let jobs = jobs.register::<Traced>().data(seen.clone());
        jobs.queue()
            .dispatch(Traced)
            .trace_parent(TP)
            .await
            .unwrap();
        jobs.queue().dispatch(Traced).await.unwrap();
        let bad = jobs.queue().dispatch(Traced).trace_parent("00-xyz").await;
        assert!(
            matches!(
                bad,
                Err(Error::Invalid {
                    what: "trace_parent",
                    ..
                })
            ),
            "{bad:?}"
        );
        let waiting = jobs.dispatched::<Traced>().await.unwrap();
        let stored: Vec<_> = waiting.iter().map(|d| d.trace_parent.as_deref()).collect();
        assert_eq!(stored, [Some(TP), None]);
        jobs.run_all().await.unwrap();
        assert_eq!(seen.all(), [TP, "none"]);
    }
    db.drop_db().await;
}
