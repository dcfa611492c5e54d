//! A chat room over lines of text, on the connection hooks and pushes
//! ([`reactor::connection`]): every line a client sends reaches every other client, on
//! every shard, prefixed with the sender's id.
//!
//! ```text
//! (connect)      <-  * welcome 0:3.1, 2 here
//! hi all         ->  (others get)  0:3.1: hi all
//! ```
//!
//! `cargo run --release --example chat` listens on 127.0.0.1:7382; any reactor option
//! may follow `--` (`--addr`, `--threads`, `--push-limit`, ...). Try it with two
//! terminals running `nc 127.0.0.1 7382`.
//!
//! A client that does not read cannot stall the others: a line pushed to a connection
//! that owes its client `--push-limit` bytes (1 MiB) is dropped for that client alone
//! (and counted, `pushes_refused`), so the server holds at most about that much
//! for it, however much the room says. The idle timeout is off: a chat connection may
//! stay quiet for hours. Lines are at most 4 KiB (longer: an error and a close).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use clap::Parser;
use reactor::bytes::{Bytes, BytesMut};
use reactor::connection::{Closed, ConnId, ConnInfo};
use reactor::protocol::{Cx, Decoded, Next, Protocol};

/// Longest line.
const MAX_LINE: usize = 4096;

#[derive(Clone, Default)]
pub struct Chat {
    members: Arc<Mutex<BTreeSet<ConnId>>>,
}

impl Chat {
    fn members(&self) -> std::sync::MutexGuard<'_, BTreeSet<ConnId>> {
        self.members.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends `line` to everyone but `from`: a copy of the member list is taken so
    /// that no lock is held while pushing.
    fn broadcast(&self, from: ConnId, line: Bytes, cx: &Cx) {
        let to: Vec<ConnId> = self
            .members()
            .iter()
            .copied()
            .filter(|&m| m != from)
            .collect();
        for m in to {
            // A full inbox or a gone member: the line is lost for that member only.
            let _ = cx.push(m, line.clone());
        }
    }
}

impl Protocol for Chat {
    type State = ();

    fn open(&self, _: &mut (), conn: &ConnInfo, out: &mut BytesMut, _: &Cx) -> bool {
        let n = {
            let mut m = self.members();
            m.insert(conn.id);
            m.len()
        };
        out.extend_from_slice(format!("* welcome {}, {n} here\n", conn.id).as_bytes());
        true
    }

    fn close(&self, _: &mut (), conn: ConnId, _: Closed) {
        self.members().remove(&conn);
    }

