//! reactor-bench: a load generator that drives thousands of connections from one process
//! with a mio event loop per thread, verifies every response, and reports throughput,
//! latency percentiles (HDR histogram) and, given the server's PID, its memory and CPU.
//!
//! Closed loop by default (each connection keeps `--pipeline` requests in flight);
//! `--rate` switches to an open loop where requests leave at fixed intended times and
//! latency is measured from the intended time, so a stalled server cannot hide its
//! queueing delay (no coordinated omission).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io::{self, IsTerminal, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use reactor::wire;
use serde::Serialize;
use slab::Slab;
use socket2::{Domain, Socket, Type};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Proto {
    Echo,
    Http,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Mode {
    /// Send requests and measure.
    Load,
    /// Open --conns connections, hold them --duration seconds, report server memory.
    Idle,
}

/// Load generator for reactor (and any echo, HTTP or JSON-lines server).
#[derive(Parser, Debug, Clone)]
#[command(name = "reactor-bench", version)]
struct Opts {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    #[arg(long, value_enum, default_value_t = Proto::Http)]
    protocol: Proto,
    #[arg(long, value_enum, default_value_t = Mode::Load)]
    mode: Mode,
    /// Connections.
    #[arg(long, default_value_t = 100)]
    conns: usize,
    /// Seconds to measure (after the warm-up); in idle mode, seconds to hold.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Requests per connection instead of a duration.
    #[arg(long)]
    requests: Option<u64>,
    /// Requests in flight per connection (closed loop).
    #[arg(long, default_value_t = 1)]
    pipeline: usize,
    /// Echo payload bytes per request.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 0.0)]
    warmup: f64,
    /// Open loop: total requests per second, spread evenly over the connections.
    #[arg(long)]
    rate: Option<f64>,
    /// Source addresses to spread connections over (past one address's ephemeral
    /// ports), e.g. 127.0.0.1,127.0.0.2.
    #[arg(long, value_delimiter = ',')]
    source_ips: Vec<IpAddr>,
    /// New connections per second (0 = as fast as possible).
    #[arg(long, default_value_t = 0.0)]
    connect_rate: f64,
    /// Client threads, each with its own event loop.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Server PID, to report its memory (VmRSS) and CPU per request.
    #[arg(long)]
    server_pid: Option<u32>,
    /// A request unanswered this many seconds fails and closes its connection.
    #[arg(long, default_value_t = 5.0)]
    timeout: f64,
    /// HTTP: the body every response must carry ("" = do not check).
    #[arg(long, default_value = std::str::from_utf8(wire::http::HELLO_BODY).unwrap_or_default())]
    http_body: String,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
    /// Compare with the targets (10K+ connections, 100K+ requests/s, under 100 MB at
    /// 10K connections, under 1 ms average latency); exit 3 on a miss.
    #[arg(long)]
    check: bool,
    /// No progress output.
    #[arg(long)]
    quiet: bool,
}

// ---------------------------------------------------------------------------------------
// Shared state between the workers and the main thread.

#[derive(Default)]
struct Progress {
    established: AtomicU64,
    conn_failed: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
    bytes: AtomicU64,
}

struct Shared {
    start: Instant,
    /// Record latencies and count for throughput (the warm-up is over).
    measuring: AtomicBool,
    /// Stop sending new requests; finish what is in flight.
    stop_sending: AtomicBool,
    /// Leave now.
    stop: AtomicBool,
    /// Per-thread counters, for the progress line.
    progress: Vec<Progress>,
}

impl Shared {
    fn sum(&self, f: impl Fn(&Progress) -> &AtomicU64) -> u64 {
        self.progress
            .iter()
            .map(|p| f(p).load(Ordering::Relaxed))
            .sum()
    }
}

#[derive(Default)]
struct WorkerResult {
    hist: Option<Histogram<u64>>,
    ok_measured: u64,
    bytes_measured: u64,
    first_error: Option<String>,
    closed_by_server: u64,
}

// ---------------------------------------------------------------------------------------
// One client connection.

struct Inflight {
    seq: u64,
    /// ns since start: when the request left (closed loop) or was due (open loop).
    t: u64,
}

enum St {
    Connecting,
    Ready,
}

struct Client {
    sock: TcpStream,
    /// This connection's number within its worker: tells its schedule entries from
    /// those of an earlier connection that had the same slab slot.
    id: u64,
    st: St,
    wbuf: Vec<u8>,
    rbuf: Vec<u8>,
    inflight: VecDeque<Inflight>,
    sent: u64,
    answered: u64,
    want_write: bool,
}

struct Worker {
    id: usize,
    opts: Opts,
    shared: Arc<Shared>,
    poll: Poll,
    clients: Slab<Client>,
    hist: Histogram<u64>,
    scratch: Vec<u8>,
    ok_measured: u64,
    bytes_measured: u64,
    local: [u64; 5],
    first_error: Option<String>,
    /// Open loop: (due time, slab slot, connection id). A closed connection's entries
    /// stay in the heap; its slot may be reused by then, so each entry names the
    /// connection it was made for and is dropped if the slot now holds another.
    schedule: BinaryHeap<Reverse<(u64, usize, u64)>>,
    next_conn_id: u64,
    interval_ns: u64,
    expect: Vec<u8>,
}

fn now_ns(shared: &Shared) -> u64 {
    shared.start.elapsed().as_nanos() as u64
}

const OK: usize = 0;
const FAILED: usize = 1;
const BYTES: usize = 2;
const EST: usize = 3;
const CFAIL: usize = 4;

impl Worker {
    fn fail(&mut self, n: u64, why: impl FnOnce() -> String) {
        self.local[FAILED] += n;
        if self.first_error.is_none() {
            self.first_error = Some(why());
        }
    }

    /// Opens this thread's `n`-th connection.
    fn connect(&mut self, n: usize) -> io::Result<()> {
        let addr = self.opts.addr;
        let srcs = &self.opts.source_ips;
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        socket.set_nonblocking(true)?;
        socket.set_tcp_nodelay(true)?;
        if !srcs.is_empty() {
            // Round robin within each thread, so every thread uses every address.
            let ip = srcs[(n + self.id) % srcs.len()];
            socket.bind(&SocketAddr::new(ip, 0).into())?;
        }
        match socket.connect(&addr.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
        let mut sock = TcpStream::from_std(socket.into());
        let entry = self.clients.vacant_entry();
        self.poll.registry().register(
            &mut sock,
            Token(entry.key()),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        let id = self.next_conn_id;
        self.next_conn_id += 1;
        entry.insert(Client {
            sock,
            id,
            st: St::Connecting,
            wbuf: Vec::new(),
            rbuf: Vec::new(),
            inflight: VecDeque::new(),
            sent: 0,
            answered: 0,
            want_write: true,
        });
        Ok(())
    }

    fn may_send(&self, c: &Client) -> bool {
        !self.shared.stop_sending.load(Ordering::Relaxed)
            && self.opts.requests.is_none_or(|n| c.sent < n)
    }

    fn push_request(opts: &Opts, c: &mut Client, t: u64) {
        let seq = c.sent;
        c.sent += 1;
        match opts.protocol {
            Proto::Echo => wire::echo::payload(seq, opts.size, &mut c.wbuf),
            Proto::Http => wire::http::encode_get("/", "bench", &mut c.wbuf),
            Proto::Json => wire::json::encode(&seq.to_string(), &format!("v{seq}"), &mut c.wbuf),
        }
        c.inflight.push_back(Inflight { seq, t });
    }

    /// Closed loop: keep the pipeline full.
    fn top_up(&mut self, key: usize) {
        if self.opts.rate.is_some() || self.opts.mode == Mode::Idle {
            return;
        }
        let now = now_ns(&self.shared);
        let Some(c) = self.clients.get(key) else {
            return;
        };
        let mut room = self.opts.pipeline.saturating_sub(c.inflight.len());
        while room > 0 && self.may_send(&self.clients[key]) {
            Worker::push_request(&self.opts, &mut self.clients[key], now);
            room -= 1;
        }
    }

    fn flush(&mut self, key: usize) -> Result<(), String> {
        let c = &mut self.clients[key];
        let mut off = 0;
        while off < c.wbuf.len() {
            match c.sock.write(&c.wbuf[off..]) {
                Ok(0) => return Err("write returned 0".into()),
                Ok(n) => off += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("write: {e}")),
            }
        }
        c.wbuf.drain(..off);
        Ok(())
    }

    /// Parses every complete response in the client's read buffer.
    fn parse(&mut self, key: usize) -> Result<(), String> {
        let now = now_ns(&self.shared);
        let measuring = self.shared.measuring.load(Ordering::Relaxed);
        let c = &mut self.clients[key];
        let mut pos = 0;
        loop {
            let buf = &c.rbuf[pos..];
            let (len, seq_hint): (usize, Option<u64>) = match self.opts.protocol {
                Proto::Echo => {
                    let size = self.opts.size;
                    if buf.len() < size {
                        break;
                    }
                    let Some(front) = c.inflight.front() else {
                        return Err("echo bytes with no request in flight".into());
                    };
                    self.expect.clear();
                    wire::echo::payload(front.seq, size, &mut self.expect);
                    if wire::echo::frame(&buf[..size], &self.expect).is_err() {
                        return Err(format!("echo payload {} corrupted", front.seq));
                    }
                    (size, None)
                }
                Proto::Http => {
                    let Some(f) = wire::http::frame(buf)? else {
                        break;
                    };
                    wire::http::check(f.status, &buf[f.body], self.opts.http_body.as_bytes())?;
                    (f.len, None)
                }
                Proto::Json => {
                    let Some((len, v)) = wire::json::frame(buf, wire::json::MAX_MESSAGE)? else {
                        break;
                    };
                    let uid = v
                        .uid
                        .as_deref()
                        .and_then(|u| u.parse::<u64>().ok())
                        .ok_or_else(|| format!("JSON answer without our Uid: {v:?}"))?;
                    wire::json::check(&format!("v{uid}"), &v)?;
                    (len, Some(uid))
                }
            };
            // Match the answer to its request: by position, or by Uid as the seed's
            // client does.
            let req = match seq_hint {
                None => c.inflight.pop_front(),
                Some(uid) => c
                    .inflight
                    .iter()
                    .position(|r| r.seq == uid)
                    .and_then(|i| c.inflight.remove(i)),
            }
            .ok_or("an answer with no matching request")?;
            pos += len;
            c.answered += 1;
            self.local[OK] += 1;
            if measuring {
                self.ok_measured += 1;
                self.bytes_measured += len as u64;
                let us = now.saturating_sub(req.t) / 1000;
                let _ = self.hist.record(us.max(1));
            }
        }
        c.rbuf.drain(..pos);
        Ok(())
    }

    fn kill(&mut self, key: usize, why: String) {
        let c = self.clients.remove(key);
        let lost = c.inflight.len() as u64;
        let was_ready = matches!(c.st, St::Ready);
        if !was_ready {
            self.local[CFAIL] += 1;
            if self.first_error.is_none() {
                self.first_error = Some(why);
            }
        } else {
            self.fail(lost.max(1), || why);
        }
    }

    fn on_event(&mut self, key: usize) {
        let Some(c) = self.clients.get_mut(key) else {
            return;
        };
        if let St::Connecting = c.st {
            match c.sock.take_error() {
                Ok(Some(e)) | Err(e) => return self.kill(key, format!("connect: {e}")),
                Ok(None) => {}
            }
            match c.sock.peer_addr() {
                Ok(_) => {
                    c.st = St::Ready;
                    self.local[EST] += 1;
                    if self.opts.rate.is_some() && self.opts.mode == Mode::Load {
                        // Spread the connections' send times evenly over one
                        // interval, so that the rate is smooth, not bursts.
                        let n = (self.opts.conns / self.opts.threads).max(1) as u64;
                        let jitter = self.interval_ns * (key as u64 % n) / n;
                        let id = c.id;
                        self.schedule
                            .push(Reverse((now_ns(&self.shared) + jitter, key, id)));
                    }
                    self.top_up(key);
                }
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) => return self.kill(key, format!("connect: {e}")),
            }
        }
        if self.opts.mode == Mode::Idle {
            return;
        }
        // Read everything there is.
        loop {
            let c = &mut self.clients[key];
            match c.sock.read(&mut self.scratch) {
                Ok(0) => {
                    let c = &self.clients[key];
                    if c.inflight.is_empty() && !self.may_send(c) {
                        self.clients.remove(key);
                    } else {
                        self.kill(key, "server closed the connection".into());
                    }
                    return;
                }
                Ok(n) => {
                    c.rbuf.extend_from_slice(&self.scratch[..n]);
                    self.local[BYTES] += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.kill(key, format!("read: {e}")),
            }
        }
        if let Err(why) = self.parse(key) {
            return self.kill(key, why);
        }
        self.top_up(key);
        self.after_io(key);
    }

    fn after_io(&mut self, key: usize) {
        if let Err(why) = self.flush(key) {
            return self.kill(key, why);
        }
        let c = &mut self.clients[key];
        if self.opts.requests.is_some_and(|n| c.answered >= n) {
            self.clients.remove(key);
            return;
        }
        let want = !c.wbuf.is_empty();
        if want != c.want_write {
            c.want_write = want;
            let i = if want {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            if let Err(e) = self.poll.registry().reregister(&mut c.sock, Token(key), i) {
                self.kill(key, format!("reregister: {e}"));
            }
        }
    }

    /// Open loop: send every request whose time has come.
    fn send_due(&mut self) {
        let now = now_ns(&self.shared);
        while let Some(&Reverse((t, key, id))) = self.schedule.peek() {
            if t > now {
                break;
            }
            self.schedule.pop();
            // The slot is empty or holds a later connection: this entry's connection
            // is gone, and so is its schedule.
            let Some(c) = self.clients.get(key).filter(|c| c.id == id) else {
                continue;
            };
            if !self.may_send(c) {
                continue;
            }
            Worker::push_request(&self.opts, &mut self.clients[key], t);
            self.schedule.push(Reverse((t + self.interval_ns, key, id)));
            self.after_io(key);
        }
    }

    fn expire(&mut self) {
        let now = now_ns(&self.shared);
        let limit = (self.opts.timeout * 1e9) as u64;
        let late: Vec<usize> = self
            .clients
            .iter()
            .filter(|(_, c)| {
                c.inflight
                    .front()
                    .is_some_and(|r| now.saturating_sub(r.t) > limit)
            })
            .map(|(k, _)| k)
            .collect();
        for key in late {
            self.kill(key, format!("no answer within {} s", self.opts.timeout));
        }
    }

    fn publish(&mut self) {
        let p = &self.shared.progress[self.id];
        let fields = [&p.ok, &p.failed, &p.bytes, &p.established, &p.conn_failed];
        for (i, f) in fields.iter().enumerate() {
            if self.local[i] > 0 {
                f.fetch_add(self.local[i], Ordering::Relaxed);
                self.local[i] = 0;
            }
        }
    }

    fn run(mut self, target: usize) -> WorkerResult {
        let mut events = Events::with_capacity(1024);
        let mut opened = 0usize;
        let per_thread_rate = self.opts.connect_rate / self.opts.threads as f64;
        let mut last_expire = Instant::now();
        loop {
            if self.shared.stop.load(Ordering::Relaxed) {
                break;
            }
            // Open connections, at --connect-rate if set, a batch per turn otherwise.
            if opened < target {
                let allowed = if per_thread_rate > 0.0 {
                    let due =
                        (self.shared.start.elapsed().as_secs_f64() * per_thread_rate) as usize + 1;
                    due.min(target).saturating_sub(opened)
                } else {
                    (target - opened).min(256)
                };
                for _ in 0..allowed {
                    opened += 1;
                    if let Err(e) = self.connect(opened) {
                        self.local[CFAIL] += 1;
                        if self.first_error.is_none() {
                            self.first_error = Some(format!("connect: {e}"));
                        }
                    }
                }
            }
            let all_open = opened >= target;
            let done_sending = self.shared.stop_sending.load(Ordering::Relaxed)
                || (self.opts.requests.is_some() && self.opts.mode == Mode::Load);
            if all_open
                && done_sending
                && self.opts.mode == Mode::Load
                && self
                    .clients
                    .iter()
                    .all(|(_, c)| c.inflight.is_empty() && c.wbuf.is_empty())
                && (self.opts.requests.is_none() || self.clients.is_empty())
            {
                break;
            }
            let mut timeout = Duration::from_millis(50);
            if !all_open {
                timeout = Duration::from_millis(if per_thread_rate > 0.0 { 1 } else { 0 });
            }
            if let Some(&Reverse((t, _, _))) = self.schedule.peek() {
                // epoll waits in whole milliseconds: closer than that, poll without
                // waiting, so that requests leave on time (the client core is ours).
                let wait = t.saturating_sub(now_ns(&self.shared));
                timeout = timeout.min(if wait < 1_000_000 {
                    Duration::ZERO
                } else {
                    Duration::from_nanos(wait - 1_000_000)
                });
            }
            if let Err(e) = self.poll.poll(&mut events, Some(timeout))
                && e.kind() != io::ErrorKind::Interrupted
            {
                self.first_error = Some(format!("poll: {e}"));
                break;
            }
            for ev in events.iter() {
                self.on_event(ev.token().0);
            }
            if !self.schedule.is_empty() {
                self.send_due();
            }
            if last_expire.elapsed() >= Duration::from_millis(100) {
                last_expire = Instant::now();
                if self.opts.mode == Mode::Load {
                    self.expire();
                }
            }
            self.publish();
        }
        // What is still in flight was never answered.
        let mut result = WorkerResult::default();
        if self.opts.mode == Mode::Load {
            let lost: u64 = self
                .clients
                .iter()
                .map(|(_, c)| c.inflight.len() as u64)
                .sum();
            if lost > 0 {
                self.fail(lost, || "requests unanswered at the end".into());
            }
        } else {
            for (_, c) in self.clients.iter_mut() {
                if !matches!(c.st, St::Ready) {
                    continue;
                }
                // Still open reads WouldBlock; EOF, data or a reset means the server
                // let go of it.
                match c.sock.read(&mut self.scratch) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    _ => result.closed_by_server += 1,
                }
            }
        }
        self.publish();
        result.hist = Some(self.hist);
        result.ok_measured = self.ok_measured;
        result.bytes_measured = self.bytes_measured;
        result.first_error = self.first_error;
        result
    }
}

// ---------------------------------------------------------------------------------------
// Measuring the server from outside.

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn cpu_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f: Vec<&str> = s[s.rfind(')')? + 2..].split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn own_cpu_secs() -> f64 {
    // SAFETY: getrusage writes the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

// ---------------------------------------------------------------------------------------
// The report.

#[derive(Serialize, Default)]
struct Latency {
    avg_ms: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
}

#[derive(Serialize, Default)]
struct Report {
    protocol: Option<Proto>,
    mode: Option<Mode>,
    addr: String,
    conns: usize,
    pipeline: usize,
    rate: Option<f64>,
    threads: usize,
    seconds: f64,
    conns_established: u64,
    conns_failed: u64,
    conns_closed_by_server: u64,
    requests_ok: u64,
    requests_failed: u64,
    requests_per_sec: f64,
    mb_per_sec: f64,
    latency: Latency,
    server_rss_before_kib: Option<u64>,
    server_rss_peak_kib: Option<u64>,
    server_bytes_per_conn: Option<f64>,
    server_cpu_us_per_request: Option<f64>,
    client_cpu_percent: f64,
    first_error: Option<String>,
    /// Why the run failed (exit 1); empty if it did not.
    failures: Vec<String>,
    check_misses: Vec<String>,
}

fn main() {
    let opts = Opts::parse();
    if opts.conns == 0
        || opts.threads == 0
        || opts.pipeline == 0
        || (opts.protocol == Proto::Echo && opts.size == 0)
    {
        eprintln!("reactor-bench: --conns, --threads, --pipeline and --size must be at least 1");
        std::process::exit(2);
    }
    if opts.rate.is_some_and(|r| r <= 0.0) {
        eprintln!("reactor-bench: --rate must be positive");
        std::process::exit(2);
    }
    let _ = reactor::listener::raise_nofile_limit();
    let report = run(&opts);
    if opts.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        print_report(&opts, &report);
    }
    if !report.failures.is_empty() {
        for f in &report.failures {
            eprintln!("reactor-bench: failed: {f}");
        }
        std::process::exit(1);
    }
    if !report.check_misses.is_empty() {
        std::process::exit(3);
    }
}

fn run(opts: &Opts) -> Report {
    let threads = opts.threads.min(opts.conns);
    let shared = Arc::new(Shared {
        start: Instant::now(),
        measuring: AtomicBool::new(opts.warmup <= 0.0),
        stop_sending: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        progress: (0..threads).map(|_| Progress::default()).collect(),
    });
    let rss_before = opts.server_pid.and_then(rss_kib);
    let mut rss_peak = rss_before;
    let interval_ns = opts
        .rate
        .map_or(0, |r| (1e9 * opts.conns as f64 / r) as u64)
        .max(1);
    let mut handles: Vec<Option<std::thread::JoinHandle<WorkerResult>>> = Vec::new();
    for id in 0..threads {
        let share = opts.conns / threads + usize::from(id < opts.conns % threads);
        let worker = Worker {
            id,
            opts: Opts {
                threads,
                ..opts.clone()
            },
            shared: shared.clone(),
            poll: Poll::new().expect("poll"),
            clients: Slab::with_capacity(share),
            hist: Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram"),
            scratch: vec![0; 64 * 1024],
            ok_measured: 0,
            bytes_measured: 0,
            local: [0; 5],
            first_error: None,
            schedule: BinaryHeap::new(),
            next_conn_id: 0,
            interval_ns,
            expect: Vec::new(),
        };
        let handle = std::thread::Builder::new()
            .name(format!("worker {id}"))
            .spawn(move || worker.run(share))
            .expect("spawn a worker thread");
        handles.push(Some(handle));
    }
    // Workers' results, joined as each thread ends; a panicked worker leaves no result
    // and fails the run.
    let mut results = Vec::new();
    let mut panics = Vec::new();

    let bar = (!opts.quiet && !opts.json && io::stderr().is_terminal()).then(|| {
        let b = indicatif::ProgressBar::new_spinner();
        b.enable_steady_tick(Duration::from_millis(200));
        b
    });
    let cpu0 = own_cpu_secs();
    let warmup = Duration::from_secs_f64(opts.warmup.max(0.0));
    let hold = Duration::from_secs_f64(opts.duration.max(0.0));
    let mut measure_start: Option<(Instant, Option<u64>)> = None;
    let mut last_line = Instant::now();
    let mut last_ok = 0;
    let mut all_open_at: Option<Instant> = None;
    loop {
        std::thread::sleep(Duration::from_millis(50));
        for (id, slot) in handles.iter_mut().enumerate() {
            if slot.as_ref().is_some_and(|h| h.is_finished())
                && let Some(h) = slot.take()
            {
                match h.join() {
                    Ok(r) => results.push(r),
                    Err(payload) => {
                        let msg = payload
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| payload.downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "(no message)".into());
                        panics.push(format!("worker thread {id} panicked: {msg}"));
                        // Its connections and counts are lost: the run has failed, so
                        // stop the others now rather than wait for them.
                        shared.stop.store(true, Ordering::Relaxed);
                    }
                }
            }
        }
        let finished = handles.iter().all(|h| h.is_none());
        let est = shared.sum(|p| &p.established);
        let cfail = shared.sum(|p| &p.conn_failed);
        if let Some(pid) = opts.server_pid
            && let Some(r) = rss_kib(pid)
        {
            rss_peak = Some(rss_peak.map_or(r, |p| p.max(r)));
        }
        let elapsed = shared.start.elapsed();
        if measure_start.is_none() && (elapsed >= warmup || opts.mode == Mode::Idle) {
            shared.measuring.store(true, Ordering::Relaxed);
            measure_start = Some((Instant::now(), opts.server_pid.and_then(cpu_ticks)));
        }
        if est + cfail >= opts.conns as u64 && all_open_at.is_none() {
            all_open_at = Some(Instant::now());
        }
        let ok = shared.sum(|p| &p.ok);
        let line = format!(
            "{:5.1}s conns {est}/{} failed {cfail} | requests ok {ok} failed {} | {:.0} req/s",
            elapsed.as_secs_f64(),
            opts.conns,
            shared.sum(|p| &p.failed),
            (ok - last_ok) as f64 / last_line.elapsed().as_secs_f64().max(1e-3),
        );
        if let Some(b) = &bar {
            b.set_message(line);
            last_ok = ok;
            last_line = Instant::now();
        } else if !opts.quiet && !opts.json && last_line.elapsed() >= Duration::from_secs(1) {
            eprintln!("{line}");
            last_ok = ok;
            last_line = Instant::now();
        }
        if finished {
            break;
        }
        match opts.mode {
            Mode::Load => {
                if opts.requests.is_none()
                    && let Some((t, _)) = measure_start
                    && t.elapsed() >= hold
                {
                    shared.stop_sending.store(true, Ordering::Relaxed);
                }
                // Give what is in flight its timeout to come back, then stop.
                if shared.stop_sending.load(Ordering::Relaxed)
                    && measure_start.is_some_and(|(t, _)| {
                        t.elapsed() >= hold + Duration::from_secs_f64(opts.timeout + 1.0)
                    })
                {
                    shared.stop.store(true, Ordering::Relaxed);
                }
            }
            Mode::Idle => {
                if all_open_at.is_some_and(|t| t.elapsed() >= hold) {
                    shared.stop.store(true, Ordering::Relaxed);
                }
            }
        }
    }
    let (t0, ticks0) = measure_start.unwrap_or((Instant::now(), None));
    let seconds = t0.elapsed().as_secs_f64().max(1e-9);
    let ticks1 = opts.server_pid.and_then(cpu_ticks);
    let client_cpu = own_cpu_secs() - cpu0;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    let mut ok_measured = 0;
    let mut bytes_measured = 0;
    let mut first_error = None;
    let mut closed_by_server = 0;
    for r in results {
        if let Some(wh) = &r.hist {
            let _ = hist.add(wh);
        }
        ok_measured += r.ok_measured;
        bytes_measured += r.bytes_measured;
        first_error = first_error.or(r.first_error);
        closed_by_server += r.closed_by_server;
    }
    let established = shared.sum(|p| &p.established);
    let ms = |us: u64| us as f64 / 1000.0;
    let mut report = Report {
        protocol: Some(opts.protocol),
        mode: Some(opts.mode),
        addr: opts.addr.to_string(),
        conns: opts.conns,
        pipeline: opts.pipeline,
        rate: opts.rate,
        threads,
        seconds,
        conns_established: established,
        conns_failed: shared.sum(|p| &p.conn_failed),
        conns_closed_by_server: closed_by_server,
        requests_ok: shared.sum(|p| &p.ok),
        requests_failed: shared.sum(|p| &p.failed),
        requests_per_sec: ok_measured as f64 / seconds,
        mb_per_sec: bytes_measured as f64 / seconds / 1e6,
        latency: Latency {
            avg_ms: hist.mean() / 1000.0,
            p50_ms: ms(hist.value_at_quantile(0.50)),
            p90_ms: ms(hist.value_at_quantile(0.90)),
            p99_ms: ms(hist.value_at_quantile(0.99)),
            p999_ms: ms(hist.value_at_quantile(0.999)),
            max_ms: ms(hist.max()),
        },
        server_rss_before_kib: rss_before,
        server_rss_peak_kib: rss_peak,
        server_bytes_per_conn: match (rss_before, rss_peak) {
            (Some(b), Some(p)) if established > 0 => {
                Some((p.saturating_sub(b) * 1024) as f64 / established as f64)
            }
            _ => None,
        },
        server_cpu_us_per_request: match (ticks0, ticks1) {
            (Some(a), Some(b)) if ok_measured > 0 && opts.mode == Mode::Load => {
                Some((b - a) as f64 / clock_ticks_per_sec() * 1e6 / ok_measured as f64)
            }
            _ => None,
        },
        client_cpu_percent: client_cpu / seconds * 100.0,
        first_error,
        failures: Vec::new(),
        check_misses: Vec::new(),
    };
    if opts.mode == Mode::Idle {
        report.requests_per_sec = 0.0;
    }
    report.failures = failures(opts, &report, panics);
    if opts.check {
        report.check_misses = check(&report);
    }
    report
}

/// Why the run failed, if it did: each reason makes the exit status 1.
fn failures(opts: &Opts, r: &Report, panics: Vec<String>) -> Vec<String> {
    let mut why = panics;
    let asked = opts.conns as u64;
    if r.conns_established < asked {
        why.push(format!(
            "only {} of {asked} connections established ({} failed to connect, {} not \
             connected when the run ended)",
            r.conns_established,
            r.conns_failed,
            asked.saturating_sub(r.conns_established + r.conns_failed)
        ));
    }
    if r.conns_failed > 0 {
        why.push(format!("{} connections failed", r.conns_failed));
    }
    if r.conns_closed_by_server > 0 {
        why.push(format!(
            "{} connections closed by the server",
            r.conns_closed_by_server
        ));
    }
    if r.requests_failed > 0 {
        why.push(format!("{} requests failed", r.requests_failed));
    }
    if opts.mode == Mode::Load && r.requests_ok == 0 {
        why.push("no request was answered".into());
    }
    why
}

fn check(r: &Report) -> Vec<String> {
    let mut misses = Vec::new();
    if r.conns_established < 10_000 {
        misses.push(format!(
            "connections: {} established, target 10,000+",
            r.conns_established
        ));
    }
    if r.mode == Some(Mode::Load) {
        if r.requests_per_sec < 100_000.0 {
            misses.push(format!(
                "throughput: {:.0} requests/s, target 100,000+",
                r.requests_per_sec
            ));
        }
        if r.latency.avg_ms >= 1.0 {
            misses.push(format!(
                "latency: {:.3} ms average, target under 1 ms",
                r.latency.avg_ms
            ));
        }
    }
    match r.server_rss_peak_kib {
        Some(kib) if r.conns_established >= 10_000 && kib >= 100 * 1024 => misses.push(format!(
            "memory: server RSS {:.1} MB at {} connections, target under 100 MB",
            kib as f64 / 1024.0,
            r.conns_established
        )),
        None => misses.push("memory: unknown (pass --server-pid)".into()),
        _ => {}
    }
    misses
}

fn print_report(opts: &Opts, r: &Report) {
    let lp = match r.rate {
        Some(rate) => format!("open loop at {rate} req/s"),
        None => format!("closed loop, pipeline {}", r.pipeline),
    };
    match opts.mode {
        Mode::Load => println!(
            "reactor-bench: {:?} {} | {} conns, {lp}, {} threads, {:.1} s measured",
            opts.protocol, r.addr, r.conns, r.threads, r.seconds
        ),
        Mode::Idle => println!(
            "reactor-bench: idle {} | {} conns held {:.1} s",
            r.addr, r.conns, opts.duration
        ),
    }
    println!(
        "connections: {} established, {} failed{}",
        r.conns_established,
        r.conns_failed,
        if opts.mode == Mode::Idle {
            format!(", {} closed by the server", r.conns_closed_by_server)
        } else {
            String::new()
        }
    );
    if opts.mode == Mode::Load {
        println!(
            "requests:    {} ok, {} failed",
            r.requests_ok, r.requests_failed
        );
        println!(
            "throughput:  {:.0} requests/s, {:.2} MB/s",
            r.requests_per_sec, r.mb_per_sec
        );
        let l = &r.latency;
        println!(
            "latency:     avg {:.3} ms, p50 {:.3}, p90 {:.3}, p99 {:.3}, p99.9 {:.3}, max {:.3} ms",
            l.avg_ms, l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms
        );
    }
    if let (Some(b), Some(p)) = (r.server_rss_before_kib, r.server_rss_peak_kib) {
        print!("server:      RSS {b} KiB before, {p} KiB peak");
        if let Some(per) = r.server_bytes_per_conn {
            print!(", {per:.0} B per connection");
        }
        if let Some(cpu) = r.server_cpu_us_per_request {
            print!(", CPU {cpu:.2} us per request");
        }
        println!(" (RSS counts user-space memory only; kernel socket buffers are not in it)");
    }
    println!(
        "client:      CPU {:.0}% (100% = one core)",
        r.client_cpu_percent
    );
    if let Some(e) = &r.first_error {
        println!("first error: {e}");
    }
    for f in &r.failures {
        println!("failed:      {f}");
    }
    if opts.check {
        if r.check_misses.is_empty() {
            println!("check:       all targets met");
        }
        for m in &r.check_misses {
            println!("check miss:  {m}");
        }
    }
}
