//! The seed's commands: `process:jobs`, `create:job`, `migrate`, and the operator's tools
//! (`stats`, `list`, `failed`, `retry`, `discard`, `cancel`, `pause`, `resume`, `prune`):
//! everything the [`Dashboard`](crate::Dashboard) does, from a shell.
//!
//! Job types are compiled into your binary, so the worker command runs from your `main`:
//!
//! ```no_run
//! # use lightjobs::{Job, JobContext, JobError, Registry};
//! # #[derive(serde::Serialize, serde::Deserialize)] struct SendMail;
//! # impl Job for SendMail { const NAME: &'static str = "send_mail";
//! #   async fn execute(self, _: &JobContext) -> Result<(), JobError> { Ok(()) } }
//! fn main() -> std::process::ExitCode {
//!     lightjobs::cli::run(Registry::new().register::<SendMail>())
//! }
//! ```
//!
//! and `my-app process:jobs --queue mail --concurrency 20` prints one line per job:
//!
//! ```text
//! ✔ Job processed successfully: 123
//! ✖ Error dispatching job: 124 - Recipient email address is missing
//! ```
//!
//! The commands that need no job types also ship as the `lightjobs` binary.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::events::{JobEvent, JobOutcome};
use crate::queue::{database_url_from_env, JobQueue};
use crate::registry::Registry;
use crate::workers::Workers;

mod create_job;
mod tools;

pub use create_job::{create_job, Created};

/// Command line of the lightjobs tools.
#[derive(Debug, Parser)]
#[command(
    name = "lightjobs",
    version,
    about = "Background jobs on MySQL/MariaDB"
)]
pub struct Cli {
    /// Database URL (default: LIGHTJOBS_DATABASE_URL, then DATABASE_URL).
    #[arg(long, global = true)]
    database_url: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run workers until SIGINT/SIGTERM, printing one line per job.
    #[command(name = "process:jobs")]
    ProcessJobs(ProcessArgs),
    /// Write a job module from a template: `create:job SendMail`.
    #[command(name = "create:job")]
    CreateJob {
        /// The job type's name, in CamelCase.
        name: String,
        /// Where to write the file.
        #[arg(long, default_value = "src/jobs")]
        dir: PathBuf,
    },
    /// Apply the embedded migrations.
    Migrate,
    #[command(flatten)]
    Tool(tools::Tool),
}

#[derive(Debug, Args)]
struct ProcessArgs {
    /// Queues to work, in turn (repeat the flag or separate with commas; a comma that is
    /// part of a queue's name is written `\,`).
    #[arg(long = "queue", default_value = crate::defaults::QUEUE)]
    queues: Vec<String>,
    /// Jobs run at once.
    #[arg(long, default_value_t = crate::defaults::CONCURRENCY)]
    concurrency: usize,
    /// Exit once no job is ready and none is running.
    #[arg(long)]
    stop_when_empty: bool,
    /// Exit after this many jobs.
    #[arg(long)]
    max_jobs: Option<u64>,
    /// Seconds running jobs get to finish after SIGINT/SIGTERM.
    #[arg(long, default_value_t = crate::defaults::SHUTDOWN_TIMEOUT.as_secs())]
    shutdown_timeout: u64,
    /// Apply pending migrations first.
    #[arg(long)]
    migrate: bool,
    /// Seconds between heartbeats of this process.
    #[arg(long, default_value_t = crate::defaults::HEARTBEAT_INTERVAL.as_secs_f64())]
    heartbeat: f64,
    /// Seconds of silence after which a worker process counts as dead and its jobs are
    /// rescued (at least twice --heartbeat).
    #[arg(long, default_value_t = crate::defaults::STALE_AFTER.as_secs_f64())]
    stale_after: f64,
    /// Seconds a job cancelled while running has to return before it is dropped.
    #[arg(long, default_value_t = crate::defaults::CANCEL_GRACE.as_secs_f64())]
    cancel_grace: f64,
}

/// Parses `std::env::args` and runs the command on a new actix-rt system.
pub fn run(registry: Registry) -> ExitCode {
    run_with(registry, |workers| workers)
}

