//! Files over HTTP, read on the worker pool: `GET /NAME` answers the file NAME of the
//! served folder with a `Content-Type` by its extension. The read (`std::fs::read`)
//! blocks, so the handler runs on the pool ([`App::on_pool`]): a slow disk holds up a
//! worker, never the other connections.
//!
//! ```text
//! GET /notes.txt     ->  200, text/plain; charset=utf-8, the file
//! GET /missing.txt   ->  404
//! GET /../secret     ->  403 (only files of the served folder, no `..`)
//! POST /notes.txt    ->  405
//! ```
//!
//! `cargo run --release --example files -- DIR` serves DIR (default: the current folder)
//! on 127.0.0.1:7380 with 4 workers growing to 16; reactor options may follow DIR
//! (`--addr`, `--workers`, `--workers-max`, `--handler-timeout`, ...).
//!
//! ```sh
//! curl -i http://127.0.0.1:7380/Cargo.toml
//! ```

use std::path::{Component, Path, PathBuf};

use clap::Parser;
use reactor::http::{App, Request, Response};

/// The media type of a file, by its extension.
pub fn content_type(name: &str) -> &'static str {
    let ext = Path::new(name)
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    match ext.as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" => "text/javascript; charset=utf-8",
        "json" => "application/json",
        "txt" | "md" | "toml" | "rs" | "sh" => "text/plain; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "pdf" => "application/pdf",
        _ => "application/octet-stream",
    }
}

/// The blocking part: runs on a worker.
pub fn serve(dir: &Path, req: Request) -> Response {
    if !matches!(req.method(), "GET" | "HEAD") {
        return Response::new(405).header("Allow", "GET, HEAD");
    }
    let name = req.path().trim_start_matches('/');
    let plain = Path::new(name)
        .components()
        .all(|c| matches!(c, Component::Normal(_)));
    if name.is_empty() || !plain {
        return Response::new(403).body("only the files of the served folder\n");
    }
    match std::fs::read(dir.join(name)) {
        Ok(bytes) => Response::new(200)
            .header("Content-Type", content_type(name))
            .body(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Response::new(404),
        Err(e) => {
            log::warn!("{name}: {e}");
            Response::new(500)
        }
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
    let app = App::new(move |req| serve(&dir, req)).addresses(false);
    if let Err(e) = reactor::server::run_with(&cfg, app.on_pool()) {
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

    /// Reads one response: its status, its headers (lower-cased names) and its body.
    fn response(r: &mut impl BufRead) -> (u16, Vec<(String, String)>, Vec<u8>) {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let status = line.split(' ').nth(1).unwrap().parse().unwrap();
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            r.read_line(&mut h).unwrap();
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (n, v) = h.split_once(':').unwrap();
            headers.push((n.to_ascii_lowercase(), v.trim().to_string()));
        }
        let len: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .map_or(0, |(_, v)| v.parse().unwrap());
        let mut body = vec![0; len];
        r.read_exact(&mut body).unwrap();
        (status, headers, body)
    }

    #[test]
    fn files_are_read_on_the_pool_and_answered_in_order() {
        let dir = std::env::temp_dir().join(format!("reactor-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("two.txt"), "one\ntwo\n").unwrap();
        std::fs::write(dir.join("page.html"), "<p>hi</p>").unwrap();
        std::fs::write(dir.join("blob"), [0u8, 1, 2]).unwrap();
        let cfg = reactor::Config {
            addr: "127.0.0.1:0".parse().unwrap(),
            threads: 1,
            workers: 2,
            workers_max: 4,
            ..reactor::Config::default()
        };
        let served = dir.clone();
        let app = App::new(move |req| serve(&served, req));
        let srv = reactor::Server::start_with(&cfg, app.on_pool()).unwrap();
        let c = TcpStream::connect(srv.local_addr()).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        // Pipelined: the answers come back in request order whatever the workers do.
        for path in ["/two.txt", "/missing", "/../two.txt", "/page.html", "/blob"] {
            write!(&c, "GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        }
        (&c).write_all(b"POST /two.txt HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
            .unwrap();
        let mut r = BufReader::new(c);
        let ct = |h: &[(String, String)]| {
            h.iter()
                .find(|(n, _)| n == "content-type")
                .map(|(_, v)| v.clone())
        };
        let (s, h, b) = response(&mut r);
        assert_eq!((s, &b[..]), (200, &b"one\ntwo\n"[..]));
        assert_eq!(ct(&h).as_deref(), Some("text/plain; charset=utf-8"));
        assert_eq!(response(&mut r).0, 404);
        assert_eq!(response(&mut r).0, 403);
        let (s, h, b) = response(&mut r);
        assert_eq!((s, &b[..]), (200, &b"<p>hi</p>"[..]));
        assert_eq!(ct(&h).as_deref(), Some("text/html; charset=utf-8"));
        let (s, h, b) = response(&mut r);
        assert_eq!((s, &b[..]), (200, &[0u8, 1, 2][..]));
        assert_eq!(ct(&h).as_deref(), Some("application/octet-stream"));
        assert_eq!(response(&mut r).0, 405);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
