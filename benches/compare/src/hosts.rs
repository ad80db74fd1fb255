//! Worker processes on many hosts against one MariaDB. Each worker process runs in a
//! network namespace of its own, joined to the server's namespace by a veth pair, so every
//! statement crosses two network stacks as it would between machines (with `tc netem`
//! delay on both ends when the kernel has it). The server is a private `mariadbd` in its
//! own namespace. For 1, 2, 4, 8 processes, lightjobs (one `Workers` per process) and the
//! raw floor (one claiming connection per process) drain the same backlog, with the
//! server's CPU time and status counters read around every run.
//!
//! Needs root and `ip` (iproute2); only addresses of the namespaces it makes are used.

use std::io::{BufRead, BufReader, Write as _};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use lightjobs::{JobQueue, Workers};
use mysql_async::prelude::Queryable;
use serde::{Deserialize, Serialize};

use crate::lj;
use crate::raw::{self, Strategy};
use crate::util::{self, AnyResult};

/// Names of the namespaces and links this part makes (and removes).
const PREFIX: &str = "ljb";
/// The database the runs use on the private server.
const DB: &str = "bench_hosts";

/// What the part is asked to do.
pub struct HostsOpts {
    pub processes: Vec<usize>,
    pub jobs: usize,
    pub runs: usize,
    pub concurrency: usize,
    /// One-way delay added on each veth end, in µs (0: none).
    pub delay_us: u64,
}

/// Which side a worker process runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Side {
    Lightjobs,
    Raw,
}

impl Side {
    pub fn label(self) -> &'static str {
        match self {
            Side::Lightjobs => "lightjobs",
            Side::Raw => "raw floor",
        }
    }
}

/// What a worker process reports when its drain ends.
#[derive(Serialize, Deserialize)]
pub struct ChildReport {
    pub jobs: u64,
    pub cpu_secs: f64,
    /// Seconds from `go` until the process was claiming: `Workers::start` (0 for the raw
    /// floor, which is connected before `go`).
    #[serde(default)]
    pub start_secs: f64,
}

/// One drain with `processes` worker processes.
pub struct HostRun {
    pub processes: usize,
    pub side: Side,
    pub secs: f64,
    /// CPU seconds the server used during the drain.
    pub server_cpu: f64,
    /// CPU seconds the worker processes used, all together.
    pub workers_cpu: f64,
    /// Server status counters over the drain.
    pub questions: u64,
    pub lock_waits: u64,
    /// Index entries the server read (`Handler_read_key` + `Handler_read_next`): what
    /// claimers stepping over each other's locked rows costs.
    pub rows_read: u64,
    /// Jobs/s between the 10th and the 90th percentile of `finished_at`: the fleet once it
    /// runs, without its processes' start nor the stragglers' tail.
    pub steady: f64,
    /// The slowest process's `start_secs`.
    pub start_secs: f64,
}

/// The rate at which the middle 80% of the jobs finished, from their `finished_at`.
async fn steady_rate(server: &str, jobs: usize) -> AnyResult<f64> {
    let mut conn = util::connect(&util::db_url(server, DB)).await?;
    let (lo, hi) = (jobs / 10, jobs * 9 / 10);
    let secs: Option<f64> = conn
        .query_first(format!(
            "SELECT TIMESTAMPDIFF(MICROSECOND, \
               (SELECT finished_at FROM jobs WHERE status = 'processed' \
                ORDER BY finished_at LIMIT 1 OFFSET {lo}), \
               (SELECT finished_at FROM jobs WHERE status = 'processed' \
                ORDER BY finished_at LIMIT 1 OFFSET {hi})) / 1e6"
        ))
        .await?;
    conn.disconnect().await?;
    let secs = secs.ok_or("no finished_at to measure")?;
    Ok((hi - lo) as f64 / secs.max(1e-6))
}

