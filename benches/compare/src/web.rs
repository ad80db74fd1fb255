//! The web path: an actix-web app whose handler dispatches a job, under a load generator on
//! loopback (keep-alive HTTP/1.1 connections, one request in flight on each), beside the
//! same app's no-op route and the raw INSERT floor (one row per autocommit INSERT, as many
//! connections as the load has), in one run.
//!
//! The app puts its queue into app data as `configure(lightjobs::init)` does; the benchmark
//! passes the queue itself (`init` takes the one installed process-wide, and each row here
//! needs a queue with its own settings).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpResponse, HttpServer};
use lightjobs::{JobQueue, Workers};
use mysql_async::prelude::Queryable;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::lj::Noop;
use crate::util::{self, AnyResult};

/// The database the web rows use.
pub const DB: &str = "bench_web";

/// What one row measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Route {
    /// `GET /noop`: the app's floor.
    Noop,
    /// `POST /dispatch`, dispatches combined (the default).
    Dispatch,
    /// `POST /dispatch` with `combine_dispatches(false)`: a statement per dispatch.
    DispatchAlone,
    /// `POST /dispatch` with `Workers` (concurrency 100) running in the same process.
    DispatchAndRun,
    /// No HTTP: single-row autocommit INSERTs on as many connections as the load has.
    InsertFloor,
}

impl Route {
    pub const ALL: [Route; 5] = [
        Route::Noop,
        Route::Dispatch,
        Route::DispatchAlone,
        Route::DispatchAndRun,
        Route::InsertFloor,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Route::Noop => "no-op route (`GET /noop`)",
            Route::Dispatch => "dispatch (`POST /dispatch`), combined",
            Route::DispatchAlone => "dispatch, one statement each (`combine_dispatches(false)`)",
            Route::DispatchAndRun => "dispatch, combined, workers running in the same process",
            Route::InsertFloor => "raw INSERT floor (1 row per autocommit INSERT)",
        }
    }
}

/// One measured run of a row.
pub struct WebRun {
    pub route: Route,
    pub per_sec: f64,
    /// Latency quantiles in ms.
    pub p50: f64,
    pub p99: f64,
    /// `DispatchAndRun`: from the last response until every job was processed.
    pub drained_after: Option<Duration>,
}

/// The app on its own thread and actix system.
struct Server {
    addr: SocketAddr,
    handle: actix_web::dev::ServerHandle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(queue: JobQueue, workers: bool) -> AnyResult<Server> {
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let system = actix_rt::System::new();
            let result: AnyResult<()> = system.block_on(async move {
                let running = if workers {
                    Some(
                        Workers::new(queue.clone())
                            .register::<Noop>()
                            .concurrency(100)
                            .start()
                            .await?,
                    )
                } else {
                    None
                };
                let data = web::Data::new(queue);
                let server = HttpServer::new(move || {
                    App::new()
                        .app_data(data.clone())
                        .route(
                            "/noop",
                            web::get().to(|| async { HttpResponse::Ok().body("ok") }),
                        )
                        .route("/dispatch", web::post().to(dispatch))
                })
                .workers(2)
                .bind(("127.0.0.1", 0))?;
                let addr = server.addrs()[0];
                let server = server.run();
                let _ = tx.send((addr, server.handle()));
                server.await?;
                if let Some(running) = running {
                    running.shutdown().await;
                }
                Ok(())
            });
            if let Err(e) = result {
                eprintln!("web: the app failed: {e}");
            }
        });
        let (addr, handle) = rx
            .recv_timeout(Duration::from_secs(30))
            .map_err(|_| "the app did not start")?;
        Ok(Server {
            addr,
            handle,
            thread: Some(thread),
        })
    }

    fn stop(mut self) {
        let handle = self.handle.clone();
        actix_rt::System::new().block_on(handle.stop(true));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn dispatch(queue: web::Data<JobQueue>) -> actix_web::Result<HttpResponse> {
    let id = queue.dispatch(Noop {}).await?;
    Ok(HttpResponse::Accepted().body(id.to_string()))
}

/// One keep-alive connection sending `n` requests, one at a time; the latency of each.
async fn client(addr: SocketAddr, request: &'static [u8], n: usize) -> AnyResult<Vec<f64>> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(1024);
    let mut latencies = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        stream.write_all(request).await?;
        read_response(&mut stream, &mut buf).await?;
        latencies.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(latencies)
}

/// Reads one response (headers and a `Content-Length` body); fails on a status other than
/// 2xx.
async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> AnyResult<()> {
    buf.clear();
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end])?;
            let status = head.split(' ').nth(1).unwrap_or("");
            if !status.starts_with('2') {
                return Err(format!("HTTP status {status}: {head}").into());
            }
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                return Ok(());
            }
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err("the app closed the connection".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// `requests` requests over `connections` connections; (requests/s, latencies sorted).
async fn load(
    addr: SocketAddr,
    request: &'static [u8],
    connections: usize,
    requests: usize,
) -> AnyResult<(f64, Vec<f64>)> {
    let per = requests / connections;
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..connections)
        .map(|_| tokio::spawn(client(addr, request, per)))
        .collect();
    let mut all = Vec::with_capacity(per * connections);
    for task in tasks {
        all.extend(task.await??);
    }
    let secs = t0.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    Ok(((per * connections) as f64 / secs, all))
}

