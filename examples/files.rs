//! A service whose handler blocks: each request names a file, and a worker reads it
//! from disk (a blocking `std::fs::read`) and answers with its size and line count. The
//! [`Codec`] decodes and encodes on the loop; only the file read runs on the worker
//! pool, so a slow disk holds up a worker, never the other connections.
//!
//! ```text
//! notes.txt    ->  OK notes.txt 1234 bytes 56 lines
//! missing.txt  ->  ERR missing.txt: No such file or directory (os error 2)
//! ../secret    ->  ERR ../secret: names a file in the served folder only
//! ```
//!
//! `cargo run --release --example files -- DIR` serves DIR (default: the current folder)
//! on 127.0.0.1:7380 with 4 workers growing to 16; reactor options may follow DIR
//! (`--workers`, `--workers-max`, `--handler-timeout`, ...).
//!
//! ```sh
//! printf 'Cargo.toml\nREADME.md\n' | nc -q1 127.0.0.1 7380
//! ```

use std::path::{Path, PathBuf};

use clap::Parser;
use reactor::bytes::BytesMut;
use reactor::protocol::{Cx, Decoded, Next};
use reactor::service::{Calls, Codec, Failure, Pooled};

/// Longest request line.
const MAX_LINE: usize = 4096;

/// One file name per line in, one line out.
#[derive(Clone)]
pub struct FileLines;

impl Codec for FileLines {
    type State = ();
    type Request = String;
    type Response = String;

    fn decode(&self, _: &mut (), input: &[u8], out: &mut Calls<String>, cx: &Cx) -> Decoded {
        let mut d = Decoded::default();
        loop {
            let rest = &input[d.consumed..];
            let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
                if rest.len() > MAX_LINE {
                    out.out().extend_from_slice(b"ERR line too long\n");
                    d.requests += 1;
                    d.errors += 1;
                    d.consumed = input.len();
                    d.next = Next::Close;
                }
                return d;
            };
            if d.at_limit(cx, out.out()) {
                return d;
            }
            let line = rest[..nl].strip_suffix(b"\r").unwrap_or(&rest[..nl]);
            match std::str::from_utf8(line) {
                Ok(name) => out.call(name.to_string()),
                Err(_) => {
                    // Answered at once, yet still after the answers owed before it.
                    out.out().extend_from_slice(b"ERR a file name is UTF-8\n");
                    d.errors += 1;
                }
            }
            d.consumed += nl + 1;
            d.requests += 1;
        }
    }

    fn encode(&self, answer: String, out: &mut BytesMut, _: &Cx) {
        out.extend_from_slice(answer.as_bytes());
        out.extend_from_slice(b"\n");
    }

    fn encode_failure(&self, f: Failure, out: &mut BytesMut, _: &Cx) {
        out.extend_from_slice(format!("ERR {f}\n").as_bytes());
    }
}

/// The blocking part: runs on a worker.
pub fn describe(dir: &Path, name: &str) -> String {
    let plain = Path::new(name)
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)));
    if name.is_empty() || !plain {
        return format!("ERR {name}: names a file in the served folder only");
    }
    match std::fs::read(dir.join(name)) {
        Ok(bytes) => {
            let lines = bytes.iter().filter(|&&b| b == b'\n').count();
            format!("OK {name} {} bytes {lines} lines", bytes.len())
        }
        Err(e) => format!("ERR {name}: {e}"),
    }
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let mut rest: Vec<String> = std::env::args().skip(1).collect();
    let dir = match rest.first() {
        Some(d) if !d.starts_with('-') => PathBuf::from(rest.remove(0)),
        _ => PathBuf::from("."),
    };
    let args = [
        "files",
        "--addr",
        "127.0.0.1:7380",
        "--workers",
        "4",
        "--workers-max",
        "16",
    ]
    .into_iter()
    .map(String::from)
    .chain(rest);
    let cfg = reactor::Config::parse_from(args);
    log::info!("serving the files of {}", dir.display());
    let service = move |name: String| describe(&dir, &name);
    if let Err(e) = reactor::server::run_with(&cfg, Pooled::new(FileLines, service)) {
        eprintln!("files: {e}");
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
    fn files_are_read_on_the_pool_and_answered_in_order() {
        let dir = std::env::temp_dir().join(format!("reactor-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("two.txt"), "one\ntwo\n").unwrap();
        std::fs::write(dir.join("empty"), "").unwrap();
        let cfg = reactor::Config {
            addr: "127.0.0.1:0".parse().unwrap(),
            threads: 1,
            workers: 2,
            workers_max: 4,
            ..reactor::Config::default()
        };
        let served = dir.clone();
        let srv = reactor::Server::start_with(
            &cfg,
            Pooled::new(FileLines, move |n: String| describe(&served, &n)),
        )
        .unwrap();
        let c = TcpStream::connect(srv.local_addr()).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        (&c).write_all(b"two.txt\nmissing\n../two.txt\n\xff\nempty\n/etc/passwd\n")
            .unwrap();
        let mut r = BufReader::new(c);
        let got: Vec<String> = (0..6)
            .map(|_| {
                let mut l = String::new();
                r.read_line(&mut l).unwrap();
                l
            })
            .collect();
        assert_eq!(got[0], "OK two.txt 8 bytes 2 lines\n");
        assert!(got[1].starts_with("ERR missing: "), "{}", got[1]);
        assert!(got[2].contains("served folder only"), "{}", got[2]);
        assert_eq!(got[3], "ERR a file name is UTF-8\n");
        assert_eq!(got[4], "OK empty 0 bytes 0 lines\n");
        assert!(got[5].contains("served folder only"), "{}", got[5]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
