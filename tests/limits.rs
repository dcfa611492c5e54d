mod common;

use std::io::Read;
use std::time::Duration;

use common::*;

#[test]
fn start_up_line_reports_address_limits_and_open_files() {
    let srv = Server::start("--protocol echo --max-connections 123");
    let line = srv.wait_for_line(|l| l.contains("listening on")).unwrap();
    for want in [
        "protocol=echo",
        "max_connections=123",
        "idle_timeout=60s",
        "read_timeout=30s",
        "high_water=65536",
        "open_files=",
    ] {
        assert!(line.contains(want), "{want} missing from {line}");
    }
}

#[test]
fn the_soft_open_files_limit_is_raised_to_the_hard_one_and_too_many_connections_warn() {
    let srv =
        Server::start_with_shell("ulimit -Sn 100;", "--protocol echo --max-connections 50000");
    let line = srv.wait_for_line(|l| l.contains("listening on")).unwrap();
    let hard = rustix_hard_limit();
    assert!(
        line.contains(&format!("open_files={hard} (hard {hard})")),
        "{line}"
    );
    assert!(
        srv.wait_for_line(|l| l.contains("--max-connections 50000 does not fit"))
            .is_some()
    );
}

fn rustix_hard_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct we pass.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    lim.rlim_max
}

#[test]
fn connections_past_max_connections_are_closed_and_counted() {
    let srv = Server::start("--protocol echo --max-connections 10");
    let mut kept: Vec<_> = (0..10).map(|_| connect(srv.addr)).collect();
    // Prove the ten are accepted before opening more (accept order is not connect order).
    for c in kept.iter_mut() {
        send(c, b"k");
        let mut b = [0u8; 1];
        c.read_exact(&mut b).unwrap();
    }
    for _ in 0..5 {
        let mut extra = connect(srv.addr);
        let (got, closed) = read_to_close(&mut extra);
        assert!(
            closed && got.is_empty(),
            "an extra connection is closed at once"
        );
    }
    // Room again once one closes.
    drop(kept.pop());
    let mut ok = None;
    for _ in 0..200 {
        let mut c = connect(srv.addr);
        send(&mut c, b"again");
        let mut b = [0u8; 5];
        if c.read_exact(&mut b).is_ok() {
            ok = Some(b);
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(&ok.expect("a slot freed up"), b"again");
    drop(kept);
    let (_, stats) = srv.stop();
    assert!(stats["rejected"] >= 5);
}

#[test]
fn running_out_of_file_descriptors_does_not_spin_and_recovers() {
    // 40 descriptors: a handful for the process, the rest for connections.
    let srv = Server::start_with_shell("ulimit -n 40;", "--protocol echo --max-connections 1000");
    let mut conns = Vec::new();
    for _ in 0..60 {
        conns.push(connect(srv.addr));
    }
    assert!(
        srv.wait_for_line(|l| l.contains("out of file descriptors"))
            .is_some()
    );
    // With the listener still readable, a loop that retried accept at once would burn
    // a core. Over one second the server must use well under half of one.
    let t0 = srv.cpu_ticks();
    std::thread::sleep(Duration::from_secs(1));
    let used = srv.cpu_ticks() - t0;
    assert!(
        used < 50,
        "server used {used} ticks of CPU in 1 s while out of descriptors"
    );
    drop(conns);
    // Recovered: a new connection is served.
    let mut served = false;
    for _ in 0..200 {
        let mut c = connect(srv.addr);
        send(&mut c, b"back");
        let mut b = [0u8; 4];
        if c.read_exact(&mut b).is_ok() && &b == b"back" {
            served = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(served, "served again once descriptors were free");
    let warnings = srv
        .lines()
        .iter()
        .filter(|l| l.contains("out of file descriptors"))
        .count();
    assert_eq!(warnings, 1, "logged once, not per failed accept");
    let (_, stats) = srv.stop();
    assert!(stats["accept_fd_errors"] >= 1);
}

/// A line echo that consumes only whole lines: a line that never ends is held.
#[derive(Clone)]
struct Lines;

impl reactor::protocol::Protocol for Lines {
    type State = ();

    fn decode(
        &self,
        _: &mut (),
        input: &[u8],
        out: &mut reactor::bytes::BytesMut,
        cx: &reactor::protocol::Cx,
    ) -> reactor::protocol::Decoded {
        let mut d = reactor::protocol::Decoded::default();
        while let Some(nl) = input[d.consumed..].iter().position(|&b| b == b'\n') {
            if d.at_limit(cx, out) {
                break;
            }
            out.extend_from_slice(&input[d.consumed..d.consumed + nl + 1]);
            d.consumed += nl + 1;
            d.requests += 1;
        }
        d
    }
}

/// A protocol of the user's own has no input limit of its own: the framework's caps
/// what a connection may send unconsumed. The whole lines before the endless one are
/// answered, then the connection is closed cleanly and counted, and the others go on.
/// Before the cap, a client sending 100 MiB without a newline held it all.
#[test]
fn unconsumed_input_past_max_input_closes_the_connection_after_its_answers() {
    let cfg = reactor::Config {
        addr: "127.0.0.1:0".parse().unwrap(),
        threads: 1,
        max_input: 64 * 1024,
        metrics_addr: Some("127.0.0.1:0".parse().unwrap()),
        ..reactor::Config::default()
    };
    let srv = reactor::Server::start_with(&cfg, Lines).expect("server starts");
    let mut other = std::io::BufReader::new(connect(srv.local_addr()));
    let mut big = connect(srv.local_addr());
    let mut wire = b"one\ntwo\n".to_vec();
    wire.extend(std::iter::repeat_n(b'x', 256 * 1024));
    let mut w = big.try_clone().unwrap();
    // The server stops reading at the cap and closes: the rest may be refused.
    let writer = std::thread::spawn(move || {
        let _ = std::io::Write::write_all(&mut w, &wire);
    });
    let (got, closed) = read_to_close(&mut big);
    let _ = writer.join();
    assert!(closed, "the connection is closed");
    assert_eq!(got, b"one\ntwo\n", "the whole lines were answered first");
    let c = wait_stats(&srv, |c| c.input_overflows >= 1);
    assert_eq!(c.input_overflows, 1, "{c}");
    let (_, metrics) = http_get(srv.metrics_addr().expect("metrics"), "/metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l == "reactor_input_overflows_total 1"),
        "{metrics}"
    );
    // The other connection is served.
    std::io::Write::write_all(other.get_mut(), b"still here\n").unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(&mut other, &mut line).unwrap();
    assert_eq!(line, "still here\n");
}
