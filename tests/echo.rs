mod common;

use std::io::Read;

use common::*;

#[test]
fn echo_round_trip_returns_every_byte_in_order() {
    let srv = Server::start("--protocol echo");
    let mut c = connect(srv.addr);
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    // Write from another thread so that a large payload cannot deadlock on full buffers.
    let mut w = c.try_clone().unwrap();
    let sent = data.clone();
    let writer = std::thread::spawn(move || send(&mut w, &sent));
    let mut got = vec![0u8; data.len()];
    c.read_exact(&mut got).unwrap();
    writer.join().unwrap();
    assert!(got == data, "echoed bytes differ");
    drop(c);
    let (status, stats) = srv.stop();
    assert!(status.success());
    assert_eq!(stats["bytes_in"], data.len() as u64);
    assert_eq!(stats["bytes_out"], data.len() as u64);
}

#[test]
fn a_peer_that_resets_mid_stream_does_not_disturb_another_connection() {
    let srv = Server::start("--protocol echo");
    let mut good = connect(srv.addr);
    let mut bad = connect(srv.addr);
    send(&mut bad, &[0u8; 10_000]);
    // SO_LINGER 0: close sends a reset instead of a FIN.
    socket2::SockRef::from(&bad)
        .set_linger(Some(std::time::Duration::ZERO))
        .unwrap();
    drop(bad);
    for i in 0..50u8 {
        let msg = [i; 100];
        send(&mut good, &msg);
        let mut back = [0u8; 100];
        good.read_exact(&mut back).unwrap();
        assert_eq!(back, msg);
    }
    drop(good);
    let (status, stats) = srv.stop();
    assert!(status.success());
    assert_eq!(stats["accepted"], 2);
}

#[test]
fn a_half_closed_peer_still_gets_its_echo_then_a_close() {
    let srv = Server::start("--protocol echo");
    let mut c = connect(srv.addr);
    send(&mut c, b"last words");
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let (got, closed) = read_to_close(&mut c);
    assert_eq!(got, b"last words");
    assert!(closed);
}
