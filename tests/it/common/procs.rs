//! Worker processes for the fault and cluster tests: the `fault_worker` example built and
//! started, signalled, waited for; and counts read over a fresh connection (the server
//! may be down or just back).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn worker_binary() -> PathBuf {
    example_binary("fault_worker")
}

/// Builds (if needed) and locates one of the test-support examples. With every feature,
/// as `.ci/test` builds the examples before the tests run: a build with other features
/// would compile the crate again in the middle of the tests, and that load starves the
/// tests' tight heartbeats.
pub fn example_binary(name: &str) -> PathBuf {
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--all-features", "--example", name])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building the {name} example failed");
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_lightjobs"));
    bin.parent().unwrap().join("examples").join(name)
}

/// A started process, killed when the test lets go of it while it still runs (a failed
/// assertion must not leave workers running against the next test's database).
pub struct Proc(Child);

impl std::ops::Deref for Proc {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Proc {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl From<Child> for Proc {
    fn from(child: Child) -> Proc {
        Proc(child)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

pub fn start_worker(bin: &PathBuf, url: &str, args: &[&str]) -> Proc {
    spawn_worker(bin, url, None, args, &[])
}

/// A worker with more environment (e.g. `LIGHTJOBS_TEST_POLL_MS`).
pub fn start_worker_env(bin: &PathBuf, url: &str, env: &[(&str, &str)], args: &[&str]) -> Proc {
    spawn_worker(bin, url, None, args, env)
}

/// A worker that records its runs in the audit file `audit` (see `audit::runs_from_file`).
pub fn start_audited(bin: &PathBuf, url: &str, audit: &str, args: &[&str]) -> Proc {
    spawn_worker(bin, url, Some(audit), args, &[])
}

fn spawn_worker(
    bin: &PathBuf,
    url: &str,
    audit: Option<&str>,
    args: &[&str],
    env: &[(&str, &str)],
) -> Proc {
    let mut command = Command::new(bin);
    command
        .envs(env.iter().copied())
        .arg("process:jobs")
        .args(args)
        .env("LIGHTJOBS_DATABASE_URL", url)
        .env_remove("DATABASE_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(audit) = audit {
        command.env("LIGHTJOBS_TEST_AUDIT", audit);
    }
    Proc(command.spawn().expect("fault_worker starts"))
}

pub fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Waits for `child` to exit; kills it and fails the test after `timeout`.
pub async fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("process {} did not exit within {timeout:?}", child.id());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn audit_file(name: &str) -> String {
    let path = std::env::temp_dir().join(format!("lightjobs-audit-{name}-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    path.display().to_string()
}

pub async fn count_on(url: &str, sql: &str) -> Option<u64> {
    use mysql_async::prelude::*;
    let pool = mysql_async::Pool::new(url);
    let n = match pool.get_conn().await {
        Ok(mut c) => c.query_first(sql).await.ok().flatten(),
        Err(_) => None,
    };
    let _ = pool.disconnect().await;
    n
}

pub async fn wait_count(url: &str, sql: &str, n: u64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let got = count_on(url, sql).await;
        if got.is_some_and(|got| got >= n) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {n}: {sql} (have {got:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The fault worker's job, for dispatching from the tests.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Work {
    pub millis: u64,
}

impl lightjobs::Job for Work {
    const NAME: &'static str = "work";
    const MAX_ATTEMPTS: u32 = 5;
    async fn execute(self, _: &lightjobs::JobContext) -> Result<(), lightjobs::JobError> {
        unreachable!("runs in the fault_worker process")
    }
}

/// The demo app (`examples/signup.rs`) on `url`, listening on `addr` (port 0: any); returns
/// it, its port, and what it printed at start.
pub fn start_demo(url: &str, addr: &str) -> (Proc, u16, String) {
    use std::io::BufRead;
    let mut demo: Proc = Command::new(example_binary("signup"))
        .env("LIGHTJOBS_DATABASE_URL", url)
        .env_remove("DATABASE_URL")
        .env("LIGHTJOBS_DEMO_ADDR", addr)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the demo starts")
        .into();
    let stdout = demo.0.stdout.take().expect("piped stdout");
    let (lines_tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let prefix = format!("Signup demo listening on http://{host}:");
    let mut printed = String::new();
    let port: u16 = loop {
        let line = lines
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("the demo printed no address ({e}):\n{printed}"));
        printed.push_str(&line);
        printed.push('\n');
        if let Some(rest) = line.trim().strip_prefix(prefix.as_str()) {
            break rest
                .split_whitespace()
                .next()
                .and_then(|p| p.parse().ok())
                .expect("a port");
        }
    };
    while let Ok(line) = lines.recv_timeout(Duration::from_millis(300)) {
        printed.push_str(&line);
        printed.push('\n');
    }
    (demo, port, printed)
}
