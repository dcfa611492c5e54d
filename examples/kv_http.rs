//! A key-value store in memory over HTTP, on the request API ([`reactor::http`]):
//!
//! ```text
//! PUT    /kv/KEY  (body: the value)  ->  201 Created, or 204 when it replaced one
//! GET    /kv/KEY                     ->  200 and the value, or 404
//! DELETE /kv/KEY                     ->  204, or 404
//! ```
//!
//! A value larger than `--max-body` (1 MiB by default) gets `413` from the framework;
//! another method on `/kv/KEY` gets `405`, any other path `404`.
//!
//! `cargo run --release --example kv_http` listens on 127.0.0.1:7381; any reactor
//! option may follow `--` (`--addr`, `--threads`, `--max-body`, timeouts, ...).
//!
//! ```sh
//! curl -X PUT --data-binary 'hello' http://127.0.0.1:7381/kv/greeting
//! curl http://127.0.0.1:7381/kv/greeting
//! curl -X DELETE http://127.0.0.1:7381/kv/greeting
//! ```
//!
//! The handler never blocks (one map operation under a mutex), so it runs on the loop.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use clap::Parser;
use reactor::bytes::Bytes;
use reactor::http::{App, Limits, Request, Response};

#[derive(Clone, Default)]
pub struct Kv {
    store: Arc<Mutex<HashMap<String, Bytes>>>,
}

impl Kv {
    pub fn handle(&self, req: Request) -> Response {
        let Some(key) = req.path().strip_prefix("/kv/") else {
            return Response::new(404).body("no such path: try /kv/KEY\n");
        };
        if key.is_empty() || key.contains('/') {
            return Response::new(400).body("a key is one non-empty path segment\n");
        }
        // A poisoned lock only means another request panicked mid-operation; a map
        // insert or remove leaves the map whole either way.
        let mut store = self.store.lock().unwrap_or_else(|e| e.into_inner());
        match req.method() {
            "GET" | "HEAD" => match store.get(key) {
                Some(v) => Response::new(200)
                    .header("Content-Type", "application/octet-stream")
                    .body(v.clone()),
                None => Response::new(404).body("no such key\n"),
            },
            "PUT" => {
                let key = key.to_string();
                match store.insert(key, req.into_body()) {
                    Some(_) => Response::new(204),
                    None => Response::new(201),
                }
            }
            "DELETE" => match store.remove(key) {
                Some(_) => Response::new(204),
                None => Response::new(404).body("no such key\n"),
            },
            _ => Response::new(405)
                .header("Allow", "GET, HEAD, PUT, DELETE")
                .body("method not allowed\n"),
        }
    }

    /// The service, under the configuration's HTTP limits.
    pub fn app(&self, cfg: &reactor::Config) -> App<impl reactor::http::Handler + use<>> {
        let kv = self.clone();
        App::new(move |req| kv.handle(req))
            .limits(Limits {
                max_header_bytes: cfg.max_header_bytes,
                max_headers: cfg.max_headers,
                max_body: cfg.max_body,
            })
            .addresses(false)
    }
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = ["kv_http", "--addr", "127.0.0.1:7381"]
        .into_iter()
        .map(String::from)
        .chain(std::env::args().skip(1));
    let cfg = reactor::Config::parse_from(args);
    if let Err(e) = reactor::server::run_with(&cfg, Kv::default().app(&cfg)) {
        eprintln!("kv_http: {e}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn start(threads: usize, max_body: u64) -> reactor::Server {
        let cfg = reactor::Config {
            addr: "127.0.0.1:0".parse().unwrap(),
            threads,
            max_body,
            ..reactor::Config::default()
        };
        reactor::Server::start_with(&cfg, Kv::default().app(&cfg)).unwrap()
    }

    /// `curl -s -o BODY -w '%{http_code}' ARGS...`: the status and the body.
    fn curl(args: &[&str]) -> (u16, Vec<u8>) {
        let body = std::env::temp_dir().join(format!(
            "kv-http-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let out = Command::new("curl")
            .args(["-s", "--max-time", "20", "-o"])
            .arg(&body)
            .args(["-w", "%{http_code}"])
            .args(args)
            .output()
            .expect("curl runs (apt-get install curl)");
        let code = String::from_utf8_lossy(&out.stdout).parse().unwrap_or(0);
        let got = std::fs::read(&body).unwrap_or_default();
        let _ = std::fs::remove_file(&body);
        (code, got)
    }

    #[test]
    fn put_get_delete_with_curl() {
        let srv = start(2, 1 << 20);
        let url = format!("http://{}/kv/greeting", srv.local_addr());
        assert_eq!(curl(&[&url]).0, 404);
        assert_eq!(curl(&["-X", "PUT", "--data-binary", "hello", &url]).0, 201);
        assert_eq!(curl(&[&url]), (200, b"hello".to_vec()));
        assert_eq!(curl(&["-X", "PUT", "--data-binary", "again", &url]).0, 204);
        // A chunked upload arrives de-chunked.
        let (code, _) = curl(&[
            "-X",
            "PUT",
            "-H",
            "Transfer-Encoding: chunked",
            "--data-binary",
            "chunked value",
            &url,
        ]);
        assert_eq!(code, 204);
        assert_eq!(curl(&[&url]), (200, b"chunked value".to_vec()));
        assert_eq!(curl(&["-I", &url]).0, 200);
        assert_eq!(curl(&["-X", "POST", "-d", "x", &url]).0, 405);
        assert_eq!(curl(&["-X", "DELETE", &url]).0, 204);
        assert_eq!(curl(&["-X", "DELETE", &url]).0, 404);
        assert_eq!(
            curl(&[&format!("http://{}/other", srv.local_addr())]).0,
            404
        );
    }

    #[test]
    fn a_value_past_the_body_limit_gets_413() {
        let srv = start(1, 1024);
        let url = format!("http://{}/kv/big", srv.local_addr());
        let big = "x".repeat(4096);
        assert_eq!(curl(&["-X", "PUT", "--data-binary", &big, &url]).0, 413);
        assert_eq!(curl(&[&url]).0, 404);
        let fits = "y".repeat(1024);
        assert_eq!(curl(&["-X", "PUT", "--data-binary", &fits, &url]).0, 201);
        assert_eq!(curl(&[&url]), (200, fits.into_bytes()));
    }

    /// h2load (HTTP/1.1, 10 connections, pipelined) reads a stored key 2,000 times:
    /// every request succeeds with 200.
    #[test]
    fn h2load_reads_a_key_under_load() {
        if Command::new("h2load").arg("--version").output().is_err() {
            panic!("h2load is missing (apt-get install nghttp2-client)");
        }
        let srv = start(2, 1 << 20);
        let url = format!("http://{}/kv/k", srv.local_addr());
        assert_eq!(curl(&["-X", "PUT", "--data-binary", "v", &url]).0, 201);
        let out = Command::new("h2load")
            .args([
                "--h1", "-n", "2000", "-c", "10", "-m", "4", "-T", "20", &url,
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("2000 succeeded") && text.contains("2000 2xx"),
            "h2load: {text}"
        );
        // The counters are published every 100 ms or so.
        let end = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while srv.stats().requests < 2001 {
            assert!(std::time::Instant::now() < end, "{}", srv.stats());
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}
