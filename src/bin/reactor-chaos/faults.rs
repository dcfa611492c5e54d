//! A fault-injecting TCP proxy: between the peers and the server, it delays, paces,
//! slices, stalls and cuts the byte streams, so that the server is tested on a bad
//! network without leaving the loopback.
//!
//! A profile is a comma-separated list of `key=value` (every key optional; none at all
//! forwards faithfully):
//!
//! | key | value | effect |
//! |---|---|---|
//! | `latency` | duration | each chunk read is written on no sooner than this after it was read |
//! | `jitter` | duration | plus a random 0 to this much more, never reordering: a chunk never overtakes the one before it |
//! | `rate` | bytes per second (`k`, `m` suffixes: 1024s) | each direction of a connection is paced to this |
//! | `slice` | `A-B` or `N` bytes | each chunk is written on in pieces of A to B bytes (one segment each: `TCP_NODELAY`) |
//! | `pause` | `A-B` or `D` duration | between two pieces of a chunk, wait A to B |
//! | `stall` | `P%:D` | a chunk has a P% chance of stopping D after a random byte within it (not its first: the stall is mid-stream) |
//! | `cut` | `P%` | a chunk has a P% chance of being the last: the connection is closed both ways after a random part of it (with a reset or a plain close, at random) |
//!
//! Durations take `us`, `ms`, `s` (`20ms`, `1.5s`). For example
//! `latency=20ms,jitter=10ms,rate=64k,slice=1-16,pause=0-5ms,stall=2%:300ms,cut=2%`.
//!
//! A chunk is what one read from a socket returned (at most 16 KB), so how often a
//! stall or cut strikes depends on how a peer writes: a peer writing a byte at a time
//! meets one per byte. Each direction has a bounded queue of chunks, so a slow reader
//! still holds its writer back (backpressure passes through). An end of stream passes
//! on as a half-close once every chunk before it is out; a reset (or a write refused)
//! passes on as a reset after the chunks before it.
//!
//! A cut is recorded by the client's port (its local port, the proxy's peer port)
//! before either side is closed, so whoever sees the close can ask [`Proxy::was_cut`]
//! and tell a cut from a real loss. The mark is cleared when the proxy accepts a new
//! connection from that port.
//!
//! Every random draw comes from a generator seeded by the proxy's seed and the
//! connection's number, so a run's faults can be replayed (as far as the chunks, which
//! depend on timing, come out the same).
//!
//! Only std and socket2 (for `SO_LINGER`), so that a test can include this file alone.

use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::rng::Rng;

/// Largest chunk read at once.
const CHUNK: usize = 16 * 1024;
/// Chunks queued per direction before the reader waits (backpressure).
const QUEUE: usize = 64;
/// How long to try to reach the upstream server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Stack of each pumping thread: they hold one chunk buffer on the heap.
const STACK: usize = 128 * 1024;

/// What the proxy does to the streams: see the module's documentation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Faults {
    pub latency: Duration,
    pub jitter: Duration,
    /// Bytes per second per direction (0: unlimited).
    pub rate: u64,
    /// Bytes per piece, inclusive (`None`: whole chunks).
    pub slice: Option<(usize, usize)>,
    /// Between pieces, inclusive.
    pub pause: (Duration, Duration),
    /// Chance per chunk (0 to 1) and length of a stall.
    pub stall: (f64, Duration),
    /// Chance per chunk (0 to 1) of a cut.
    pub cut: f64,
}

impl Faults {
    /// Parses a profile (see the module's documentation); the empty string is no fault.
    pub fn parse(spec: &str) -> Result<Faults, String> {
        let mut f = Faults::default();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| format!("{item:?}: expected key=value"))?;
            let bad = |e: String| format!("{key}={value}: {e}");
            match key {
                "latency" => f.latency = duration(value).map_err(bad)?,
                "jitter" => f.jitter = duration(value).map_err(bad)?,
                "rate" => f.rate = bytes(value).map_err(bad)?,
                "slice" => {
                    let (a, b) = range(value, |v| v.parse::<usize>().map_err(|e| e.to_string()))
                        .map_err(bad)?;
                    if a == 0 {
                        return Err(bad("a piece is at least 1 byte".into()));
                    }
                    f.slice = Some((a, b));
                }
                "pause" => f.pause = range(value, duration).map_err(bad)?,
                "stall" => {
                    let (p, d) = value
                        .split_once(':')
                        .ok_or_else(|| bad("expected P%:DURATION".into()))?;
                    f.stall = (percent(p).map_err(bad)?, duration(d).map_err(bad)?);
                }
                "cut" => f.cut = percent(value).map_err(bad)?,
                _ => {
                    return Err(format!(
                        "unknown fault {key:?} (latency, jitter, rate, slice, pause, stall, cut)"
                    ));
                }
            }
        }
        Ok(f)
    }
}