/// The namespaces: `ljb-db` (the server, 10.78.0.1 towards this process, 10.78.i.1 towards
/// host i) and `ljb-h1` … (host i at 10.78.i.2). Removed on drop.
struct Net {
    hosts: usize,
}

fn ip(args: &[&str]) -> AnyResult<()> {
    let out = Command::new("ip").args(args).output()?;
    if !out.status.success() {
        return Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    Ok(())
}

fn ns_of_host(i: usize) -> String {
    format!("{PREFIX}-h{i}")
}

fn ns_of_server() -> String {
    format!("{PREFIX}-db")
}

impl Net {
    fn up(hosts: usize, delay_us: u64) -> AnyResult<Net> {
        Net::remove(8.max(hosts));
        let net = Net { hosts };
        let db = ns_of_server();
        ip(&["netns", "add", &db])?;
        ip(&["-n", &db, "link", "set", "lo", "up"])?;
        // This process's own way in, without added delay: loading and counting.
        let (r0, d0) = (format!("{PREFIX}-r0"), format!("{PREFIX}-d0"));
        ip(&[
            "link", "add", &r0, "type", "veth", "peer", "name", &d0, "netns", &db,
        ])?;
        ip(&["addr", "add", "10.78.0.2/30", "dev", &r0])?;
        ip(&["link", "set", &r0, "up"])?;
        ip(&["-n", &db, "addr", "add", "10.78.0.1/30", "dev", &d0])?;
        ip(&["-n", &db, "link", "set", &d0, "up"])?;
        for i in 1..=hosts {
            let ns = ns_of_host(i);
            let (e, d) = (format!("{PREFIX}-e{i}"), format!("{PREFIX}-d{i}"));
            ip(&["netns", "add", &ns])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&[
                "link", "add", &e, "netns", &ns, "type", "veth", "peer", "name", &d, "netns", &db,
            ])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("10.78.{i}.2/30"),
                "dev",
                &e,
            ])?;
            ip(&["-n", &ns, "link", "set", &e, "up"])?;
            ip(&[
                "-n",
                &db,
                "addr",
                "add",
                &format!("10.78.{i}.1/30"),
                "dev",
                &d,
            ])?;
            ip(&["-n", &db, "link", "set", &d, "up"])?;
            if delay_us > 0 {
                for (space, link) in [(&ns, &e), (&db, &d)] {
                    let out = Command::new("ip")
                        .args(["netns", "exec", space, "tc", "qdisc", "add", "dev", link])
                        .args(["root", "netem", "delay", &format!("{delay_us}us")])
                        .output()?;
                    if !out.status.success() {
                        return Err(format!(
                            "tc netem on {link}: {} (this kernel may lack sch_netem; \
                             run with --host-delay-us 0)",
                            String::from_utf8_lossy(&out.stderr).trim()
                        )
                        .into());
                    }
                }
            }
        }
        Ok(net)
    }

    /// Removes what an earlier run may have left (deleting a namespace deletes its links).
    fn remove(hosts: usize) {
        for i in 1..=hosts {
            let _ = ip(&["netns", "del", &ns_of_host(i)]);
        }
        let _ = ip(&["netns", "del", &ns_of_server()]);
        let _ = ip(&["link", "del", &format!("{PREFIX}-r0")]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        Net::remove(self.hosts);
    }
}

/// A private `mariadbd` inside the server namespace, listening on its addresses only.
struct Server {
    dir: PathBuf,
    child: Child,
}

fn find(bin: &str) -> String {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"] {
        let p = format!("{dir}/{bin}");
        if std::path::Path::new(&p).exists() {
            return p;
        }
    }
    bin.to_owned()
}

