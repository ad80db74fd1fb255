//! A loopback TCP proxy that understands just enough of the MySQL wire protocol to inject
//! faults between a client (mysql_async) and a real server.
//!
//! Why: the failures a job queue must survive happen on the wire: a COMMIT that reached the
//! server but whose OK never came back (outcome in doubt), a statement that never arrived,
//! a slow network, an outage. A real server behind this proxy reproduces them on demand,
//! deterministically, without killing or slowing the server itself.
//!
//! Why std::net and threads rather than tokio: the test crates' tokio has no `net` feature,
//! and a proxy on threads of its own keeps forwarding while the test's current-thread runtime
//! is busy or blocked.
//!
//! Clients must connect with `prefer_socket=false`: otherwise mysql_async reads `@@socket`
//! after connecting and, when the server names one that exists locally, silently reconnects
//! over that Unix socket, around the proxy. [`FaultProxy::url`] and
//! [`FaultProxy::rewrite_url`] add it.
//!
//! Rules are shared by all connections and match any command whose text contains the
//! pattern, including mysql_async's own (`SELECT @@max_allowed_packet,@@wait_timeout` on
//! every new connection): pick patterns that only the statement under test contains.
//!
//! Limits: no TLS and no compression (mysql_async's defaults); only the first 16 MiB packet
//! of a command is matched; commands are assumed not to be pipelined (mysql_async waits for
//! each reply), which is what lets a prepare's reply be paired with its statement text.

use std::collections::HashMap;
use std::io::{self, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

const COM_QUERY: u8 = 0x03;
const COM_CHANGE_USER: u8 = 0x11;
const COM_STMT_PREPARE: u8 = 0x16;
const COM_STMT_EXECUTE: u8 = 0x17;
const COM_STMT_CLOSE: u8 = 0x19;
const COM_RESET_CONNECTION: u8 = 0x1f;
/// A payload of exactly this size continues in the next packet.
const MAX_PAYLOAD: usize = 0xff_ffff;
const CLIENT_DEPRECATE_EOF: u32 = 1 << 24;
const SERVER_MORE_RESULTS_EXISTS: u16 = 0x0008;
/// How long a reply marked for dropping may take to end before the connection is cut anyway,
/// so that a reply the parser misreads cannot hang a test.
const REPLY_GRACE: Duration = Duration::from_secs(10);

/// The proxy. Listens on 127.0.0.1 on a port of its own; dropping it stops the listener and
/// closes every connection it carries.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    listener: Option<JoinHandle<()>>,
}

#[derive(Clone, Copy)]
enum Fault {
    DropReply,
    Cut,
    Stall(Duration),
}

struct Rule {
    pattern: String,
    fault: Fault,
    left: usize,
}

