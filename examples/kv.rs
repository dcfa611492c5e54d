//! A key-value store in memory over a line protocol, answered on the loop: a
//! [`Protocol`] whose work never blocks, so it needs no worker pool.
//!
//! ```text
//! SET key value   ->  OK
//! GET key         ->  value   (or: (nil))
//! DEL key         ->  1       (or: 0)
//! ```
//!
//! `cargo run --release --example kv` listens on 127.0.0.1:7379; any reactor option
//! may follow `--` (`--addr`, `--threads`, timeouts, limits).
//!
//! ```sh
//! printf 'SET a 1\nGET a\nDEL a\nGET a\n' | nc -q1 127.0.0.1 7379
//! ```
//!
//! The store is one `HashMap` behind a mutex shared by the shards: each command holds
//! the lock for one map operation, which never waits on anything but another such
//! operation. A store whose operations could wait (on a disk, a network) belongs on the
//! worker pool instead: see the `files` example.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use clap::Parser;
use reactor::bytes::BytesMut;
use reactor::protocol::{Cx, Decoded, Next, Protocol};

/// Longest command line; past it the client gets an error and a close.
const MAX_LINE: usize = 64 * 1024;

#[derive(Clone, Default)]
pub struct Kv {
    store: Arc<Mutex<HashMap<Vec<u8>, Vec<u8>>>>,
}

impl Kv {
    fn run(&self, line: &[u8], out: &mut BytesMut) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let mut parts = line.splitn(3, |&b| b == b' ');
        let cmd = parts.next().unwrap_or_default();
        let (key, value) = (parts.next(), parts.next());
        // A poisoned lock only means another command panicked mid-operation; a map
        // insert or remove leaves the map whole either way.
        let mut store = self.store.lock().unwrap_or_else(|e| e.into_inner());
        let answer: &[u8] = match (cmd, key, value) {
            (b"SET", Some(k), Some(v)) => {
                store.insert(k.to_vec(), v.to_vec());
                b"OK"
            }
            (b"GET", Some(k), None) => match store.get(k) {
                Some(v) => {
                    out.extend_from_slice(v);
                    b""
                }
                None => b"(nil)",
            },
            (b"DEL", Some(k), None) => {
                if store.remove(k).is_some() {
                    b"1"
                } else {
                    b"0"
                }
            }
            _ => b"ERR unknown command (SET key value, GET key, DEL key)",
        };
        out.extend_from_slice(answer);
        out.extend_from_slice(b"\n");
    }
}

impl Protocol for Kv {
    type State = ();

    fn decode(&self, _: &mut (), input: &[u8], out: &mut BytesMut, cx: &Cx) -> Decoded {
        let mut d = Decoded::default();
        loop {
            let rest = &input[d.consumed..];
            let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
                if rest.len() > MAX_LINE {
                    out.extend_from_slice(b"ERR line too long\n");
                    d.requests += 1;
                    d.errors += 1;
                    d.consumed = input.len();
                    d.next = Next::Close;
                }
                return d;
            };
            if d.at_limit(cx, out) {
                return d;
            }
            self.run(&rest[..nl], out);
            d.consumed += nl + 1;
            d.requests += 1;
        }
    }
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = ["kv", "--addr", "127.0.0.1:7379"]
        .into_iter()
        .map(String::from)
        .chain(std::env::args().skip(1));
    let cfg = reactor::Config::parse_from(args);
    if let Err(e) = reactor::server::run_with(&cfg, Kv::default()) {
        eprintln!("kv: {e}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpStream;
    use std::time::Duration;

    #[test]
    fn set_get_del_over_a_socket_shared_by_two_connections() {
        let cfg = reactor::Config {
            addr: "127.0.0.1:0".parse().unwrap(),
            threads: 2,
            ..reactor::Config::default()
        };
        let srv = reactor::Server::start_with(&cfg, Kv::default()).unwrap();
        let talk = |script: &[u8], answers: usize| -> Vec<String> {
            let c = TcpStream::connect(srv.local_addr()).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            (&c).write_all(script).unwrap();
            let mut r = BufReader::new(c);
            (0..answers)
                .map(|_| {
                    let mut l = String::new();
                    r.read_line(&mut l).unwrap();
                    l
                })
                .collect()
        };
        assert_eq!(
            talk(b"SET greeting hello world\nGET greeting\nGET nothing\n", 3),
            ["OK\n", "hello world\n", "(nil)\n"]
        );
        // Another connection (maybe another shard) sees the same store.
        assert_eq!(
            talk(
                b"GET greeting\nDEL greeting\nDEL greeting\nGET greeting\n",
                4
            ),
            ["hello world\n", "1\n", "0\n", "(nil)\n"]
        );
        assert!(talk(b"FLY away\n", 1)[0].starts_with("ERR unknown command"));
    }

    #[test]
    fn a_line_over_the_limit_gets_an_error_and_a_close() {
        let cfg = reactor::Config {
            addr: "127.0.0.1:0".parse().unwrap(),
            threads: 1,
            ..reactor::Config::default()
        };
        let srv = reactor::Server::start_with(&cfg, Kv::default()).unwrap();
        let mut c = TcpStream::connect(srv.local_addr()).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let _ = c.write_all(&vec![b'x'; MAX_LINE + 10]);
        let mut got = String::new();
        let _ = std::io::Read::read_to_string(&mut c, &mut got);
        assert_eq!(got, "ERR line too long\n");
    }
}
