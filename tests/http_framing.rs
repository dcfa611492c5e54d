//! Request framing rules of RFC 9112 over real sockets, answered inline and on the
//! worker pool: a request the server cannot frame safely gets 400 and a close, so that
//! nothing after it is read as another request.

mod common;

use std::time::Duration;

use common::*;

/// Sends `input` on a fresh connection and reads what comes back until the server
/// closes or goes quiet for a while; returns the statuses and whether it closed.
fn exchange(srv: &Server, input: &[u8]) -> (Vec<u16>, bool) {
    let mut c = connect(srv.addr);
    c.set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    send(&mut c, input);
    let (got, closed) = read_to_close(&mut c);
    let mut rest = &got[..];
    let mut statuses = Vec::new();
    while !rest.is_empty() {
        statuses.push(read_response(&mut rest).status);
    }
    (statuses, closed)
}

fn servers() -> Vec<Server> {
    vec![
        Server::start("--protocol http"),
        Server::start("--protocol http --workers 1 --work sleep:1ms"),
    ]
}

fn assert_400_and_close(srv: &Server, input: &[u8]) {
    let (statuses, closed) = exchange(srv, input);
    assert_eq!(
        (&statuses[..], closed),
        (&[400][..], true),
        "for {:?}",
        String::from_utf8_lossy(input)
    );
}

#[test]
fn http11_without_exactly_one_host_gets_400_and_a_close() {
    for srv in servers() {
        for input in [
            b"GET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n".as_slice(),
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            b"GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\nConnection: keep-alive\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
        ] {
            assert_400_and_close(&srv, input);
        }
        // One Host in 1.1, none in 1.0: served, and the connection stays open.
        let (statuses, closed) = exchange(
            &srv,
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        );
        assert_eq!((&statuses[..], closed), (&[200, 200][..], false));
        let (_, stats) = srv.stop();
        assert_eq!(stats["bad_requests"], 4);
    }
}

#[test]
fn transfer_encoding_in_http10_gets_400_and_a_close() {
    for srv in servers() {
        for input in [
            b"POST / HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET / HTTP/1.0\r\n\r\n".as_slice(),
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\nhello",
        ] {
            assert_400_and_close(&srv, input);
        }
        let (_, stats) = srv.stop();
        assert_eq!(stats["bad_requests"], 2);
    }
}

#[test]
fn a_chunk_size_line_without_hex_digits_gets_400_and_a_close() {
    for srv in servers() {
        // Each would end the body early if read as size 0, and what follows would be
        // taken for another request.
        for body in [
            b";ext\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n".as_slice(),
            b"\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
            b"5\r\nhello\r\n\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
            b"xyz\r\n\r\n",
            b"10000000000000000\r\n",
        ] {
            let input = [
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".as_slice(),
                body,
            ]
            .concat();
            assert_400_and_close(&srv, &input);
        }
        // A well-formed chunked body is still answered.
        let (statuses, closed) = exchange(
            &srv,
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;e=1\r\nhello\r\n0\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
        );
        assert_eq!((&statuses[..], closed), (&[200, 200][..], false));
        let (_, stats) = srv.stop();
        assert_eq!(stats["bad_requests"], 5);
    }
}
