//! Test helpers for the app developer: assert what a handler dispatched, and run the
//! dispatched jobs inline, in order, without workers.
//!
//! A [`TestQueue`] hands the app a [`JobQueue`]. Two kinds:
//!
//! - [`TestQueue::new`] has no database. Dispatches are recorded in memory, in order, with
//!   their options; unique keys behave as the table's unique index does. Everything else
//!   a `JobQueue` does (find, stats, cancel…) returns [`Error::NoDatabase`].
//! - [`TestQueue::on`] wraps a real queue: dispatches go to the `jobs` table, the
//!   assertions read it, and [`run_all`](TestQueue::run_all) runs the jobs on real
//!   workers. Use it to test what the table does (uniqueness across processes, your
//!   transaction with [`Dispatch::within`](crate::Dispatch::within)).
//!
//! The same test code works with either.
//!
//! ```
//! use actix_web::{post, test, web, App, HttpResponse};
//! use lightjobs::testing::TestQueue;
//! use lightjobs::{Job, JobContext, JobError, JobQueue};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct SendMail { to: String }
//!
//! impl Job for SendMail {
//!     const NAME: &'static str = "send_mail";
//!     async fn execute(self, _ctx: &JobContext) -> Result<(), JobError> {
//!         if self.to.is_empty() {
//!             return Err(JobError::fail("no address"));
//!         }
//!         Ok(())
//!     }
//! }
//!
//! #[post("/signup")]
//! async fn signup(queue: web::Data<JobQueue>) -> actix_web::Result<HttpResponse> {
//!     queue.dispatch(SendMail { to: "new@example.com".into() }).await?;
//!     Ok(HttpResponse::Accepted().finish())
//! }
//!
//! # actix_web::rt::System::new().block_on(async {
//! let jobs = TestQueue::new().register::<SendMail>();
//! // Where the app has `.configure(lightjobs::init)`, the test has `.configure(jobs.init())`.
//! let app = test::init_service(App::new().configure(jobs.init()).service(signup)).await;
//! let resp = test::call_service(&app, test::TestRequest::post().uri("/signup").to_request()).await;
//! assert_eq!(resp.status(), 202);
//!
//! let mail = jobs.assert_dispatched::<SendMail>(|m| m.job.to == "new@example.com").await;
//! assert_eq!(mail.queue, "default");
//! let ran = jobs.run_all().await.expect("every job succeeds");
//! assert_eq!(ran.len(), 1);
//! jobs.assert_not_dispatched::<SendMail>(|_| true).await; // run: no longer waiting
//! # });
//! ```

mod run;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use actix_web::web;

use crate::queue::memory::{self, Log};
pub use run::RunError;

use crate::error::{Error, Result};
use crate::job::{DataMap, Job};
use crate::queue::JobQueue;
use crate::registry::Registry;

/// A queue for tests: records or reads what the app dispatched, and runs it inline.
/// Cheap to clone; clones share the record.
#[derive(Clone)]
pub struct TestQueue {
    queue: JobQueue,
    /// The record of a queue without a database.
    log: Option<Arc<Log>>,
    registry: Registry,
    data: DataMap,
}

impl fmt::Debug for TestQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestQueue")
            .field("database", &self.log.is_none())
            .field("registry", &self.registry)
            .finish_non_exhaustive()
    }
}

impl Default for TestQueue {
    fn default() -> Self {
        Self::new()
    }
}

/// A job that was dispatched and has not run yet: its decoded payload and the options of
/// its dispatch.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Dispatched<P = serde_json::Value> {
    /// Its id (in memory, counting from 1 in dispatch order).
    pub id: u64,
    /// Its name ([`Job::NAME`]).
    pub name: String,
    /// The payload, decoded.
    pub job: P,
    /// Its queue.
    pub queue: String,
    /// Its priority (lower runs first).
    pub priority: i16,
    /// Its attempts in all.
    pub max_attempts: u32,
    /// How long after the dispatch it is due: zero for at once.
    pub delay: Duration,
    /// Its unique key, if the dispatch gave one.
    pub unique_key: Option<String>,
    /// Its flow key, if it has one.
    pub flow_key: Option<String>,
    /// The W3C `traceparent` stored with it, if any.
    pub trace_parent: Option<String>,
    /// Its tags.
    pub tags: Vec<String>,
    /// Its metadata object.
    pub meta: Option<serde_json::Value>,
}

