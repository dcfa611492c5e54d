mod common;

use std::io::{BufReader, Read};
use std::process::Command;

use common::*;

#[test]
fn http_round_trip_and_keep_alive() {
    let srv = Server::start("--protocol http");
    let c = connect(srv.addr);
    let mut w = c.try_clone().unwrap();
    let mut r = BufReader::new(c);
    for _ in 0..3 {
        send(&mut w, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        let resp = read_response(&mut r);
        assert_eq!(resp.status, 200);
        assert_eq!(resp.body, b"Hello, World!");
        assert_eq!(resp.headers["content-type"], "text/plain");
        assert!(resp.headers["date"].ends_with(" GMT"), "{:?}", resp.headers);
        assert!(!resp.headers.contains_key("connection"));
    }
    send(
        &mut w,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    let resp = read_response(&mut r);
    assert_eq!(resp.headers["connection"], "close");
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "closed after Connection: close");
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let srv = Server::start("--protocol http");
    let c = connect(srv.addr);
    let mut w = c.try_clone().unwrap();
    let mut r = BufReader::new(c);
    // 200 requests in one write, mixing methods, with a body to discard in the middle
    // and a HEAD (no body) to prove the order.
    let mut batch = Vec::new();
    for i in 0..200 {
        match i % 3 {
            0 => batch.extend_from_slice(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
            1 => batch.extend_from_slice(
                b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello world",
            ),
            _ => batch.extend_from_slice(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n"),
        }
    }
    send(&mut w, &batch);
    for i in 0..200 {
        if i % 3 == 2 {
            // A HEAD answer has Content-Length 13 but no body: read the head by hand.
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                let mut b = [0u8; 1];
                r.read_exact(&mut b).unwrap();
                head.push(b[0]);
            }
            assert!(head.starts_with(b"HTTP/1.1 200 OK"));
        } else {
            let resp = read_response(&mut r);
            assert_eq!(
                (resp.status, &resp.body[..]),
                (200, &b"Hello, World!"[..]),
                "request {i}"
            );
        }
    }
}

#[test]
fn http10_closes_unless_keep_alive() {
    let srv = Server::start("--protocol http");
    let mut c = connect(srv.addr);
    send(&mut c, b"GET / HTTP/1.0\r\n\r\n");
    let (got, closed) = read_to_close(&mut c);
    assert!(closed);
    let resp = read_response(&mut &got[..]);
    assert_eq!(resp.status, 200);

    let c = connect(srv.addr);
    let mut w = c.try_clone().unwrap();
    let mut r = BufReader::new(c);
    for _ in 0..2 {
        send(&mut w, b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        let resp = read_response(&mut r);
        assert_eq!(resp.headers["connection"], "keep-alive");
    }
}

#[test]
fn curl_gets_hello_world() {
    if !have("curl") {
        return;
    }
    let srv = Server::start("--protocol http");
    let url = format!("http://{}/", srv.addr);
    let out = Command::new("curl")
        .args(["-sv", "--max-time", "20", &url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"Hello, World!");
    let trace = String::from_utf8_lossy(&out.stderr);
    assert!(trace.contains("< HTTP/1.1 200 OK"), "{trace}");
    assert!(trace.contains("< Content-Length: 13"), "{trace}");
    // A body sent after Expect: 100-continue, and a chunked one: both read, discarded
    // and answered.
    let url = format!("http://{}/", srv.addr);
    let out = curl_post(&url, "Expect: 100-continue", 1 << 20);
    assert_eq!(out, "200 Hello, World!");
    let out = curl_post(&url, "Transfer-Encoding: chunked", 300_000);
    assert_eq!(out, "200 Hello, World!");
    // A chunked body over --max-body (1 MB by default) gets 413.
    let out = curl_post(&url, "Transfer-Encoding: chunked", 2 << 20);
    assert!(out.starts_with("413 "), "{out}");
}

/// POSTs `len` bytes from standard input with one extra header; returns
/// "STATUS BODY".
fn curl_post(url: &str, header: &str, len: usize) -> String {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "20",
            "-H",
            header,
            "--data-binary",
            "@-",
        ])
        .args(["-w", " %{http_code}", url])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // The server may answer 413 and close before taking it all.
    let _ = stdin.write_all(&vec![b'x'; len]);
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once(' ').unwrap_or_default();
    format!("{code} {}", body.trim_end())
}

#[test]
fn wrk_load_gets_only_200s() {
    if !have("wrk") {
        return;
    }
    let srv = Server::start("--protocol http");
    let url = format!("http://{}/", srv.addr);
    let out = Command::new("wrk")
        .args(["-t1", "-c20", "-d1s", "--timeout", "10s", &url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(!text.contains("Non-2xx"), "{text}");
    assert!(!text.contains("Socket errors"), "{text}");
    let requests: u64 = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("wrk summary");
    assert!(requests > 0);
    let (_, stats) = srv.stop();
    assert!(stats["requests"] >= requests);
    assert_eq!(stats["bad_requests"], 0);
}

#[test]
fn malformed_requests_get_their_status_while_another_connection_is_served() {
    let srv = Server::start("--protocol http --max-header-bytes 1024 --max-body 100");
    let good = connect(srv.addr);
    let mut gw = good.try_clone().unwrap();
    let mut gr = BufReader::new(good);
    let cases: &[(&[u8], u16)] = &[
        (b"NOT HTTP AT ALL\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost x\r\n\r\n", 400),
        (
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
            400,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 101\r\n\r\n",
            413,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
            501,
        ),
    ];
    let long_header = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Long: {}\r\n\r\n",
        "a".repeat(2000)
    );
    let many_headers = format!(
        "GET / HTTP/1.1\r\nHost: x\r\n{}\r\n",
        "A: b\r\n".repeat(150)
    );
    let mut all: Vec<(Vec<u8>, u16)> = cases.iter().map(|(b, s)| (b.to_vec(), *s)).collect();
    all.push((long_header.into_bytes(), 431));
    all.push((many_headers.into_bytes(), 431));
    for (input, want) in all {
        let mut bad = connect(srv.addr);
        send(&mut bad, &input);
        let (got, closed) = read_to_close(&mut bad);
        assert!(closed, "closed after {want}");
        let resp = read_response(&mut &got[..]);
        assert_eq!(
            resp.status,
            want,
            "for {:?}",
            String::from_utf8_lossy(&input[..input.len().min(60)])
        );
        assert_eq!(resp.headers["connection"], "close");
        // The other connection is undisturbed.
        send(&mut gw, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        let ok = read_response(&mut gr);
        assert_eq!((ok.status, &ok.body[..]), (200, &b"Hello, World!"[..]));
    }
    let (status, stats) = srv.stop();
    assert!(status.success());
    assert_eq!(stats["bad_requests"], 7);
}

/// A clean end (one request that asked to close, answered, nothing after it) is closed
/// at once, with no lingering read waiting for the client's FIN: the connection is
/// counted closed while the client still holds its end, and no linger is counted. An
/// error answer keeps the linger (the client may still be sending its body), as does a
/// pipelining client: the server still holds its socket (inode not 0) when the client
/// reads the end, and a linger is counted.
#[test]
fn a_clean_end_closes_at_once_and_an_error_lingers() {
    let srv = in_process("--protocol http");
    let server_side = |client: &std::net::TcpStream| {
        let me = client.local_addr().unwrap().port();
        tcp_table()
            .into_iter()
            .find(|r| r.local_port == srv.local_addr().port() && r.remote_port == me)
    };
    let mut lingers = 0;
    for (i, (request, lingering)) in [
        (&b"GET / HTTP/1.0\r\n\r\n"[..], false),
        (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", false),
        // A body over the limit: 413, and the client may still be sending it.
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999\r\n\r\nabc", true),
        // Pipelined: the first answer is still owed when the close is read.
        (
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            true,
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let what = String::from_utf8_lossy(request);
        let mut c = connect(srv.local_addr());
        send(&mut c, request);
        let (got, _) = read_to_close(&mut c);
        assert!(got.starts_with(b"HTTP/1."), "{:?}", String::from_utf8_lossy(&got));
        // The client has read the server's FIN and still holds its socket.
        if lingering {
            let row = server_side(&c).expect("the server's side of the connection");
            assert_ne!(row.inode, 0, "{what:?}: the server should hold its socket");
            lingers += 1;
            wait_stats(&srv, |s| s.lingers == lingers);
        } else {
            let s = wait_stats(&srv, |s| s.closed == i as u64 + 1);
            assert_eq!(s.lingers, lingers, "{what:?}: a clean end lingered: {s}");
        }
        drop(c);
        wait_stats(&srv, |s| s.closed == i as u64 + 1);
    }
}

/// A clean end sends its answer and its FIN in one segment: the answer is written
/// with MSG_MORE and the close tacks the FIN on. The client receives the SYN-ACK, the
/// ACK of its request and that one segment (it was four, the FIN alone). Ten tries of
/// each kind, nine of which must show it: a server thread preempted for a couple of
/// hundred milliseconds between the write and the close lets the kernel send the
/// answer alone, which is slower but not wrong.
#[cfg(target_os = "linux")]
#[test]
fn a_clean_end_sends_its_answer_and_fin_in_one_segment() {
    use std::os::fd::AsRawFd;
    /// Segments received (tcpi_segs_in, at offset 140 of struct tcp_info since
    /// Linux 4.2).
    fn segs_in(s: &std::net::TcpStream) -> u32 {
        let mut info = [0u8; 256];
        let mut len = info.len() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `info`, which is that
        // large; the descriptor is the open stream's.
        let r = unsafe {
            libc::getsockopt(
                s.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                info.as_mut_ptr().cast(),
                &mut len,
            )
        };
        assert!(r == 0 && len >= 144, "TCP_INFO: {r}, {len} bytes");
        u32::from_ne_bytes(info[140..144].try_into().unwrap())
    }
    let srv = in_process("--protocol http");
    for request in [
        &b"GET / HTTP/1.0\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    ] {
        let mut segments = Vec::new();
        for _ in 0..10 {
            let mut c = connect(srv.local_addr());
            send(&mut c, request);
            let (got, closed) = read_to_close(&mut c);
            assert!(closed && got.starts_with(b"HTTP/1."), "{got:?}");
            segments.push(segs_in(&c));
        }
        let together = segments.iter().filter(|&&n| n <= 3).count();
        assert!(
            together >= 9,
            "{:?}: segments received per connection {segments:?}: the answer and the \
             FIN apart",
            String::from_utf8_lossy(request)
        );
    }
}

/// A clean end's answer waits in the kernel for the FIN. A byte the peer sends after
/// its request, before the close (an old client's extra CRLF, arriving while the
/// handler runs), turns the close into a reset, which drops the send queue: the answer
/// must have left by then (the FIN is sent with it before the close).
#[test]
fn a_byte_after_the_request_does_not_reset_a_held_answer_away() {
    use reactor::http::{App, Response};
    let cfg = loopback_config();
    let app = App::new(|_| {
        std::thread::sleep(std::time::Duration::from_millis(200));
        Response::new(200).body("held")
    });
    let srv = reactor::Server::start_with(&cfg, app).unwrap();
    let mut c = connect(srv.local_addr());
    send(&mut c, b"GET / HTTP/1.0\r\n\r\n");
    // While the handler runs (the request was read alone, so its end is clean).
    std::thread::sleep(std::time::Duration::from_millis(50));
    send(&mut c, b"\r\n");
    let (got, closed) = read_to_close(&mut c);
    assert!(closed, "the server closed");
    let r = read_response(&mut &got[..]);
    assert_eq!((r.status, &r.body[..]), (200, &b"held"[..]));
}

/// A clean end whose answer is still going out when the peer sends a byte more (an old
/// client's extra CRLF after its request, RFC 9112 section 2.2): the server looks
/// before it closes, finds the byte, and lingers, so the answer is not destroyed by a
/// reset. (It closed with the byte unread, and the client lost the end of its answer.)
#[test]
fn bytes_sent_during_a_long_answer_turn_a_clean_end_into_a_linger() {
    use reactor::http::{App, Response};
    const BODY: usize = 4 << 20;
    let cfg = loopback_config();
    let app = App::new(|_| Response::new(200).body(vec![b'x'; BODY]));
    let srv = reactor::Server::start_with(&cfg, app).unwrap();
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(8192).unwrap();
    sock.connect(&srv.local_addr().into()).unwrap();
    let mut c: std::net::TcpStream = sock.into();
    c.set_read_timeout(Some(DEADLINE)).unwrap();
    send(&mut c, b"GET / HTTP/1.0\r\n\r\n");
    // The answer has begun: the server decided its clean end and is still sending.
    let mut got = vec![0u8; 1024];
    c.read_exact(&mut got).unwrap();
    send(&mut c, b"\r\n");
    let mut rest = Vec::new();
    c.read_to_end(&mut rest)
        .expect("the whole answer, then the end of the stream: not a reset");
    got.extend_from_slice(&rest);
    let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(got.len() - head_end, BODY);
}