#[derive(Default)]
struct State {
    rules: Vec<Rule>,
    /// Patterns counted as commands pass, with their counts.
    counters: Vec<(String, usize)>,
    links: HashMap<u64, Arc<Link>>,
    next_id: u64,
    down: bool,
    stopped: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    fired: AtomicUsize,
    /// While set, nothing is forwarded either way and nothing is closed: a black hole.
    held: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Uses up one shot of the first armed rule whose pattern `sql` contains (and counts
    /// `sql` for every counter whose pattern it contains).
    fn take(&self, sql: &str) -> Option<Fault> {
        let mut st = self.lock();
        for (pattern, n) in &mut st.counters {
            if sql.contains(pattern.as_str()) {
                *n += 1;
            }
        }
        let i = st
            .rules
            .iter()
            .position(|r| sql.contains(r.pattern.as_str()))?;
        let fault = st.rules[i].fault;
        st.rules[i].left -= 1;
        if st.rules[i].left == 0 {
            st.rules.remove(i);
        }
        Some(fault)
    }

    fn fire(&self) {
        self.fired.fetch_add(1, Ordering::SeqCst);
    }

    /// Blocks while the proxy holds its traffic (unless the link is closed meanwhile).
    fn wait_while_held(&self, link: &Link) {
        while self.held.load(Ordering::SeqCst) && !link.closed.load(Ordering::SeqCst) {
            thread::sleep(Duration::from_millis(5));
        }
    }
}

/// One client connection and its upstream twin. `&TcpStream` reads and writes, so the two
/// forwarding threads and `close` all work on these same sockets.
struct Link {
    client: TcpStream,
    server: TcpStream,
    closed: AtomicBool,
    st: Mutex<LinkState>,
}

#[derive(Default)]
struct LinkState {
    /// Statement id -> SQL text, from the server's replies to COM_STMT_PREPARE.
    stmts: HashMap<u32, String>,
    /// Text of a COM_STMT_PREPARE sent, whose reply has not been seen yet.
    preparing: Option<String>,
    handshake_seen: bool,
    deprecate_eof: bool,
    /// Set while the reply to the current command is being swallowed.
    dropping: Option<Reply>,
}

impl Link {
    fn lock(&self) -> MutexGuard<'_, LinkState> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Closes both sides; shutdown also wakes the threads blocked reading them.
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let _ = self.client.shutdown(Shutdown::Both);
        let _ = self.server.shutdown(Shutdown::Both);
    }
}