impl Server {
    fn start() -> AnyResult<Server> {
        let dir = std::env::temp_dir().join(format!("lightjobs-hosts-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let data = dir.join("data");
        let out = Command::new(find("mariadb-install-db"))
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .args([
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--user=root",
            ])
            .output()?;
        if !out.status.success() {
            return Err(format!(
                "mariadb-install-db: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )
            .into());
        }
        let sock = dir.join("sock");
        let child = Command::new("ip")
            .args(["netns", "exec", &ns_of_server(), &find("mariadbd")])
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", sock.display()))
            .arg(format!("--pid-file={}", dir.join("pid").display()))
            .args([
                "--port=3306",
                // Every address of the server's namespace, which only this benchmark's
                // namespaces reach.
                "--bind-address=0.0.0.0",
                "--user=root",
                "--skip-log-bin",
                "--skip-name-resolve",
                "--innodb-buffer-pool-size=256M",
                "--max-connections=1000",
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("err.log"))?)
            .spawn()?;
        let server = Server { dir, child };
        // The user the worker processes log in as, from their own addresses.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = Command::new(find("mariadb"))
                .arg("--no-defaults")
                .arg(format!("--socket={}", sock.display()))
                .args([
                    "-uroot",
                    "-e",
                    "CREATE USER IF NOT EXISTS bench@'%'; GRANT ALL ON *.* TO bench@'%'",
                ])
                .output()?;
            if out.status.success() {
                return Ok(server);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the private server did not start (see {})",
                    server.dir.join("err.log").display()
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// CPU seconds the server has used so far. `ip netns exec` execs `mariadbd` in place,
    /// so the child's pid is the server's.
    fn cpu_secs(&self) -> AnyResult<f64> {
        util::cpu_secs(&self.child.id().to_string()).ok_or_else(|| "server CPU unreadable".into())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `SHOW GLOBAL STATUS` counters read around a run.
async fn counters(server: &str) -> AnyResult<[u64; 3]> {
    let mut conn = util::connect(&util::db_url(server, "mysql")).await?;
    let rows: Vec<(String, String)> = conn
        .query(
            "SHOW GLOBAL STATUS WHERE Variable_name IN \
             ('Questions', 'Innodb_row_lock_waits', 'Handler_read_next', 'Handler_read_key')",
        )
        .await?;
    conn.disconnect().await?;
    let get = |name: &str| {
        rows.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0)
    };
    Ok([
        get("Questions"),
        get("Innodb_row_lock_waits"),
        get("Handler_read_next") + get("Handler_read_key"),
    ])
}

/// Runs every configuration, the runs of both sides interleaved.
/// Returns the runs and the server's version.
pub fn run(opts: &HostsOpts, actix: &actix_rt::SystemRunner) -> AnyResult<(Vec<HostRun>, String)> {
    let most = opts.processes.iter().copied().max().unwrap_or(1);
    let _net = Net::up(most, opts.delay_us)?;
    let server = Server::start()?;
    let admin = "mysql://bench@10.78.0.1:3306";
    let exe = std::env::current_exe()?;
    let version = actix.block_on(util::server_version(admin))?;
    let mut results = Vec::new();
    for run in 1..=opts.runs {
        for &n in &opts.processes {
            for side in [Side::Lightjobs, Side::Raw] {
                eprintln!(
                    "hosts: run {run}/{}: {n} processes, {}",
                    opts.runs,
                    side.label()
                );
                actix.block_on(async {
                    let queue = lj::fresh_queue(admin, DB).await?;
                    lj::load_backlog(&queue, opts.jobs).await?;
                    AnyResult::Ok(())
                })?;
                let before = actix.block_on(counters(admin))?;
                let cpu_before = server.cpu_secs()?;
                let (secs, reports) = drain(&exe, side, n, opts.concurrency)?;
                let cpu_after = server.cpu_secs()?;
                let after = actix.block_on(counters(admin))?;
                let done =
                    actix.block_on(util::count(admin, DB, "jobs", "status = 'processed'"))?;
                let reported: u64 = reports.iter().map(|r| r.jobs).sum();
                if done != opts.jobs as u64 || reported != opts.jobs as u64 {
                    return Err(format!(
                        "{} with {n} processes drained {done} of {} jobs (processes counted \
                         {reported})",
                        side.label(),
                        opts.jobs
                    )
                    .into());
                }
                results.push(HostRun {
                    processes: n,
                    side,
                    secs,
                    server_cpu: cpu_after - cpu_before,
                    workers_cpu: reports.iter().map(|r| r.cpu_secs).sum(),
                    questions: after[0] - before[0],
                    lock_waits: after[1] - before[1],
                    rows_read: after[2] - before[2],
                    steady: actix.block_on(steady_rate(admin, opts.jobs))?,
                    start_secs: reports.iter().map(|r| r.start_secs).fold(0.0, f64::max),
                });
            }
        }
    }
    Ok((results, version))
}

/// Starts `n` worker processes, one per host namespace; once every one is connected and
/// ready, tells them all to go and times until the last one has drained.
fn drain(
    exe: &std::path::Path,
    side: Side,
    n: usize,
    concurrency: usize,
) -> AnyResult<(f64, Vec<ChildReport>)> {
    let mut children: Vec<(Child, BufReader<ChildStdout>)> = Vec::with_capacity(n);
    for i in 1..=n {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns_of_host(i)])
            .arg(exe)
            .args(["host-child", "--side", &format!("{side:?}").to_lowercase()])
            .args(["--url", &format!("mysql://bench@10.78.{i}.1:3306/{DB}")])
            .args(["--concurrency", &concurrency.to_string()])
            .args(["--name", &format!("host{i}")])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let out = child.stdout.take().ok_or("no stdout")?;
        children.push((child, BufReader::new(out)));
    }
    for (_, out) in &mut children {
        let mut line = String::new();
        out.read_line(&mut line)?;
        if line.trim() != "ready" {
            return Err(format!("a worker process did not get ready: {line:?}").into());
        }
    }
    let t0 = Instant::now();
    for (child, _) in &mut children {
        child.stdin.as_mut().ok_or("no stdin")?.write_all(b"go\n")?;
    }
    let mut reports = Vec::with_capacity(n);
    for (_, out) in &mut children {
        let mut line = String::new();
        out.read_line(&mut line)?;
        reports.push(
            serde_json::from_str::<ChildReport>(line.trim())
                .map_err(|e| format!("a worker process's report {line:?}: {e}"))?,
        );
    }
    let secs = t0.elapsed().as_secs_f64();
    for (mut child, _) in children {
        let status = child.wait()?;
        if !status.success() {
            return Err(format!("a worker process exited with {status}").into());
        }
    }
    Ok((secs, reports))
}

/// The worker process: connects, says `ready`, waits for `go` on stdin, drains, and prints
/// its report as one JSON line.
pub fn child(side: Side, url: &str, concurrency: usize, name: &str) -> AnyResult<()> {
    let wait_for_go = || -> AnyResult<()> {
        println!("ready");
        std::io::stdout().flush()?;
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        Ok(())
    };
    let mut start_secs = 0.0;
    let jobs = match side {
        Side::Lightjobs => actix_rt::System::new().block_on(async {
            let queue = JobQueue::connect(url)?;
            queue.check_ready().await?;
            wait_for_go()?;
            let go = Instant::now();
            let workers = Workers::new(queue)
                .register::<lj::Noop>()
                .concurrency(concurrency)
                .stop_when_empty(true)
                .start()
                .await?;
            start_secs = go.elapsed().as_secs_f64();
            AnyResult::Ok(workers.wait().await.processed)
        })?,
        Side::Raw => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(async {
                let conn = raw::session(url).await?;
                wait_for_go()?;
                raw::claim_all(conn, Strategy::RawFloor, name.to_owned()).await
            })?,
    };
    let report = ChildReport {
        jobs,
        cpu_secs: util::cpu_secs("self").unwrap_or(0.0),
        start_secs,
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
