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

use std::io::{self, BufRead, Write};
use std::time::Duration;

use clap::{Parser, ValueEnum};
use reactor::client::{self, Codec, Echo, Error, Http, Json, Options, Pool};

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
    /// Messages: JSON values, echo text or HTTP paths. None: read lines from stdin.
    messages: Vec<String>,
}

fn main() {
    let opts = Opts::parse();
    let result = match opts.protocol {
        Proto::Echo => run(&opts, Echo, |m| m.into_bytes(), |r| r),
        Proto::Http => run(&opts, Http::default(), |m| m, |r| r.body),
        Proto::Json => {
            let mut uid = 0u64;
            run(
                &opts,
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
    };
    if let Err(e) = result {
        eprintln!("reactor-client: {}: {e}", opts.addr);
        std::process::exit(1);
    }
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
    let mut one = |m: String| -> Result<(), String> {
        let reply = pool.call(request(m)).map_err(|e: Error| e.to_string())?;
        let mut bytes = show(reply);
        bytes.push(b'\n');
        out.write_all(&bytes)
            .and_then(|_| out.flush())
            .map_err(|e| format!("stdout: {e}"))
    };
    if opts.messages.is_empty() {
        for line in io::stdin().lock().lines() {
            one(line.map_err(|e| format!("stdin: {e}"))?)?;
        }
    } else {
        for m in &opts.messages {
            one(m.clone())?;
        }
    }
    pool.close();
    Ok(())
}