impl TestQueue {
    /// A queue without a database: dispatches are recorded in memory.
    pub fn new() -> Self {
        let log = Arc::new(Log::default());
        TestQueue {
            queue: JobQueue::in_memory(log.clone()),
            log: Some(log),
            registry: Registry::new(),
            data: DataMap::default(),
        }
    }

    /// Wraps a real queue: dispatches go to its `jobs` table, the assertions read it, and
    /// [`run_all`](Self::run_all) runs the jobs on real workers. Give each test a database
    /// of its own: the assertions see every job waiting in the table.
    pub fn on(queue: JobQueue) -> Self {
        TestQueue {
            queue,
            log: None,
            registry: Registry::new(),
            data: DataMap::default(),
        }
    }

    /// Lets [`run_all`](Self::run_all) run jobs of this type.
    #[must_use]
    pub fn register<J: Job>(mut self) -> Self {
        self.registry = self.registry.register::<J>();
        self
    }

    /// Shares `value` with the jobs [`run_all`](Self::run_all) runs, as
    /// [`Workers::data`](crate::Workers::data) does.
    #[must_use]
    pub fn data<T: Send + Sync + 'static>(mut self, value: T) -> Self {
        self.data.insert(value);
        self
    }

    /// The queue to hand to the app.
    pub fn queue(&self) -> &JobQueue {
        &self.queue
    }

    /// What [`lightjobs::init`](crate::init) is for the app, with this queue:
    /// `App::new().configure(jobs.init())`.
    pub fn init(&self) -> impl FnOnce(&mut web::ServiceConfig) + Clone + 'static {
        let queue = self.queue.clone();
        move |cfg| {
            cfg.app_data(web::Data::new(queue));
        }
    }

    /// Every job dispatched and not run yet, in dispatch order, with its payload as JSON.
    pub async fn all_dispatched(&self) -> Result<Vec<Dispatched>> {
        let Some(log) = &self.log else {
            return self.waiting_in_table().await;
        };
        log.snapshot()
            .into_iter()
            .filter(|row| row.state == memory::State::Waiting)
            .map(|row| {
                let delay = row.delay();
                Ok(Dispatched {
                    id: row.id,
                    name: row.job.name.to_owned(),
                    job: serde_json::from_str(&row.job.payload)?,
                    queue: row.job.queue,
                    priority: row.job.priority,
                    max_attempts: row.job.max_attempts,
                    delay,
                    unique_key: row.job.unique.map(|(k, _)| k),
                    flow_key: row.job.flow.map(|f| f.key_str().to_owned()),
                    trace_parent: row.job.trace,
                    tags: row.job.tags,
                    meta: parse_meta(row.job.meta.as_deref())?,
                })
            })
            .collect()
    }

    async fn waiting_in_table(&self) -> Result<Vec<Dispatched>> {
        let rows = self.queue.waiting_jobs().await?;
        rows.into_iter()
            .map(
                |(
                    id,
                    name,
                    payload,
                    queue,
                    priority,
                    max_attempts,
                    us,
                    unique,
                    flow,
                    trace,
                    tags,
                    meta,
                )| {
                    Ok(Dispatched {
                        id,
                        name,
                        job: serde_json::from_str(&payload)?,
                        queue,
                        priority,
                        max_attempts,
                        delay: Duration::from_micros(us),
                        unique_key: unique,
                        flow_key: flow,
                        trace_parent: trace,
                        tags: crate::store::split_tags(tags.as_deref()),
                        meta: parse_meta(meta.as_deref())?,
                    })
                },
            )
            .collect()
    }

    /// The jobs of type `J` (by its name and aliases) dispatched and not run yet, in
    /// dispatch order, decoded.
    pub async fn dispatched<J: Job>(&self) -> Result<Vec<Dispatched<J>>> {
        let mut typed = Vec::new();
        for d in self.all_dispatched().await? {
            if d.name == J::NAME || J::ALIASES.contains(&d.name.as_str()) {
                let job = serde_json::from_value(d.job.clone())?;
                typed.push(d.with_job(job));
            }
        }
        Ok(typed)
    }

    /// The first waiting job of type `J` that `matches`.
    ///
    /// # Panics
    ///
    /// When none does, with the list of what was dispatched; or when the record cannot be
    /// read.
    pub async fn assert_dispatched<J: Job>(
        &self,
        matches: impl Fn(&Dispatched<J>) -> bool,
    ) -> Dispatched<J> {
        let found = self.find::<J>(&matches).await;
        match found {
            Some(d) => d,
            None => panic!(
                "no waiting `{}` job matches; dispatched and waiting: {}",
                J::NAME,
                self.describe().await
            ),
        }
    }

    /// Checks that no waiting job of type `J` `matches`.
    ///
    /// # Panics
    ///
    /// When one does, naming it; or when the record cannot be read.
    pub async fn assert_not_dispatched<J: Job>(&self, matches: impl Fn(&Dispatched<J>) -> bool) {
        if let Some(d) = self.find::<J>(&matches).await {
            panic!(
                "a waiting `{}` job matches (id {}); dispatched and waiting: {}",
                J::NAME,
                d.id,
                self.describe().await
            );
        }
    }

    async fn find<J: Job>(
        &self,
        matches: &impl Fn(&Dispatched<J>) -> bool,
    ) -> Option<Dispatched<J>> {
        match self.dispatched::<J>().await {
            Ok(all) => all.into_iter().find(matches),
            Err(e) => panic!("lightjobs::testing: could not read the dispatched jobs: {e}"),
        }
    }

    /// One line per waiting job, for a failed assertion's message.
    async fn describe(&self) -> String {
        match self.all_dispatched().await {
            Ok(all) if all.is_empty() => "none".to_owned(),
            Ok(all) => all
                .iter()
                .map(|d| format!("\n  #{} {} on `{}`: {}", d.id, d.name, d.queue, d.job))
                .collect(),
            Err(e) => format!("(could not read them: {e})"),
        }
    }

    /// The output job `id` recorded with
    /// [`JobContext::record_output`](crate::JobContext::record_output), decoded.
    pub async fn output(&self, id: u64) -> Result<Option<serde_json::Value>> {
        let json = match &self.log {
            Some(log) => log
                .snapshot()
                .into_iter()
                .find(|r| r.id == id)
                .and_then(|r| r.output),
            None => self.queue.find(id).await?.and_then(|r| r.output),
        };
        Ok(json.map(|j| serde_json::from_str(&j)).transpose()?)
    }

    /// Forgets every recorded dispatch (a queue without a database). On a real queue it
    /// returns [`Error::Invalid`]: the table is the test's to empty.
    pub fn clear(&self) -> Result<()> {
        match &self.log {
            Some(log) => {
                log.clear();
                Ok(())
            }
            None => Err(Error::invalid(
                "clear",
                "a TestQueue on a real queue does not delete rows",
            )),
        }
    }
}

impl<P> Dispatched<P> {
    fn with_job<Q>(self, job: Q) -> Dispatched<Q> {
        Dispatched {
            id: self.id,
            name: self.name,
            job,
            queue: self.queue,
            priority: self.priority,
            max_attempts: self.max_attempts,
            delay: self.delay,
            unique_key: self.unique_key,
            flow_key: self.flow_key,
            trace_parent: self.trace_parent,
            tags: self.tags,
            meta: self.meta,
        }
    }
}

fn parse_meta(meta: Option<&str>) -> Result<Option<serde_json::Value>> {
    Ok(meta.map(serde_json::from_str).transpose()?)
}