/// Like [`run`], with a hook that finishes the [`Workers`] of `process:jobs` after the
/// flags are applied: shared data for the jobs, an event hook, other settings.
///
/// ```no_run
/// # use lightjobs::{Job, JobContext, JobError, Registry};
/// # #[derive(serde::Serialize, serde::Deserialize)] struct SendMail;
/// # impl Job for SendMail { const NAME: &'static str = "send_mail";
/// #   async fn execute(self, _: &JobContext) -> Result<(), JobError> { Ok(()) } }
/// fn main() -> std::process::ExitCode {
///     let pool = mysql_async::Pool::new("mysql://app@127.0.0.1/app");
///     lightjobs::cli::run_with(Registry::new().register::<SendMail>(), move |workers| {
///         workers.data(pool)
///     })
/// }
/// ```
pub fn run_with(registry: Registry, configure: impl FnOnce(Workers) -> Workers) -> ExitCode {
    run_from(registry, configure, std::env::args_os())
}

/// Like [`run_with`] with explicit arguments (the first is the program name).
pub fn run_from<I, T>(
    registry: Registry,
    configure: impl FnOnce(Workers) -> Workers,
    args: I,
) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let mut command = Cli::command();
    if registry.names().is_empty() {
        // This binary has no job types: `process:jobs` runs from the application's own
        // (it still answers, with that advice, if called).
        command = command.mut_subcommand("process:jobs", |c| c.hide(true));
    }
    let parsed = command
        .try_get_matches_from(args)
        .and_then(|matches| Cli::from_arg_matches(&matches));
    let cli = match parsed {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match actix_rt::System::new().block_on(execute(cli, registry, configure)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn execute(
    cli: Cli,
    registry: Registry,
    configure: impl FnOnce(Workers) -> Workers,
) -> crate::Result<()> {
    if let Command::CreateJob { name, dir } = &cli.command {
        let created = create_job(name, dir)?;
        println!("Created {}", created.path.display());
        println!(
            "Declared it in {} (`pub mod {};`).",
            created.declared_in.display(),
            created
                .path
                .file_stem()
                .unwrap_or_default()
                .to_string_lossy()
        );
        if let Some((root, line)) = &created.root_needs {
            println!("Add `{line}` to {}.", root.display());
        }
        println!(
            "Register it with your workers: `.register::<{}>()`.",
            created.type_path
        );
        return Ok(());
    }
    let url = match cli.database_url {
        Some(url) => url,
        None => database_url_from_env()?,
    };
    let queue = JobQueue::connect(&url)?;
    match cli.command {
        Command::ProcessJobs(args) => process_jobs(queue, registry, args, configure).await,
        Command::Migrate => {
            let migrated = queue.migrate().await?;
            if migrated.applied.is_empty() {
                println!("Nothing to migrate: the schema is current.");
            } else {
                println!("Applied migrations {:?}.", migrated.applied);
            }
            if let Some(adoption) = &migrated.adopted {
                let mut line = adoption.to_string();
                if let Some(first) = line.get_mut(..1) {
                    first.make_ascii_uppercase();
                }
                println!("{line}.");
            }
            Ok(())
        }
        Command::Tool(tool) => {
            // Before a tool reads the tables: a schema not migrated yet gets the same
            // message as `process:jobs`, not the server's "table doesn't exist".
            queue.check_ready().await?;
            tools::run(&queue, tool).await
        }
        Command::CreateJob { .. } => unreachable!("handled above"),
    }
}

async fn process_jobs(
    queue: JobQueue,
    registry: Registry,
    args: ProcessArgs,
    configure: impl FnOnce(Workers) -> Workers,
) -> crate::Result<()> {
    if registry.names().is_empty() {
        return Err(crate::Error::invalid(
            "registry",
            "process:jobs needs your job types: call lightjobs::cli::run(Registry::new()\
             .register::<YourJob>()) from your own binary",
        ));
    }
    let mut workers = Workers::new(queue)
        .registry(registry)
        .queues(args.queues.iter().flat_map(|q| split_queues(q)))
        .concurrency(args.concurrency)
        .stop_when_empty(args.stop_when_empty)
        .shutdown_timeout(Duration::from_secs(args.shutdown_timeout))
        .migrate(args.migrate)
        .on_event(print_event);
    if let Some(max) = args.max_jobs {
        workers = workers.max_jobs(max);
    }
    let seconds = |what: &'static str, s: f64| {
        Duration::try_from_secs_f64(s).map_err(|e| crate::Error::invalid(what, e))
    };
    workers = workers
        .heartbeat(
            seconds("heartbeat", args.heartbeat)?,
            seconds("stale_after", args.stale_after)?,
        )
        .cancel_grace(seconds("cancel_grace", args.cancel_grace)?);
    let handle = configure(workers).start().await?;
    let stopped = handle.run_until_signal();
    println!("Processing jobs. Press Ctrl-C to stop.");
    let report = stopped.await;
    println!(
        "Stopped: {} processed, {} retried, {} failed, {} released.",
        report.processed, report.retried, report.failed, report.released
    );
    Ok(())
}

/// The seed's output lines.
pub fn format_event(event: &JobEvent) -> Option<String> {
    match &event.outcome {
        JobOutcome::Processed => Some(format!("✔ Job processed successfully: {}", event.id)),
        JobOutcome::Failed { error } => Some(format!(
            "✖ Error dispatching job: {} - {}",
            event.id,
            one_line(error)
        )),
        JobOutcome::Retrying { error, delay } => Some(format!(
            "✖ Error dispatching job: {} - {} (attempt {}, retrying in {:.1}s)",
            event.id,
            one_line(error),
            event.attempt,
            delay.as_secs_f64()
        )),
        JobOutcome::Snoozed { delay } => Some(format!(
            "… Job snoozed: {} (runs again in {:.1}s)",
            event.id,
            delay.as_secs_f64()
        )),
        JobOutcome::Throttled { delay } => Some(format!(
            "… Job rate limited: {} (it and its flow key wait {:.1}s)",
            event.id,
            delay.as_secs_f64()
        )),
        JobOutcome::Cancelled => Some(format!("✖ Job cancelled while running: {}", event.id)),
        JobOutcome::Released | JobOutcome::Lost => None,
    }
}

fn print_event(event: &JobEvent) {
    if let Some(line) = format_event(event) {
        println!("{line}");
    }
}

pub(crate) fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// `a,b` → `a`, `b`; `a\,b` → `a,b` (queue names may contain commas); `\\` → `\`.
fn split_queues(list: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut chars = list.chars();
    while let Some(c) = chars.next() {
        match (c, c == '\\') {
            (_, true) => match chars.next() {
                Some(next @ (',' | '\\')) => current.push(next),
                Some(other) => current.extend(['\\', other]),
                None => current.push('\\'),
            },
            (',', _) => out.push(std::mem::take(&mut current)),
            (c, _) => current.push(c),
        }
    }
    out.push(current);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_lines() {
        let mut e = JobEvent {
            id: 123,
            name: "send_mail".into(),
            queue: "default".into(),
            attempt: 3,
            duration: Duration::ZERO,
            outcome: JobOutcome::Processed,
        };
        assert_eq!(
            format_event(&e).unwrap(),
            "✔ Job processed successfully: 123"
        );
        e.outcome = JobOutcome::Failed {
            error: "Recipient email address is missing".into(),
        };
        assert_eq!(
            format_event(&e).unwrap(),
            "✖ Error dispatching job: 123 - Recipient email address is missing"
        );
    }

    #[test]
    fn parses_seed_commands() {
        let cli = Cli::try_parse_from(["x", "process:jobs", "--queue", "a,b", "--stop-when-empty"])
            .unwrap();
        match cli.command {
            Command::ProcessJobs(a) => {
                let queues: Vec<_> = a.queues.iter().flat_map(|q| split_queues(q)).collect();
                assert_eq!(queues, vec!["a", "b"]);
                assert!(a.stop_when_empty);
            }
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["x", "retry"]).is_err());
        assert!(Cli::try_parse_from(["x", "retry", "--all"]).is_ok());
        assert!(Cli::try_parse_from(["x", "list", "--status", "failed"]).is_ok());
        assert!(Cli::try_parse_from(["x", "list", "--status", "lost"]).is_err());
        assert!(Cli::try_parse_from(["x", "pause"]).is_err());
        assert!(Cli::try_parse_from(["x", "discard", "seven"]).is_err());
    }

    #[test]
    fn queue_lists_keep_escaped_commas() {
        assert_eq!(split_queues("a,b"), ["a", "b"]);
        assert_eq!(split_queues(r"reports\,eu,mail"), ["reports,eu", "mail"]);
        assert_eq!(split_queues(r"back\\slash"), [r"back\slash"]);
        assert_eq!(split_queues(r"a\b"), [r"a\b"]);
    }
}