impl FaultProxy {
    /// Starts a proxy to `upstream` (e.g. `127.0.0.1:3306`) on a thread of its own.
    pub fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fault proxy");
        let addr = listener.local_addr().expect("fault proxy address");
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        let listener = thread::Builder::new()
            .name("fault-proxy".into())
            .spawn(move || accept_loop(listener, upstream, s))
            .expect("spawn the fault proxy");
        FaultProxy {
            addr,
            shared,
            listener: Some(listener),
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `mysql://root@127.0.0.1:{port}/{db}?prefer_socket=false`.
    pub fn url(&self, db: &str) -> String {
        format!(
            "mysql://root@127.0.0.1:{}/{db}?prefer_socket=false",
            self.port()
        )
    }

    /// `url` with its host:port replaced by the proxy's (user, password, database and other
    /// parameters kept) and `prefer_socket=false` added, so the client cannot bypass the proxy.
    pub fn rewrite_url(&self, url: &str) -> String {
        let start = url.find("://").map_or(0, |i| i + 3);
        let end = url[start..]
            .find(['/', '?'])
            .map_or(url.len(), |i| start + i);
        let host = url[start..end].rfind('@').map_or(start, |i| start + i + 1);
        let mut out = format!("{}127.0.0.1:{}", &url[..host], self.port());
        let rest = &url[end..];
        if !rest.starts_with('/') {
            out.push('/');
        }
        out.push_str(rest);
        if !out.contains("prefer_socket=") {
            out.push(if out.contains('?') { '&' } else { '?' });
            out.push_str("prefer_socket=false");
        }
        out
    }

    /// The next `times` commands whose SQL contains `pattern` reach the server and run there,
    /// but their reply is swallowed and the connection cut once it is complete: the client sees
    /// a broken connection for a statement that did happen (outcome in doubt). For prepared
    /// statements this fires on COM_STMT_EXECUTE, matched on the prepared text.
    pub fn drop_reply_after(&self, pattern: &str, times: usize) {
        self.arm(pattern, Fault::DropReply, times);
    }

    /// The next `times` matching commands are not forwarded; the connection is cut instead:
    /// the statement never reaches the server.
    pub fn cut_before(&self, pattern: &str, times: usize) {
        self.arm(pattern, Fault::Cut, times);
    }

    /// The next `times` matching commands are held for `duration` before being forwarded.
    pub fn stall(&self, pattern: &str, duration: Duration, times: usize) {
        self.arm(pattern, Fault::Stall(duration), times);
    }

    /// Removes every armed rule that has not fired yet.
    pub fn disarm(&self) {
        self.shared.lock().rules.clear();
    }

    /// While down, new connections are closed at once and existing ones are cut: an outage as
    /// the client sees it, while the server is fine.
    pub fn set_down(&self, down: bool) {
        let mut st = self.shared.lock();
        st.down = down;
        if down {
            st.links.values().for_each(|l| l.close());
        }
    }

    /// While on, the proxy stops forwarding in both directions without closing anything, and
    /// new connections are accepted but get no greeting: what a dropped route, a stopped VM
    /// or a firewall that drops packets look like (no RST, no FIN, no error). Turned off,
    /// what was held is delivered, late, as TCP would once the path is back (a statement
    /// its client gave up on may still run then).
    pub fn hold(&self, on: bool) {
        self.shared.held.store(on, Ordering::SeqCst);
    }

    /// From now on counts the commands whose SQL contains `pattern` (see [`counted`]).
    ///
    /// [`counted`]: FaultProxy::counted
    pub fn count(&self, pattern: &str) {
        self.shared.lock().counters.push((pattern.to_owned(), 0));
    }

    /// How many commands containing `pattern` passed since [`count`](FaultProxy::count).
    pub fn counted(&self, pattern: &str) -> usize {
        let st = self.shared.lock();
        st.counters
            .iter()
            .filter(|(p, _)| p == pattern)
            .map(|(_, n)| *n)
            .sum()
    }

    /// How many faults have fired so far (a dropped reply counts when its connection is cut).
    pub fn fired(&self) -> usize {
        self.shared.fired.load(Ordering::SeqCst)
    }

    fn arm(&self, pattern: &str, fault: Fault, times: usize) {
        if times > 0 {
            let rule = Rule {
                pattern: pattern.to_owned(),
                fault,
                left: times,
            };
            self.shared.lock().rules.push(rule);
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        {
            let mut st = self.shared.lock();
            st.stopped = true;
            st.links.values().for_each(|l| l.close());
        }
        // Wake the blocking accept so the listener sees `stopped`.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(listener) = self.listener.take() {
            let _ = listener.join();
        }
    }
}

fn accept_loop(listener: TcpListener, upstream: SocketAddr, shared: Arc<Shared>) {
    for client in listener.incoming() {
        if shared.lock().stopped {
            return;
        }
        match client {
            Ok(client) => {
                let shared = shared.clone();
                let _ = thread::Builder::new()
                    .name("fault-proxy-conn".into())
                    .spawn(move || serve(client, upstream, shared));
            }
            // E.g. out of file descriptors: back off instead of spinning.
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Carries one connection: client->server on this thread, server->client on another.
fn serve(client: TcpStream, upstream: SocketAddr, shared: Arc<Shared>) {
    if shared.lock().down {
        return; // dropping `client` closes it
    }
    let Ok(server) = TcpStream::connect_timeout(&upstream, Duration::from_secs(5)) else {
        return;
    };
    let _ = (client.set_nodelay(true), server.set_nodelay(true));
    let link = Arc::new(Link {
        client,
        server,
        closed: AtomicBool::new(false),
        st: Mutex::default(),
    });
    let id = {
        let mut st = shared.lock();
        if st.down || st.stopped {
            return;
        }
        st.next_id += 1;
        let id = st.next_id;
        st.links.insert(id, link.clone());
        id
    };
    let back = {
        let (link, shared) = (link.clone(), shared.clone());
        thread::Builder::new()
            .name("fault-proxy-conn".into())
            .spawn(move || {
                let _ = server_to_client(&link, &shared);
                link.close();
            })
    };
    if back.is_ok() {
        let _ = client_to_server(&link, &shared);
    }
    link.close();
    if let Ok(back) = back {
        let _ = back.join();
    }
    shared.lock().links.remove(&id);
}

fn client_to_server(link: &Link, shared: &Shared) -> io::Result<()> {
    let mut from = BufReader::with_capacity(64 * 1024, &link.client);
    let mut continued = false;
    loop {
        let frame = read_frame(&mut from)?;
        let payload = &frame[4..];
        if !continued {
            let mut st = link.lock();
            if !st.handshake_seen {
                // The handshake response starts with the client's capability flags.
                st.handshake_seen = true;
                st.deprecate_eof =
                    u32_at(payload, 0).is_some_and(|c| c & CLIENT_DEPRECATE_EOF != 0);
            }
        }
        // Every command starts at sequence id 0; anything else (auth exchange,
        // continuation packets) is forwarded untouched.
        let fault = if frame[3] == 0 && !continued {
            inspect(link, shared, payload)
        } else {
            None
        };
        match fault {
            Some(Fault::Cut) => {
                shared.fire();
                return Ok(());
            }
            Some(Fault::Stall(duration)) => {
                shared.fire();
                let end = Instant::now() + duration;
                while !link.closed.load(Ordering::SeqCst) {
                    let left = end.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    thread::sleep(left.min(Duration::from_millis(10)));
                }
            }
            Some(Fault::DropReply) | None => {}
        }
        continued = payload.len() == MAX_PAYLOAD;
        shared.wait_while_held(link);
        (&link.server).write_all(&frame)?;
    }
}

/// Tracks prepared statements and returns the fault, if any, that `command` triggers.
fn inspect(link: &Link, shared: &Shared, command: &[u8]) -> Option<Fault> {
    let (&cmd, rest) = command.split_first()?;
    let id = u32_at(rest, 0);
    let mut st = link.lock();
    let sql = match cmd {
        COM_QUERY => String::from_utf8_lossy(rest).into_owned(),
        COM_STMT_EXECUTE => st.stmts.get(&id?)?.clone(),
        COM_STMT_PREPARE => {
            st.preparing = Some(String::from_utf8_lossy(rest).into_owned());
            return None;
        }
        COM_STMT_CLOSE => {
            st.stmts.remove(&id?);
            return None;
        }
        COM_RESET_CONNECTION | COM_CHANGE_USER => {
            st.stmts.clear();
            return None;
        }
        _ => return None,
    };
    drop(st);
    let fault = shared.take(&sql)?;
    if let Fault::DropReply = fault {
        // Armed before the command is forwarded, so the reply cannot slip through.
        link.lock().dropping = Some(Reply::Start);
    }
    Some(fault)
}

fn server_to_client(link: &Link, shared: &Shared) -> io::Result<()> {
    let mut from = BufReader::with_capacity(64 * 1024, &link.server);
    let mut continued = false;
    loop {
        let frame = match read_frame(&mut from) {
            Ok(frame) => frame,
            Err(e) => {
                use io::ErrorKind::{TimedOut, WouldBlock};
                if matches!(e.kind(), WouldBlock | TimedOut) && link.lock().dropping.is_some() {
                    shared.fire(); // the reply never ended: cut anyway
                }
                return Err(e);
            }
        };
        let payload = &frame[4..];
        let part = continued;
        continued = payload.len() == MAX_PAYLOAD;
        let mut st = link.lock();
        if !part {
            if let Some(sql) = st.preparing.take() {
                // COM_STMT_PREPARE_OK: 0x00, then the 4-byte statement id.
                if let (Some(0), Some(id)) = (payload.first(), u32_at(payload, 1)) {
                    st.stmts.insert(id, sql);
                }
            }
        }
        if let Some(reply) = st.dropping {
            let next = if part {
                reply
            } else {
                reply.next(payload, st.deprecate_eof)
            };
            if next == Reply::Done {
                // The whole reply was read, so every statement of the command has run.
                shared.fire();
                return Ok(());
            }
            st.dropping = Some(next);
            drop(st);
            link.server.set_read_timeout(Some(REPLY_GRACE))?;
            continue;
        }
        drop(st);
        shared.wait_while_held(link);
        (&link.client).write_all(&frame)?;
    }
}

/// Reads one packet: 3-byte little-endian payload length, sequence id, payload.
fn read_frame(from: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut frame = vec![0u8; 4];
    from.read_exact(&mut frame)?;
    let len = usize::from(frame[0]) | usize::from(frame[1]) << 8 | usize::from(frame[2]) << 16;
    frame.resize(4 + len, 0);
    from.read_exact(&mut frame[4..])?;
    Ok(frame)
}

/// Where a reply to COM_QUERY / COM_STMT_EXECUTE stands: a chain of results (OK, or result
/// set: column count, definitions, [EOF], rows, EOF/OK), linked by SERVER_MORE_RESULTS_EXISTS.
/// Why not stop at the first byte: MariaDB sends each statement's result of a multi-statement
/// as soon as that statement ends, before running the next one (the OK of START TRANSACTION
/// leaves before the COMMIT has run), so only the end of the reply proves the whole command ran.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reply {
    Start,
    /// Packets left before the rows: column definitions, plus the EOF after them if any.
    Columns(u64),
    Rows,
    Done,
}

impl Reply {
    fn next(self, p: &[u8], deprecate_eof: bool) -> Reply {
        let more = |status: Option<u16>| match status {
            Some(s) if s & SERVER_MORE_RESULTS_EXISTS != 0 => Reply::Start,
            _ => Reply::Done,
        };
        match self {
            Reply::Start => match p.first() {
                Some(0x00) => more(ok_status(p)),
                None | Some(0xfb) | Some(0xff) => Reply::Done, // LOCAL INFILE is not followed
                Some(_) => match lenenc(p) {
                    Some((n, _)) if n > 0 => Reply::Columns(n + u64::from(!deprecate_eof)),
                    _ => Reply::Done,
                },
            },
            Reply::Columns(n) if n > 1 => Reply::Columns(n - 1),
            Reply::Columns(_) => Reply::Rows,
            // A row never starts with 0xFE unless it fills a whole packet.
            Reply::Rows => match p.first() {
                Some(0xfe) if p.len() < MAX_PAYLOAD => more(if deprecate_eof {
                    ok_status(p)
                } else {
                    p.get(3..5).map(|s| u16::from_le_bytes([s[0], s[1]]))
                }),
                Some(0xff) => Reply::Done,
                _ => Reply::Rows,
            },
            Reply::Done => Reply::Done,
        }
    }
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    let b = b.get(at..at + 4)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Status flags of an OK packet: header, affected rows, last insert id, status.
fn ok_status(p: &[u8]) -> Option<u16> {
    let (_, a) = lenenc(p.get(1..)?)?;
    let (_, b) = lenenc(p.get(1 + a..)?)?;
    let s = p.get(1 + a + b..3 + a + b)?;
    Some(u16::from_le_bytes([s[0], s[1]]))
}

/// A length-encoded integer and the bytes it takes.
fn lenenc(b: &[u8]) -> Option<(u64, usize)> {
    let width = match *b.first()? {
        n @ 0..=0xfa => return Some((u64::from(n), 1)),
        0xfc => 2,
        0xfd => 3,
        0xfe => 8,
        _ => return None,
    };
    let value = b.get(1..1 + width)?.iter().rev();
    Some((value.fold(0, |acc, &x| acc << 8 | u64::from(x)), 1 + width))
}

/// The server a `mysql://` URL names, as a socket address for the proxy (port 3306 when
/// the URL gives none).
pub fn upstream(url: &str) -> std::net::SocketAddr {
    use std::net::ToSocketAddrs;
    let host = url
        .split("://")
        .nth(1)
        .and_then(|rest| rest.rsplit('@').next())
        .and_then(|rest| rest.split('/').next())
        .unwrap();
    let host = if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:3306")
    };
    host.to_socket_addrs().unwrap().next().unwrap()
}