    fn decode(&self, _: &mut (), input: &[u8], out: &mut BytesMut, cx: &Cx) -> Decoded {
        let mut d = Decoded::default();
        loop {
            let rest = &input[d.consumed..];
            let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
                if rest.len() > MAX_LINE {
                    out.extend_from_slice(b"* line too long\n");
                    d.requests += 1;
                    d.errors += 1;
                    d.consumed = input.len();
                    d.next = Next::Close;
                }
                return d;
            };
            let text = rest[..nl].strip_suffix(b"\r").unwrap_or(&rest[..nl]);
            let mut line = BytesMut::with_capacity(text.len() + 16);
            line.extend_from_slice(format!("{}: ", cx.conn()).as_bytes());
            line.extend_from_slice(text);
            line.extend_from_slice(b"\n");
            self.broadcast(cx.conn(), line.freeze(), cx);
            d.consumed += nl + 1;
            d.requests += 1;
        }
    }
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = ["chat", "--addr", "127.0.0.1:7382", "--idle-timeout", "0"]
        .into_iter()
        .map(String::from)
        .chain(std::env::args().skip(1));
    let cfg = reactor::Config::parse_from(args);
    if let Err(e) = reactor::server::run_with(&cfg, Chat::default()) {
        eprintln!("chat: {e}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpStream;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    const DEADLINE: Duration = Duration::from_secs(30);

    fn start(threads: usize) -> reactor::Server {
        let cfg = reactor::Config {
            addr: "127.0.0.1:0".parse().unwrap(),
            threads,
            idle_timeout: Duration::ZERO,
            ..reactor::Config::default()
        };
        reactor::Server::start_with(&cfg, Chat::default()).unwrap()
    }

    fn join(addr: std::net::SocketAddr) -> (TcpStream, BufReader<TcpStream>, String) {
        let c = TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut r = BufReader::new(c.try_clone().unwrap());
        let mut welcome = String::new();
        r.read_line(&mut welcome).unwrap();
        let id = welcome
            .strip_prefix("* welcome ")
            .and_then(|w| w.split(',').next())
            .expect("a welcome line")
            .to_string();
        (c, r, id)
    }

    /// A client that never reads, with a small receive buffer, in a room of four
    /// readers on two shards: every reader gets every other reader's lines, in order,
    /// while the lines for the stuck client are dropped past the push limit; the
    /// bytes it is sent stay bounded, far below what the room said.
    #[test]
    fn every_reader_gets_every_line_while_a_non_reader_is_stuck() {
        let srv = start(2);
        let addr = srv.local_addr();
        let stuck =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        stuck.set_recv_buffer_size(4096).unwrap();
        stuck.connect(&addr.into()).unwrap();
        let mut stuck: TcpStream = stuck.into();
        let readers: Vec<_> = (0..4).map(|_| join(addr)).collect();
        let ids: Vec<String> = readers.iter().map(|r| r.2.clone()).collect();
        let wait_members = Instant::now();
        while srv.stats().accepted < 5 {
            assert!(wait_members.elapsed() < DEADLINE);
            std::thread::sleep(Duration::from_millis(5));
        }
        // Reader 0 says 16 MB (4,000 lines of 4 KB), far more than the kernel's
        // buffers hold for the stuck client (a few MB); the others say a little. Like
        // a person, reader 0 does not talk faster than the room listens: it stays
        // at most 128 lines (512 KB) ahead of the slowest reader, which the kernel's
        // buffers and the mark hold. The stuck client is not waited for.
        let lines = [4000usize, 100, 100, 100];
        let size = [4096usize, 100, 100, 100];
        let heard: Arc<Vec<AtomicUsize>> = Arc::new((0..4).map(|_| AtomicUsize::new(0)).collect());
        let mut threads = Vec::new();
        for (i, (c, mut r, _)) in readers.into_iter().enumerate() {
            let ids = ids.clone();
            let heard = heard.clone();
            threads.push(std::thread::spawn(move || {
                let mut w = std::io::BufWriter::new(c.try_clone().unwrap());
                let heard_w = heard.clone();
                let writer = std::thread::spawn(move || {
                    let filler = "z".repeat(size[i] - 10);
                    for n in 0..lines[i] {
                        if i == 0 && n % 32 == 0 {
                            w.flush().unwrap();
                            let end = Instant::now() + DEADLINE;
                            while (1..4).any(|j| heard_w[j].load(Ordering::Acquire) + 128 < n) {
                                assert!(Instant::now() < end, "the room stopped listening");
                                std::thread::sleep(Duration::from_millis(1));
                            }
                        }
                        writeln!(w, "{n:>8} {filler}").unwrap();
                    }
                    w.flush().unwrap();
                });
                // Every other reader's lines, each sender's in order.
                let mut next = vec![0usize; ids.len()];
                let want: usize = (0..ids.len()).filter(|&s| s != i).map(|s| lines[s]).sum();
                let mut got = 0;
                let end = Instant::now() + DEADLINE;
                while got < want {
                    assert!(Instant::now() < end, "reader {i}: {got} lines only");
                    let mut l = String::new();
                    r.read_line(&mut l).unwrap();
                    let (from, text) = l.split_once(": ").expect("a chat line");
                    let s = ids
                        .iter()
                        .position(|id| id == from)
                        .expect("a known sender");
                    assert_ne!(s, i, "a client does not get its own lines");
                    let n: usize = text.split_whitespace().next().unwrap().parse().unwrap();
                    assert_eq!(n, next[s], "reader {i}: lines of {from} out of order");
                    assert_eq!(l.len(), from.len() + 2 + size[s], "a whole line");
                    next[s] += 1;
                    if s == 0 {
                        heard[i].store(next[0], Ordering::Release);
                    }
                    got += 1;
                }
                writer.join().unwrap();
                c
            }));
        }
        let readers: Vec<TcpStream> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        // Every line was pushed to 4 members (3 readers and the stuck client).
        let total: usize = lines.iter().sum::<usize>() * 4;
        let end = Instant::now() + DEADLINE;
        let s = loop {
            let s = srv.stats();
            if s.pushes + s.pushes_refused == total as u64 {
                break s;
            }
            assert!(Instant::now() < end, "pushes unaccounted for: {s}");
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(
            s.pushes_refused > 0,
            "the stuck client was never refused: {s}"
        );
        // Now read what the stuck client was sent: bounded by the push limit and
        // the kernel's buffers, not by the 16 MB the room said to it.
        stuck
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut held = 0usize;
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = stuck.read(&mut buf) {
            if n == 0 {
                break;
            }
            held += n;
        }
        let offered: usize = (0..4).map(|i| lines[i] * (size[i] + 5)).sum();
        eprintln!("the stuck client was sent {held} of {offered} bytes: {s}");
        assert!(held < offered / 2, "{held} of {offered} bytes");
        drop(readers);
    }

    #[test]
    fn a_line_reaches_a_client_on_the_other_shard_and_leavers_are_forgotten() {
        let srv = start(2);
        let (mut a, ra, ida) = join(srv.local_addr());
        let mut others: Vec<_> = (0..3).map(|_| join(srv.local_addr())).collect();
        a.write_all(b"hello room\n").unwrap();
        for (_, r, _) in others.iter_mut() {
            let mut l = String::new();
            r.read_line(&mut l).unwrap();
            assert_eq!(l, format!("{ida}: hello room\n"));
        }
        // The others leave; a's next line reaches nobody and a stays served.
        let end = Instant::now() + DEADLINE;
        drop(others);
        while srv.stats().closed < 3 {
            assert!(Instant::now() < end);
            std::thread::sleep(Duration::from_millis(5));
        }
        let (_b, mut rb, _) = join(srv.local_addr());
        a.write_all(b"still here\n").unwrap();
        let mut l = String::new();
        rb.read_line(&mut l).unwrap();
        assert_eq!(l, format!("{ida}: still here\n"));
        assert_eq!(srv.stats().pushes_refused, 0);
        let _ = ra.get_ref();
    }
}
