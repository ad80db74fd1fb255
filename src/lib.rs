//! Background jobs for actix-web applications, backed by MySQL/MariaDB.
//!
//! A request should never wait for slow work. A handler *dispatches* a job, a row in the
//! `jobs` table; a *worker*, in the same process or another one, claims it with
//! `SELECT … FOR UPDATE SKIP LOCKED` and runs it.
//!
//! ```no_run
//! use actix_web::{post, web, App, HttpResponse, HttpServer};
//! use lightjobs::{Job, JobContext, JobError, JobQueue, Workers};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct SendMail { to: String }
//!
//! impl Job for SendMail {
//!     const NAME: &'static str = "send_mail";
//!     async fn execute(self, _ctx: &JobContext) -> Result<(), JobError> {
//!         println!("mailing {}", self.to);
//!         Ok(())
//!     }
//! }
//!
//! #[post("/signup")]
//! async fn signup(queue: web::Data<JobQueue>) -> actix_web::Result<HttpResponse> {
//!     let id = queue.dispatch(SendMail { to: "new@example.com".into() }).await?;
//!     Ok(HttpResponse::Accepted().json(id))
//! }
//!
//! #[actix_web::main]
//! async fn main() -> std::io::Result<()> {
//!     // Reads LIGHTJOBS_DATABASE_URL (or DATABASE_URL), migrates, starts the workers.
//!     let workers = Workers::from_env()?.register::<SendMail>().migrate(true).start().await?;
//!     let server = HttpServer::new(|| App::new().configure(lightjobs::init).service(signup))
//!         .bind(("127.0.0.1", 8080))?
//!         .run();
//!     // Serves until SIGINT/SIGTERM, then drains the workers: nothing is left running.
//!     workers.serve(server).await
//! }
//! ```
//!
//! # Defaults, and why
//!
//! - **Concurrency 100** ([`defaults::CONCURRENCY`]): one fetch loop per process claims as many
//!   jobs as it has free slots in one transaction (more claimers would only contend for the
//!   same index range), so the slots set the batch: with 10, no-op jobs drain at 0.28× the
//!   raw SQL floor, with 100 at 0.98×. A slot is a future, not a thread. Jobs that must not
//!   run 100 at a time (a rate-limited API) get a lower `concurrency` or a queue limit.
//! - **Poll 50 ms … 1 s** ([`defaults::POLL_MIN`], [`defaults::POLL_MAX`]): while jobs keep
//!   coming a worker polls every 50 ms, so jobs dispatched by other processes start within
//!   that; after 30 quiet seconds it backs off to about one query a second. A dispatch in
//!   the same process hands the job to an idle worker directly, or wakes the workers.
//! - **3 attempts** ([`defaults::MAX_ATTEMPTS`]), exponential [`Backoff`] from 1 s with ±25%
//!   jitter. The retry time is stored in the row, never slept in memory.
//! - **Job timeout 15 min** ([`defaults::JOB_TIMEOUT`]) so a hung job cannot hold a slot forever.
//! - **Shutdown grace 25 s** ([`defaults::SHUTDOWN_TIMEOUT`]): below the 30 s most process
//!   managers wait before SIGKILL. Jobs still running then go back to `pending` without
//!   spending an attempt.
//!
//! # Delivery
//!
//! At least once. A job runs exactly once unless a process dies (or loses the database)
//! after the job finished and before its result was written; then it runs again. Write
//! jobs to be idempotent: [`JobContext::id`] is stable across attempts.
//!
//! Needs MySQL 8.0.1+ or MariaDB 10.6+ (for `SKIP LOCKED`).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod backoff;
#[cfg(feature = "cli")]
pub mod cli;
#[cfg(feature = "dashboard")]
mod dashboard;
pub mod defaults;
mod error;
mod events;
mod handle;
mod job;
mod maintenance;
#[cfg(feature = "metrics")]
mod metrics;
pub mod migrate;
#[cfg(test)]
mod module_graph;
mod nodes;
mod queue;
mod registry;
mod runtime;
mod store;
mod web;
mod workers;

pub use backoff::Backoff;
#[cfg(feature = "dashboard")]
pub use dashboard::{dashboard, Dashboard};
pub use error::{Error, Result};
pub use events::{JobEvent, JobOutcome};
pub use handle::{StopSignal, WorkerHandle};
pub use job::{Job, JobContext, JobError};
pub use queue::{Dispatch, JobQueue, JobQueueBuilder};
pub use registry::Registry;
pub use runtime::completer::Report;
pub use store::{JobRecord, QueueCount};
pub use web::init;
#[cfg(feature = "metrics")]
pub use web::metrics;
pub use workers::Workers;

/// Internals exposed for the crate's own integration tests and benchmarks. Not part of the
/// API: may change in any release.
#[doc(hidden)]
#[allow(missing_docs)]
pub mod __private {
    pub use crate::store::{
        acquire_lease, claim_and_complete, claim_sql, claim_sql_for, release_lease, ClaimedJob,
        Guarded, Store, CREATE_LEASES,
    };
}
