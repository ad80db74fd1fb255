//! Testing an app's handlers with `lightjobs::testing`: the tests at the bottom call
//! `POST /orders`, assert what it dispatched, and run the jobs inline, without workers and
//! without a database.
//!
//! ```text
//! cargo test --example testing
//! ```
//!
//! `main` serves the same app on a real database (`LIGHTJOBS_DATABASE_URL`), so the tests
//! exercise the code that runs in production.

use std::time::Duration;

use actix_web::{post, web, App, HttpResponse, HttpServer};
use lightjobs::{Job, JobContext, JobError, JobQueue, Workers};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct ChargeCard {
    order: u64,
    cents: u64,
}

impl Job for ChargeCard {
    const NAME: &'static str = "charge_card";
    const QUEUE: &'static str = "payments";

    async fn execute(self, ctx: &JobContext) -> Result<(), JobError> {
        if self.cents == 0 {
            return Err(JobError::fail("nothing to charge"));
        }
        // The receipt is the next step: dispatched from the job, run after it.
        ctx.dispatch(SendReceipt { order: self.order })
            .await
            .map_err(JobError::retry)?;
        Ok(())
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct SendReceipt {
    order: u64,
}

impl Job for SendReceipt {
    const NAME: &'static str = "send_receipt";
    async fn execute(self, _ctx: &JobContext) -> Result<(), JobError> {
        println!("receipt for order {}", self.order);
        Ok(())
    }
}

#[derive(Deserialize)]
struct Order {
    id: u64,
    cents: u64,
}

/// Charges in the background, once per order, and asks for a review a day later.
#[post("/orders")]
async fn place_order(
    queue: web::Data<JobQueue>,
    order: web::Json<Order>,
) -> actix_web::Result<HttpResponse> {
    let Order { id, cents } = order.into_inner();
    queue
        .dispatch(ChargeCard { order: id, cents })
        .unique(&format!("charge:{id}"))
        .await?;
    queue
        .dispatch(SendReceipt { order: id })
        .on_queue("reviews")
        .delay(Duration::from_secs(24 * 3600))
        .await?;
    Ok(HttpResponse::Accepted().finish())
}

/// The app, with the job queue's configuration passed in: `lightjobs::init` in
/// production, a `TestQueue`'s in tests.
fn app(
    jobs: impl FnOnce(&mut web::ServiceConfig),
) -> App<
    impl actix_web::dev::ServiceFactory<
        actix_web::dev::ServiceRequest,
        Config = (),
        Response = actix_web::dev::ServiceResponse,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    App::new().configure(jobs).service(place_order)
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let workers = Workers::from_env()?
        .register::<ChargeCard>()
        .register::<SendReceipt>()
        .queues(["default", "payments", "reviews"])
        .migrate(true)
        .start()
        .await?;
    let server = HttpServer::new(|| app(lightjobs::init))
        .bind(("127.0.0.1", 8080))?
        .run();
    workers.serve(server).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test;
    use lightjobs::testing::{RunError, TestQueue};

    fn jobs() -> TestQueue {
        TestQueue::new()
            .register::<ChargeCard>()
            .register::<SendReceipt>()
    }

    #[actix_web::test]
    async fn an_order_is_charged_once_and_gets_a_receipt() {
        let jobs = jobs();
        let app = test::init_service(app(jobs.init())).await;
        for _ in 0..2 {
            let req = test::TestRequest::post()
                .uri("/orders")
                .set_json(serde_json::json!({ "id": 7, "cents": 1250 }))
                .to_request();
            assert_eq!(test::call_service(&app, req).await.status(), 202);
        }

        let charges = jobs.dispatched::<ChargeCard>().await.unwrap();
        assert_eq!(charges.len(), 1, "a retried request does not charge twice");
        assert_eq!(charges[0].job.cents, 1250);
        assert_eq!(charges[0].queue, "payments");
        let review = jobs
            .assert_dispatched::<SendReceipt>(|r| r.queue == "reviews")
            .await;
        assert_eq!(review.delay, Duration::from_secs(24 * 3600));

        // The charge runs, and the receipt it dispatches runs after it; the review waits.
        let ran = jobs.run_all().await.unwrap();
        let names: Vec<_> = ran.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["charge_card", "send_receipt"]);
        let waiting = jobs.dispatched::<SendReceipt>().await.unwrap();
        assert!(waiting.iter().all(|r| r.queue == "reviews"), "{waiting:?}");
    }

    #[actix_web::test]
    async fn a_job_failure_is_the_test_failure() {
        let jobs = jobs();
        let app = test::init_service(app(jobs.init())).await;
        let req = test::TestRequest::post()
            .uri("/orders")
            .set_json(serde_json::json!({ "id": 8, "cents": 0 }))
            .to_request();
        test::call_service(&app, req).await;
        let err = jobs.run_all().await.unwrap_err();
        assert!(matches!(err, RunError::Failed(_)));
        assert!(err.to_string().contains("nothing to charge"), "{err}");
    }
}