fn duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| c.is_ascii_alphabetic())
        .map_or((s, ""), |i| s.split_at(i));
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration"))?;
    let secs = match unit {
        "us" => n / 1e6,
        "ms" => n / 1e3,
        "s" | "" => n,
        _ => return Err(format!("{s:?}: the unit is us, ms or s")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
}

fn bytes(s: &str) -> Result<u64, String> {
    let (num, mult) = match s.chars().last() {
        Some('k' | 'K') => (&s[..s.len() - 1], 1024),
        Some('m' | 'M') => (&s[..s.len() - 1], 1024 * 1024),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .map(|n| n * mult)
        .map_err(|_| format!("{s:?} is not a byte count"))
}

fn percent(s: &str) -> Result<f64, String> {
    let p: f64 = s
        .strip_suffix('%')
        .ok_or_else(|| format!("{s:?}: expected a percentage (2%)"))?
        .parse()
        .map_err(|_| format!("{s:?} is not a percentage"))?;
    if !(0.0..=100.0).contains(&p) {
        return Err(format!("{s:?} is not between 0% and 100%"));
    }
    Ok(p / 100.0)
}

/// `A-B` or `N` (= `N-N`), each parsed by `one`, A at most B.
fn range<T: PartialOrd + Copy>(
    s: &str,
    one: impl Fn(&str) -> Result<T, String>,
) -> Result<(T, T), String> {
    let (a, b) = match s.split_once('-') {
        Some((a, b)) => (one(a)?, one(b)?),
        None => {
            let n = one(s)?;
            (n, n)
        }
    };
    if a > b {
        return Err(format!("{s:?}: the low end is above the high end"));
    }
    Ok((a, b))
}

/// What the proxy counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Client connections accepted.
    pub connections: u64,
    /// Of those, the ones whose upstream connection failed (closed at once).
    pub upstream_failures: u64,
    /// Connections cut.
    pub cuts: u64,
    /// Stalls made.
    pub stalls: u64,
    /// Bytes forwarded to the server, and to the clients.
    pub bytes_up: u64,
    pub bytes_down: u64,
}

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    connections: AtomicU64,
    upstream_failures: AtomicU64,
    cuts: AtomicU64,
    stalls: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    /// Client ports whose connection was cut.
    cut_ports: Mutex<HashSet<u16>>,
    /// The connections, to close those left when the proxy is dropped.
    live: Mutex<Vec<Weak<Link>>>,
}

