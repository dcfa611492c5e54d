//! The load loop: each thread runs a mio loop over its share of the connections,
//! keeps each one's requests in flight (closed loop) or on schedule (open loop), and
//! counts what comes back.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use rustls::pki_types::ServerName;
use slab::Slab;
use socket2::{Domain, Socket, Type};

use crate::options::{Mode, Opts};

// ---------------------------------------------------------------------------------------
// Shared state between the workers and the main thread.

#[derive(Default)]
pub(crate) struct Progress {
    pub(crate) established: AtomicU64,
    pub(crate) conn_failed: AtomicU64,
    pub(crate) ok: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) bytes: AtomicU64,
    pub(crate) resumed: AtomicU64,
}

pub(crate) struct Shared {
    pub(crate) start: Instant,
    /// Record latencies and count for throughput (the warm-up is over).
    pub(crate) measuring: AtomicBool,
    /// Stop sending new requests; finish what is in flight.
    pub(crate) stop_sending: AtomicBool,
    /// Leave now.
    pub(crate) stop: AtomicBool,
    /// Per-thread counters, for the progress line.
    pub(crate) progress: Vec<Progress>,
}

impl Shared {
    pub(crate) fn sum(&self, f: impl Fn(&Progress) -> &AtomicU64) -> u64 {
        self.progress
            .iter()
            .map(|p| f(p).load(Ordering::Relaxed))
            .sum()
    }
}

#[derive(Default)]
pub(crate) struct WorkerResult {
    pub(crate) hist: Option<Histogram<u64>>,
    pub(crate) ok_measured: u64,
    pub(crate) bytes_measured: u64,
    pub(crate) first_error: Option<String>,
    pub(crate) closed_by_server: u64,
}

// ---------------------------------------------------------------------------------------
// One client connection.

pub(crate) struct Inflight {
    pub(crate) seq: u64,
    /// ns since start: when the request left (closed loop) or was due (open loop).
    pub(crate) t: u64,
}

pub(crate) enum St {
    Connecting,
    /// TLS: connected, the handshake under way.
    Handshaking,
    Ready,
}

pub(crate) struct Client {
    pub(crate) sock: TcpStream,
    /// This connection's number within its worker: tells its schedule entries from
    /// those of an earlier connection that had the same slab slot.
    pub(crate) id: u64,
    pub(crate) st: St,
    pub(crate) wbuf: Vec<u8>,
    pub(crate) rbuf: Vec<u8>,
    pub(crate) inflight: VecDeque<Inflight>,
    pub(crate) sent: u64,
    pub(crate) answered: u64,
    pub(crate) want_write: bool,
    /// --tls: the session around `sock`; `wbuf` and `rbuf` hold plaintext.
    pub(crate) tls: Option<Box<rustls::ClientConnection>>,
}

pub(crate) struct Worker {
    pub(crate) id: usize,
    pub(crate) opts: Opts,
    pub(crate) shared: Arc<Shared>,
    pub(crate) poll: Poll,
    pub(crate) clients: Slab<Client>,
    pub(crate) hist: Histogram<u64>,
    pub(crate) scratch: Vec<u8>,
    pub(crate) ok_measured: u64,
    pub(crate) bytes_measured: u64,
    pub(crate) local: [u64; 6],
    pub(crate) first_error: Option<String>,
    /// Open loop: (due time, slab slot, connection id). A closed connection's entries
    /// stay in the heap; its slot may be reused by then, so each entry names the
    /// connection it was made for and is dropped if the slot now holds another.
    pub(crate) schedule: BinaryHeap<Reverse<(u64, usize, u64)>>,
    pub(crate) next_conn_id: u64,
    pub(crate) interval_ns: u64,
    pub(crate) expect: Vec<u8>,
    /// --tls: the client configuration and the server name.
    pub(crate) tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    /// --conn-requests: connections closed after their share, to open anew.
    pub(crate) replace: usize,
}

pub(crate) fn now_ns(shared: &Shared) -> u64 {
    shared.start.elapsed().as_nanos() as u64
}

pub(crate) const OK: usize = 0;
pub(crate) const FAILED: usize = 1;
pub(crate) const BYTES: usize = 2;
pub(crate) const EST: usize = 3;
pub(crate) const CFAIL: usize = 4;
pub(crate) const RESUMED: usize = 5;

impl Worker {
    pub(crate) fn fail(&mut self, n: u64, why: impl FnOnce() -> String) {
        self.local[FAILED] += n;
        if self.first_error.is_none() {
            self.first_error = Some(why());
        }
    }

