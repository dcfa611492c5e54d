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
