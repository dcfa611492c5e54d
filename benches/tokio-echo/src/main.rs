//! A minimal tokio echo server, the peer of reactor's echo protocol in benches/perf.sh.
//!
//! Usage: tokio-echo [--addr 127.0.0.1:8080] [--threads N] [--buffer-size BYTES]
//!
//! `--threads` is the runtime's worker_threads (default 1). Each accepted connection
//! gets a task that reads into a buffer of `--buffer-size` bytes (default 4096, or the
//! environment's TOKIO_ECHO_BUFFER) and writes back what it read, as tokio's own echo
//! example does; TCP_NODELAY is set on every connection. A larger buffer lets a bulk
//! transfer be compared at the same read size as reactor's. The listen backlog is
//! 4,096, as reactor's and the benchmark's nginx.

use std::error::Error;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

struct Args {
    addr: String,
    threads: usize,
    buffer_size: usize,
}

fn positive(flag: &str, n: &str) -> Result<usize, String> {
    n.parse()
        .ok()
        .filter(|&n| n > 0)
        .ok_or(format!("{flag} must be a positive integer"))
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        addr: "127.0.0.1:8080".to_string(),
        threads: 1,
        buffer_size: match std::env::var("TOKIO_ECHO_BUFFER") {
            Ok(n) => positive("TOKIO_ECHO_BUFFER", &n)?,
            Err(_) => 4096,
        },
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--addr" => args.addr = it.next().ok_or("--addr needs an address")?,
            "--threads" => {
                let n = it.next().ok_or("--threads needs a number")?;
                args.threads = positive("--threads", &n)?;
            }
            "--buffer-size" => {
                let n = it.next().ok_or("--buffer-size needs a number")?;
                args.buffer_size = positive("--buffer-size", &n)?;
            }
            "-h" | "--help" => {
                println!(
                    "usage: tokio-echo [--addr HOST:PORT] [--threads N] [--buffer-size BYTES]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
}

fn main() -> Result<(), Box<dyn Error>> {
    let args = parse_args().unwrap_or_else(|e| {
        eprintln!("tokio-echo: {e}");
        std::process::exit(2);
    });
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_io()
        .build()?
        .block_on(serve(&args.addr, args.buffer_size))
}

async fn serve(addr: &str, buffer_size: usize) -> Result<(), Box<dyn Error>> {
    // TcpListener::bind listens with a backlog of 1,024; reactor and the benchmark's
    // nginx use 4,096, and a burst of 10,000 connects overflows the smaller queue.
    let addr = addr.parse()?;
    let socket = match addr {
        std::net::SocketAddr::V4(_) => TcpSocket::new_v4()?,
        std::net::SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    let listener = socket.listen(4096)?;
    eprintln!("tokio-echo: listening on {}", listener.local_addr()?);
    loop {
        let (mut socket, _) = match listener.accept().await {
            Ok(conn) => conn,
            // Out of descriptors, or a connection reset before accept: keep serving.
            Err(e) => {
                eprintln!("tokio-echo: accept: {e}");
                tokio::task::yield_now().await;
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        tokio::spawn(async move {
            let mut buf = vec![0; buffer_size];
            loop {
                let n = match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if socket.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        });
    }
}