/// The raw floor: single-row autocommit INSERTs on `connections` connections.
async fn insert_floor(url: &str, connections: usize, rows: usize) -> AnyResult<(f64, Vec<f64>)> {
    let per = rows / connections;
    let mut conns = Vec::with_capacity(connections);
    for _ in 0..connections {
        conns.push(util::connect(url).await?);
    }
    let t0 = Instant::now();
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|mut conn| {
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(per);
                for _ in 0..per {
                    let t = Instant::now();
                    conn.exec_drop(
                        "INSERT INTO jobs (name, payload, status, queue, priority, max_attempts, \
                         scheduled_at, created_at) VALUES ('noop', '{}', 'pending', 'default', \
                         0, 3, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6))",
                        (),
                    )
                    .await?;
                    latencies.push(t.elapsed().as_secs_f64() * 1e3);
                }
                conn.disconnect().await?;
                AnyResult::Ok(latencies)
            })
        })
        .collect();
    let mut all = Vec::with_capacity(rows);
    for task in tasks {
        all.extend(task.await??);
    }
    let secs = t0.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    Ok(((per * connections) as f64 / secs, all))
}

/// Serves the app on a fresh database until killed, for an outside load generator (`ab`,
/// `wrk`): prints its address, then `GET /noop` and `POST /dispatch` as in the rows.
pub fn serve(server: &str, combine: bool, workers: bool) -> AnyResult<()> {
    let url = util::db_url(server, DB);
    actix_rt::System::new().block_on(async {
        util::recreate_database(server, DB).await?;
        JobQueue::connect(&url)?.migrate().await?;
        AnyResult::Ok(())
    })?;
    let queue = JobQueue::builder(url.as_str())
        .combine_dispatches(combine)
        .build()?;
    let app = Server::start(queue, workers)?;
    println!("http://{}", app.addr);
    if let Some(thread) = app.thread {
        let _ = thread.join();
    }
    Ok(())
}

/// Measures one run of `route` on a fresh database.
pub fn run_once(
    server: &str,
    route: Route,
    connections: usize,
    requests: usize,
    actix: &actix_rt::SystemRunner,
) -> AnyResult<WebRun> {
    let url = util::db_url(server, DB);
    actix.block_on(async {
        util::recreate_database(server, DB).await?;
        let queue = JobQueue::connect(&url)?;
        queue.migrate().await?;
        AnyResult::Ok(())
    })?;
    // The load generator on one thread of its own, as `ab` would be.
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (per_sec, latencies, drained_after) = if route == Route::InsertFloor {
        let (per_sec, latencies) = client_rt.block_on(insert_floor(&url, connections, requests))?;
        (per_sec, latencies, None)
    } else {
        let queue = JobQueue::builder(url.as_str())
            .combine_dispatches(route != Route::DispatchAlone)
            .build()?;
        let app = Server::start(queue, route == Route::DispatchAndRun)?;
        let request: &'static [u8] = if route == Route::Noop {
            b"GET /noop HTTP/1.1\r\nHost: bench\r\n\r\n"
        } else {
            b"POST /dispatch HTTP/1.1\r\nHost: bench\r\nContent-Length: 0\r\n\r\n"
        };
        // Warm-up: connections, prepared statements, the app's first requests.
        client_rt.block_on(load(app.addr, request, connections, connections * 20))?;
        let (per_sec, latencies) =
            client_rt.block_on(load(app.addr, request, connections, requests))?;
        let last_response = Instant::now();
        let mut drained_after = None;
        if route == Route::DispatchAndRun {
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let left = actix.block_on(util::count(
                    server,
                    DB,
                    "jobs",
                    "status NOT IN ('processed')",
                ))?;
                if left == 0 {
                    drained_after = Some(last_response.elapsed());
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!("{left} jobs not processed 120 s after the load").into());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        app.stop();
        (per_sec, latencies, drained_after)
    };
    if route != Route::Noop {
        let rows = actix.block_on(util::count(server, DB, "jobs", "1 = 1"))?;
        let warm = if route == Route::InsertFloor {
            0
        } else {
            connections * 20
        };
        let expected = (requests / connections * connections + warm) as u64;
        if rows != expected {
            return Err(format!("{}: {rows} rows for {expected} requests", route.label()).into());
        }
    }
    Ok(WebRun {
        route,
        per_sec,
        p50: util::quantile(&latencies, 0.5),
        p99: util::quantile(&latencies, 0.99),
        drained_after,
    })
}
