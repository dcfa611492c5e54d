//! reactor-client: send messages to a reactor server and print each reply on its own
//! line, in the spirit of `redis-cli`.
//!
//! ```sh
//! reactor-client --addr 127.0.0.1:9000 --protocol json hello world
//! printf 'a\nb\n' | reactor-client --addr 127.0.0.1:7000 --protocol echo
//! reactor-client --addr 127.0.0.1:8080 --protocol http / /index.html
//! ```
//!
//! Each argument (or, with none, each line of standard input) is one request: a JSON
//! `Val` (the reply's `Val` is printed), echo bytes (the echo is printed), or an HTTP
//! path (the body is printed). A timeout, a refused connection or a bad reply exits 1
//! with the reason on standard error.
//!
//! `--tls` (with `--ca FILE`, or `--insecure` for a self-signed certificate) talks
//! TLS over one blocking connection (rustls), one request and reply at a time.

use std::io::{self, BufRead, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use clap::{Parser, ValueEnum};
use reactor::client::{self, Codec, Echo, Error, Http, Json, Options, Pool};
use reactor::tls::{self, Trust};
use reactor::wire;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Proto {
    Echo,
    Http,
    Json,
}

/// Send each MESSAGE (or each line of standard input) to a reactor server; print each
/// reply on its own line.
#[derive(Parser, Debug)]
#[command(name = "reactor-client", version)]
struct Opts {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: String,
    #[arg(long, value_enum, default_value_t = Proto::Http)]
    protocol: Proto,
    /// How long to wait for the connection and for each reply ("5s", "250ms").
    #[arg(long, default_value = "5s", value_parser = reactor::config::parse_duration)]
    timeout: Duration,
    /// TLS to the server (needs --ca or --insecure).
    #[arg(long)]
    tls: bool,
    /// TLS: accept the server certificates that chain to this PEM file.
    #[arg(long, requires = "tls", conflicts_with = "insecure")]
    ca: Option<std::path::PathBuf>,
    /// TLS: accept any server certificate (a self-signed one).
    #[arg(long, requires = "tls")]
    insecure: bool,
    /// TLS: the server name to send and check (default: the host of --addr).
    #[arg(long, requires = "tls")]
    server_name: Option<String>,
    /// Messages: JSON values, echo text or HTTP paths. None: read lines from stdin.
    messages: Vec<String>,
}

fn main() {
    let opts = Opts::parse();
    if opts.tls && opts.ca.is_none() && !opts.insecure {
        eprintln!("reactor-client: --tls needs --ca FILE or --insecure");
        std::process::exit(2);
    }
    let result = if opts.tls {
        run_tls(&opts)
    } else {
        run_plain(&opts)
    };
    if let Err(e) = result {
        eprintln!("reactor-client: {}: {e}", opts.addr);
        std::process::exit(1);
    }
}

fn run_plain(opts: &Opts) -> Result<(), String> {
    match opts.protocol {
        Proto::Echo => run(opts, Echo, |m| m.into_bytes(), |r| r),
        Proto::Http => run(opts, Http::default(), |m| m, |r| r.body),
        Proto::Json => {
            let mut uid = 0u64;
            run(
                opts,
                Json::default(),
                move |m| {
                    uid += 1;
                    client::json_request(uid.to_string(), m)
                },
                |r| {
                    let val = r.val.unwrap_or_default();
                    val.into_bytes()
                },
            )
        }
    }
}

/// Each message (argument or line of stdin), in order.
fn for_each_message(
    opts: &Opts,
    mut one: impl FnMut(String) -> Result<(), String>,
) -> Result<(), String> {
    if opts.messages.is_empty() {
        for line in io::stdin().lock().lines() {
            one(line.map_err(|e| format!("stdin: {e}"))?)?;
        }
    } else {
        for m in &opts.messages {
            one(m.clone())?;
        }
    }
    Ok(())
}

/// --tls: one blocking rustls connection; each request is written, then its reply read
/// and framed with `reactor::wire`.
fn run_tls(opts: &Opts) -> Result<(), String> {
    let trust = match &opts.ca {
        Some(ca) => Trust::Ca(ca.clone()),
        None => Trust::Any,
    };
    let alpn = match opts.protocol {
        Proto::Http => vec![b"http/1.1".to_vec()],
        _ => Vec::new(),
    };
    let cfg = tls::client_config(&trust, &alpn).map_err(|e| e.to_string())?;
    let addr = opts
        .addr
        .to_socket_addrs()
        .map_err(|e| e.to_string())?
        .next()
        .ok_or("no address")?;
    let host = opts
        .addr
        .rsplit_once(':')
        .map_or(opts.addr.as_str(), |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let name = match &opts.server_name {
        Some(n) => tls::server_name(Some(n), addr.ip()),
        None if host.parse::<std::net::IpAddr>().is_ok() => tls::server_name(None, addr.ip()),
        None => tls::server_name(Some(&host), addr.ip()),
    }
    .map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect_timeout(&addr, opts.timeout).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(opts.timeout))
        .and_then(|_| tcp.set_write_timeout(Some(opts.timeout)))
        .and_then(|_| tcp.set_nodelay(true))
        .map_err(|e| e.to_string())?;
    let conn = rustls::ClientConnection::new(cfg, name).map_err(|e| e.to_string())?;
    let mut s = rustls::StreamOwned::new(conn, tcp);
    while s.conn.is_handshaking() {
        s.conn
            .complete_io(&mut s.sock)
            .map_err(|e| format!("TLS handshake: {e}"))?;
    }
    let mut rbuf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    let mut out = io::stdout().lock();
    let mut uid = 0u64;
    for_each_message(opts, |m| {
        let mut req = Vec::new();
        match opts.protocol {
            Proto::Echo => req.extend_from_slice(m.as_bytes()),
            Proto::Http => wire::http::encode_get(&m, &host, &mut req),
            Proto::Json => {
                uid += 1;
                wire::json::encode(&uid.to_string(), &m, &mut req);
            }
        }
        s.write_all(&req)
            .and_then(|_| s.flush())
            .map_err(|e| format!("write: {e}"))?;
        let mut shown = loop {
            let framed = match opts.protocol {
                Proto::Echo => wire::echo::frame(&rbuf, &req)?.map(|n| (n, rbuf[..n].to_vec())),
                Proto::Http => wire::http::frame(&rbuf)?.map(|f| (f.len, rbuf[f.body].to_vec())),
                Proto::Json => wire::json::frame(&rbuf, wire::json::MAX_MESSAGE)?
                    .map(|(n, r)| (n, r.val.unwrap_or_default().into_bytes())),
            };
            if let Some((n, shown)) = framed {
                rbuf.drain(..n);
                break shown;
            }
            match s.read(&mut chunk) {
                Ok(0) => return Err("the server closed the connection".into()),
                Ok(n) => rbuf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err("timed out waiting for the reply".into());
                }
                Err(e) => return Err(format!("read: {e}")),
            }
        };
        shown.push(b'\n');
        out.write_all(&shown)
            .and_then(|_| out.flush())
            .map_err(|e| format!("stdout: {e}"))
    })?;
    s.conn.send_close_notify();
    let _ = s.flush();
    Ok(())
}

fn run<C: Codec>(
    opts: &Opts,
    codec: C,
    mut request: impl FnMut(String) -> C::Request,
    show: impl Fn(C::Reply) -> Vec<u8>,
) -> Result<(), String> {
    let t = opts.timeout;
    let pool = Pool::new(
        opts.addr.as_str(),
        codec,
        Options {
            max_size: 1,
            response_timeout: Some(t),
            dial_timeout: t,
            wait_timeout: t,
            ..Options::default()
        },
    )
    .map_err(|e| e.to_string())?;
    let mut out = io::stdout().lock();
    let one = |m: String| -> Result<(), String> {
        let reply = pool.call(request(m)).map_err(|e: Error| e.to_string())?;
        let mut bytes = show(reply);
        bytes.push(b'\n');
        out.write_all(&bytes)
            .and_then(|_| out.flush())
            .map_err(|e| format!("stdout: {e}"))
    };
    for_each_message(opts, one)?;
    pool.close();
    Ok(())
}
