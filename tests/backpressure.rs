mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::*;

/// A client that sends and never reads must not grow the server's memory: the server
/// stops reading once the connection's unsent output passes the high-water mark. Bytes
/// read minus bytes written is exactly the output the server holds for the connection.
#[test]
fn a_client_that_never_reads_leaves_output_capped_near_the_high_water_mark() {
    let hw = 64 * 1024;
    let srv = Server::start(
        "--protocol echo --high-water 65536 --write-timeout 0 --drain-timeout 500ms --stats-interval 100ms",
    );
    let c = connect(srv.addr);
    let mut w = c.try_clone().unwrap();
    w.set_nonblocking(true).unwrap();
    let chunk = vec![b'z'; 64 * 1024];
    let target: usize = 64 << 20;
    let mut sent = 0usize;
    let mut last_progress = Instant::now();
    // Write until the kernel buffers on both sides are full and nothing moves for a
    // second, or 64 MB went out (only possible if the server kept reading).
    while sent < target && last_progress.elapsed() < Duration::from_secs(1) {
        match w.write(&chunk) {
            Ok(n) => {
                sent += n;
                last_progress = Instant::now();
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("write: {e}"),
        }
    }
    assert!(
        sent < target,
        "the server kept reading {sent} bytes from a client that never reads"
    );
    // The server's own view, once its counters have caught up with what we sent.
    let stats = srv
        .wait_for_stats(|s| s.get("bytes_in").is_some_and(|&b| b as usize > hw) && s["open"] == 1)
        .expect("stats line");
    let held = stats["bytes_in"] - stats["bytes_out"];
    eprintln!(
        "client sent {sent}, server read {}, holds {held}",
        stats["bytes_in"]
    );
    assert!(
        held as usize <= hw + 64 * 1024,
        "server holds {held} bytes of output"
    );
    assert!(held > 0, "output is pending, not dropped");
    drop(c);
    drop(w);
    let (status, stats) = srv.stop();
    assert!(status.success());
    assert_eq!(stats["buffers_lent"], 0);
}
