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
//! # Beyond one job
//!
//! [`JobQueue::batch`] dispatches jobs together with callbacks that run once when the
//! last of them has finished; [`Dispatch::after`] runs a job only after another one
//! succeeded; [`JobQueue::cancel`] stops a job, running or not; [`Dispatch::tags`],
//! [`Dispatch::meta`] and [`JobContext::record_output`] keep what a job is about and what
//! it produced. `examples/batches.rs` runs them all.
//!
//! # Defaults
//!
//! Every default and limit is a constant in [`defaults`], each documented with why it was
//! chosen; the builders ([`Workers`], [`JobQueueBuilder`]) say which one each setter
//! overrides.
//!
//! # Delivery
//!
//! At least once. A job runs exactly once unless a process dies, stalls, or loses the
//! database after the job finished and before its result was written; then it runs again.
//! A process that can no longer confirm its heartbeat stops its runs before another may
//! judge it dead. Write jobs to be idempotent: [`JobContext::id`] is stable across
//! attempts. What each fault does is in `docs/guarantees.md`.
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
mod flow;
mod fnv;
mod handle;
mod job;
mod maintenance;
#[cfg(feature = "metrics")]
mod metrics;
pub mod migrate;
#[cfg(test)]
mod module_graph;
mod nodes;
mod process;
mod queue;
mod registry;
mod runtime;
mod store;
pub mod testing;
mod trace;
mod web;
mod workers;

pub use backoff::Backoff;
#[cfg(feature = "dashboard")]
pub use dashboard::{dashboard, Dashboard};
pub use error::{Error, Result};
pub use events::{JobEvent, JobOutcome};
pub use flow::{Flow, FlowKeyState, MAX_FLOW_KEY_CHARS, MAX_RATE_WINDOW};
pub use handle::{StopSignal, WorkerHandle};
pub use job::{Job, JobContext, JobError};
pub use queue::{Batch, BatchBuilder, Dispatch, JobQueue, JobQueueBuilder, Page};
pub use registry::Registry;
pub use runtime::report::Report;
pub use store::{AttemptError, BatchOutcome, BatchState, JobRecord, QueueCount};
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
        acquire_lease, claim_and_complete, claim_sql, claim_sql_for, counting_sql, flow_plan_sql,
        list_sql, release_lease, ClaimedJob, Guarded, Store, CREATE_LEASES,
    };
}