    /// Opens this thread's `n`-th connection.
    pub(crate) fn connect(&mut self, n: usize) -> io::Result<()> {
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
        let tls = match &self.tls {
            Some((cfg, name)) => Some(Box::new(
                rustls::ClientConnection::new(cfg.clone(), name.clone())
                    .map_err(io::Error::other)?,
            )),
            None => None,
        };
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
            tls,
        });
        Ok(())
    }

    pub(crate) fn may_send(&self, c: &Client) -> bool {
        !self.shared.stop_sending.load(Ordering::Relaxed)
            && self.opts.requests.is_none_or(|n| c.sent < n)
            && self.opts.conn_requests.is_none_or(|n| c.sent < n)
    }

    /// Closed loop: keep the pipeline full.
    /// The server closed the connection: fine when nothing is owed and nothing more was
    /// to be sent on it, a failure otherwise.
    fn peer_closed(&mut self, key: usize) {
        let c = &self.clients[key];
        if c.inflight.is_empty() && !self.may_send(c) {
            self.clients.remove(key);
        } else {
            self.kill(key, "server closed the connection".into());
        }
    }

    pub(crate) fn top_up(&mut self, key: usize) {
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

    pub(crate) fn flush(&mut self, key: usize) -> Result<(), String> {
        let c = &mut self.clients[key];
        if let Some(tls) = c.tls.as_mut() {
            return flush_tls(tls, &mut c.sock, &mut c.wbuf);
        }
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

    pub(crate) fn kill(&mut self, key: usize, why: String) {
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

    pub(crate) fn on_event(&mut self, key: usize) {
        let Some(c) = self.clients.get_mut(key) else {
            return;
        };
        if let St::Connecting = c.st {
            match c.sock.take_error() {
                Ok(Some(e)) | Err(e) => return self.kill(key, format!("connect: {e}")),
                Ok(None) => {}
            }
            match c.sock.peer_addr() {
                Ok(_) if c.tls.is_some() => c.st = St::Handshaking,
                Ok(_) => self.ready(key),
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) => return self.kill(key, format!("connect: {e}")),
            }
        }
        if self.clients[key].tls.is_some() {
            return self.on_tls_event(key);
        }
        if self.opts.mode == Mode::Idle {
            return;
        }
        // Read everything there is.
        loop {
            let c = &mut self.clients[key];
            match c.sock.read(&mut self.scratch) {
                Ok(0) => return self.peer_closed(key),
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

    /// The connection is up (and, with TLS, its handshake done).
    fn ready(&mut self, key: usize) {
        let c = &mut self.clients[key];
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

    /// --tls: reads ciphertext, decrypts it into `rbuf`, completes the handshake, then
    /// goes on as the plain path does.
    fn on_tls_event(&mut self, key: usize) {
        let c = &mut self.clients[key];
        let Some(tls) = c.tls.as_mut() else { return };
        let mut eof = false;
        loop {
            match tls.read_tls(&mut c.sock) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.kill(key, format!("read: {e}")),
            }
            if let Err(e) = tls.process_new_packets() {
                // Send the alert, if any, before giving up.
                let _ = tls.write_tls(&mut c.sock);
                return self.kill(key, format!("TLS: {e}"));
            }
            loop {
                match tls.reader().read(&mut self.scratch) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(n) => {
                        c.rbuf.extend_from_slice(&self.scratch[..n]);
                        self.local[BYTES] += n as u64;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return self.kill(key, format!("TLS read: {e}")),
                }
            }
            if eof {
                break;
            }
        }
        if matches!(c.st, St::Handshaking) && !tls.is_handshaking() {
            if tls.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                self.local[RESUMED] += 1;
            }
            self.ready(key);
        }
        if self.opts.mode == Mode::Load {
            if let Err(why) = self.parse(key) {
                return self.kill(key, why);
            }
            if eof {
                return self.peer_closed(key);
            }
            self.top_up(key);
        } else if eof {
            // Idle: the final count sees it closed.
            return;
        }
        self.after_io(key);
    }

    pub(crate) fn after_io(&mut self, key: usize) {
        if let Err(why) = self.flush(key) {
            return self.kill(key, why);
        }
        let c = &mut self.clients[key];
        if self.opts.requests.is_some_and(|n| c.answered >= n) {
            self.clients.remove(key);
            return;
        }
        if self.opts.conn_requests.is_some_and(|n| c.answered >= n) && c.inflight.is_empty() {
            // A reset, not a FIN: no TIME_WAIT port left behind per connection.
            let _ = socket2::SockRef::from(&c.sock).set_linger(Some(Duration::ZERO));
            self.clients.remove(key);
            if !self.shared.stop_sending.load(Ordering::Relaxed) {
                self.replace += 1;
            }
            return;
        }
        let want = !c.wbuf.is_empty() || c.tls.as_ref().is_some_and(|t| t.wants_write());
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

    pub(crate) fn expire(&mut self) {
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

    pub(crate) fn publish(&mut self) {
        let p = &self.shared.progress[self.id];
        let fields = [
            &p.ok,
            &p.failed,
            &p.bytes,
            &p.established,
            &p.conn_failed,
            &p.resumed,
        ];
        for (i, f) in fields.iter().enumerate() {
            if self.local[i] > 0 {
                f.fetch_add(self.local[i], Ordering::Relaxed);
                self.local[i] = 0;
            }
        }
    }

    pub(crate) fn run(mut self, target: usize) -> WorkerResult {
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
            // --conn-requests: open anew those that finished their share.
            while self.replace > 0 && !self.shared.stop_sending.load(Ordering::Relaxed) {
                self.replace -= 1;
                let n = self.next_conn_id as usize + 1;
                if let Err(e) = self.connect(n) {
                    self.local[CFAIL] += 1;
                    if self.first_error.is_none() {
                        self.first_error = Some(format!("connect: {e}"));
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

/// --tls: hands the plaintext to rustls and writes what it has to send.
fn flush_tls(
    tls: &mut rustls::ClientConnection,
    sock: &mut TcpStream,
    wbuf: &mut Vec<u8>,
) -> Result<(), String> {
    if !wbuf.is_empty() {
        // Before the handshake completes rustls buffers it (up to its limit).
        let n = tls
            .writer()
            .write(wbuf)
            .map_err(|e| format!("TLS write: {e}"))?;
        wbuf.drain(..n);
    }
    while tls.wants_write() {
        match tls.write_tls(sock) {
            Ok(0) => return Err("write returned 0".into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("write: {e}")),
        }
    }
    Ok(())
}