/// The proxy: listens on 127.0.0.1 (a port of its own), forwards to one upstream
/// address, closes every connection it holds when dropped.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    /// Starts a proxy to `upstream` with `faults`, its randomness seeded by `seed`.
    pub fn start(upstream: SocketAddr, faults: Faults, seed: u64) -> io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        let faults = Arc::new(faults);
        let acceptor = std::thread::Builder::new()
            .name("fault proxy".into())
            .spawn(move || accept_loop(listener, upstream, faults, seed, s))?;
        Ok(Proxy {
            addr,
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether the proxy cut the connection of the client whose local port is `port`.
    pub fn was_cut(&self, port: u16) -> bool {
        lock(&self.shared.cut_ports).contains(&port)
    }

    pub fn stats(&self) -> ProxyStats {
        let s = &self.shared;
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ProxyStats {
            connections: n(&s.connections),
            upstream_failures: n(&s.upstream_failures),
            cuts: n(&s.cuts),
            stalls: n(&s.stalls),
            bytes_up: n(&s.bytes_up),
            bytes_down: n(&s.bytes_down),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        for link in lock(&self.shared.live).drain(..) {
            if let Some(l) = link.upgrade() {
                l.close_both();
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    faults: Arc<Faults>,
    seed: u64,
    shared: Arc<Shared>,
) {
    let mut serial = 0u64;
    loop {
        let accepted = listener.accept();
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok((client, peer)) = accepted else {
            // Out of descriptors and the like: do not spin.
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        serial += 1;
        shared.connections.fetch_add(1, Ordering::Relaxed);
        lock(&shared.cut_ports).remove(&peer.port());
        let server = match TcpStream::connect_timeout(&upstream, CONNECT_TIMEOUT) {
            Ok(s) => s,
            Err(_) => {
                shared.upstream_failures.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let link = Arc::new(Link {
            client,
            server,
            client_port: peer.port(),
            cut: AtomicBool::new(false),
            shared: shared.clone(),
        });
        {
            let mut live = lock(&shared.live);
            live.retain(|l| l.strong_count() > 0);
            live.push(Arc::downgrade(&link));
        }
        for up in [true, false] {
            let stream = serial * 2 + u64::from(up);
            let (tx, rx) = sync_channel(QUEUE);
            let (l, f) = (link.clone(), faults.clone());
            let reader = spawn("fault proxy reader", move || {
                read_side(&l, up, &f, tx, seed, stream)
            });
            let (l, f) = (link.clone(), faults.clone());
            let writer = spawn("fault proxy writer", move || {
                write_side(&l, up, &f, rx, seed, stream)
            });
            if reader.is_err() || writer.is_err() {
                link.close_both();
            }
        }
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> io::Result<()> {
    std::thread::Builder::new()
        .name(name.into())
        .stack_size(STACK)
        .spawn(f)
        .map(drop)
}

/// One proxied connection: the client's socket and the server's.
struct Link {
    client: TcpStream,
    server: TcpStream,
    client_port: u16,
    cut: AtomicBool,
    shared: Arc<Shared>,
}

impl Link {
    /// (source, destination) of a direction: up is client to server.
    fn ends(&self, up: bool) -> (&TcpStream, &TcpStream) {
        if up {
            (&self.client, &self.server)
        } else {
            (&self.server, &self.client)
        }
    }

    /// The fault: marks the client's port, then closes both sides, with a reset or not.
    fn cut(&self, reset: bool) {
        if self.cut.swap(true, Ordering::SeqCst) {
            return;
        }
        lock(&self.shared.cut_ports).insert(self.client_port);
        self.shared.cuts.fetch_add(1, Ordering::Relaxed);
        if reset {
            for s in [&self.client, &self.server] {
                let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
            }
        }
        self.close_both();
    }

    fn close_both(&self) {
        let _ = self.client.shutdown(Shutdown::Both);
        let _ = self.server.shutdown(Shutdown::Both);
    }
}

/// What passes from a direction's reader to its writer, in order.
enum Piece {
    /// Bytes, to be written on no sooner than `due`.
    Data(Instant, Vec<u8>),
    /// The source ended its stream: half-close the destination.
    End,
    /// The source failed (a reset): reset the destination.
    Reset,
}

fn read_side(link: &Link, up: bool, f: &Faults, tx: SyncSender<Piece>, seed: u64, stream: u64) {
    let (mut src, _) = link.ends(up);
    let mut rng = Rng::new(seed, stream ^ 0x5EED);
    let mut last_due = Instant::now();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let piece = match src.read(&mut buf) {
            Ok(0) => Piece::End,
            Ok(n) => {
                let jitter = f.jitter.mul_f64(rng.unit());
                // Never before the chunk ahead of it: delay, not reorder.
                let due = (Instant::now() + f.latency + jitter).max(last_due);
                last_due = due;
                Piece::Data(due, buf[..n].to_vec())
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => Piece::Reset,
        };
        let last = !matches!(piece, Piece::Data(..));
        if tx.send(piece).is_err() || last {
            return;
        }
    }
}

fn write_side(link: &Link, up: bool, f: &Faults, rx: Receiver<Piece>, seed: u64, stream: u64) {
    let (src, mut dst) = link.ends(up);
    let mut rng = Rng::new(seed, stream);
    let counter = if up {
        &link.shared.bytes_up
    } else {
        &link.shared.bytes_down
    };
    // Pacing: when the next byte may go, at `rate`.
    let mut next_free = Instant::now();
    for piece in rx {
        let bytes = match piece {
            Piece::Data(due, bytes) => {
                sleep_until(due);
                bytes
            }
            Piece::End => {
                let _ = dst.shutdown(Shutdown::Write);
                return;
            }
            Piece::Reset => {
                let _ = socket2::SockRef::from(dst).set_linger(Some(Duration::ZERO));
                let _ = dst.shutdown(Shutdown::Both);
                let _ = src.shutdown(Shutdown::Read);
                return;
            }
        };
        let len = bytes.len();
        // Where this chunk stalls (after its first byte) and where it is cut, if it is.
        let stall_at = (len > 1 && rng.chance(f.stall.0)).then(|| rng.range(1, len - 1));
        let cut_at = rng
            .chance(f.cut)
            .then(|| (rng.range(0, len - 1), rng.chance(0.5)));
        let mut at = 0;
        while at < len {
            if link.cut.load(Ordering::SeqCst) {
                return;
            }
            let mut end = match f.slice {
                Some((a, b)) => (at + rng.range(a, b)).min(len),
                None => len,
            };
            if let Some(s) = stall_at.filter(|&s| s > at) {
                end = end.min(s);
            }
            if let Some((c, reset)) = cut_at {
                if c <= at {
                    link.cut(reset);
                    return;
                }
                end = end.min(c);
            }
            if stall_at == Some(at) {
                link.shared.stalls.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(f.stall.1);
            }
            if f.rate > 0 {
                sleep_until(next_free);
                let cost = Duration::from_secs_f64((end - at) as f64 / f.rate as f64);
                next_free = next_free.max(Instant::now()) + cost;
            }
            if dst.write_all(&bytes[at..end]).is_err() {
                // The destination is gone; the other direction carries its end on.
                let _ = src.shutdown(Shutdown::Read);
                return;
            }
            counter.fetch_add((end - at) as u64, Ordering::Relaxed);
            at = end;
            if at < len && f.pause.1 > Duration::ZERO {
                let p = f.pause.1 - f.pause.0;
                std::thread::sleep(f.pause.0 + p.mul_f64(rng.unit()));
            }
        }
    }
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_profile_parses_and_bad_ones_say_why() {
        let f = Faults::parse(
            "latency=20ms,jitter=10ms,rate=64k,slice=1-16,pause=0-5ms,stall=2%:300ms,cut=2%",
        )
        .unwrap();
        assert_eq!(f.latency, Duration::from_millis(20));
        assert_eq!(f.jitter, Duration::from_millis(10));
        assert_eq!(f.rate, 64 * 1024);
        assert_eq!(f.slice, Some((1, 16)));
        assert_eq!(f.pause, (Duration::ZERO, Duration::from_millis(5)));
        assert_eq!(f.stall, (0.02, Duration::from_millis(300)));
        assert_eq!(f.cut, 0.02);
        assert_eq!(Faults::parse("").unwrap(), Faults::default());
        assert_eq!(Faults::parse("slice=8").unwrap().slice, Some((8, 8)));
        for bad in [
            "latency",
            "latency=fast",
            "slice=0-4",
            "slice=9-2",
            "cut=2",
            "cut=200%",
            "stall=2%",
            "drop=1%",
        ] {
            assert!(Faults::parse(bad).is_err(), "{bad} accepted");
        }
    }

    /// An echo server on a thread: every byte back.
    fn echo_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { return };
                std::thread::spawn(move || {
                    let mut r = s.try_clone().unwrap();
                    let _ = io::copy(&mut r, &mut s);
                    let _ = s.shutdown(Shutdown::Write);
                });
            }
        });
        addr
    }

    #[test]
    fn bytes_arrive_whole_and_in_order_through_every_fault_but_the_cut() {
        let f =
            Faults::parse("latency=1ms,jitter=3ms,rate=1m,slice=1-300,pause=0-1ms,stall=5%:5ms")
                .unwrap();
        let proxy = Proxy::start(echo_server(), f, 7).unwrap();
        let mut c = TcpStream::connect(proxy.addr()).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let sent: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
        let mut w = c.try_clone().unwrap();
        let s2 = sent.clone();
        let writer = std::thread::spawn(move || {
            for part in s2.chunks(777) {
                w.write_all(part).unwrap();
            }
            w.shutdown(Shutdown::Write).unwrap();
        });
        let mut got = Vec::new();
        c.read_to_end(&mut got).unwrap();
        writer.join().unwrap();
        assert!(got == sent, "{} bytes back of {}", got.len(), sent.len());
        let st = proxy.stats();
        assert_eq!((st.bytes_up, st.bytes_down), (50_000, 50_000));
        assert_eq!(st.cuts, 0);
        assert!(!proxy.was_cut(c.local_addr().unwrap().port()));
    }

    #[test]
    fn a_cut_is_marked_before_the_client_sees_it() {
        let proxy = Proxy::start(echo_server(), Faults::parse("cut=100%").unwrap(), 1).unwrap();
        let mut c = TcpStream::connect(proxy.addr()).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        c.write_all(b"hello, a request cut short").unwrap();
        let mut got = Vec::new();
        // A reset or an end: either way the stream stops short.
        let _ = c.read_to_end(&mut got);
        assert!(got.len() < 26, "{got:?}");
        assert!(proxy.was_cut(c.local_addr().unwrap().port()));
        assert_eq!(proxy.stats().cuts, 1);
    }
}
