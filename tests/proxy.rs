//! The PROXY protocol over real sockets: v1 and v2 headers (IPv4 and IPv6) from a
//! trusted peer, split headers, untrusted peers, missing, garbage, oversized and late
//! headers, and the header's client address counting against the per-address limit.

mod common;

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::*;
use ppp::v2;

fn v2_header(src: &str, dst: &str) -> Vec<u8> {
    let (src, dst): (SocketAddr, SocketAddr) = (src.parse().unwrap(), dst.parse().unwrap());
    v2::Builder::with_addresses(
        v2::Version::Two | v2::Command::Proxy,
        v2::Protocol::Stream,
        (src, dst),
    )
    .build()
    .unwrap()
}

fn get_after(addr: SocketAddr, header: &[u8]) -> u16 {
    let c = connect(addr);
    let mut msg = header.to_vec();
    msg.extend_from_slice(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    (&c).write_all(&msg).unwrap();
    read_response(&mut BufReader::new(c)).status
}

/// Whether the server closes `c` without answering.
fn closed_unanswered(mut c: TcpStream) -> bool {
    let (got, closed) = read_to_close(&mut c);
    closed && got.is_empty()
}

#[test]
fn v1_and_v2_headers_for_ipv4_and_ipv6_clients_are_accepted() {
    let srv = in_process("--protocol http --proxy-protocol any");
    let headers: Vec<Vec<u8>> = vec![
        b"PROXY TCP4 192.0.2.7 127.0.0.1 51000 80\r\n".to_vec(),
        b"PROXY TCP6 2001:db8::7 2001:db8::1 51000 80\r\n".to_vec(),
        b"PROXY UNKNOWN\r\n".to_vec(),
        v2_header("192.0.2.9:4000", "127.0.0.1:80"),
        v2_header("[2001:db8::9]:4000", "[2001:db8::1]:80"),
    ];
    for h in &headers {
        assert_eq!(get_after(srv.local_addr(), h), 200, "{h:?}");
    }
    wait_stats(&srv, |c| c.proxy_headers == 5);
}

#[test]
fn a_header_split_across_reads_waits_for_the_rest() {
    let srv = in_process("--protocol http --proxy-protocol v2");
    let c = connect(srv.local_addr());
    let h = v2_header("192.0.2.9:4000", "127.0.0.1:80");
    for piece in [&h[..5], &h[5..14], &h[14..20], &h[20..]] {
        (&c).write_all(piece).unwrap();
        std::thread::sleep(Duration::from_millis(30));
    }
    (&c).write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut BufReader::new(c)).status, 200);
}

#[test]
fn a_trusted_peer_without_a_valid_header_is_closed_and_counted() {
    let srv = in_process("--protocol http --proxy-protocol any --proxy-timeout 300ms");
    let addr = srv.local_addr();
    let send_and_check = |bytes: &[u8]| {
        let c = connect(addr);
        let _ = (&c).write_all(bytes);
        assert!(closed_unanswered(c), "{:?}", String::from_utf8_lossy(bytes));
    };
    send_and_check(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    send_and_check(b"PROXY TCP4 not an address 1 2\r\n");
    send_and_check(b"PROXY TCP9 192.0.2.7 127.0.0.1 1 2\r\n");
    send_and_check(&[b"PROXY TCP4 ".as_slice(), &[b'9'; 200]].concat());
    // A v2 signature announcing a header longer than the limit.
    let mut big = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\xff\xff".to_vec();
    big.extend(std::iter::repeat_n(0u8, 100));
    send_and_check(&big);
    // Nothing at all: the proxy timeout closes it.
    assert!(closed_unanswered(connect(addr)));
    let c = wait_stats(&srv, |c| c.closed == 6);
    assert_eq!(
        (
            c.proxy_missing,
            c.proxy_malformed,
            c.proxy_oversized,
            c.proxy_timeouts
        ),
        (1, 2, 2, 1),
        "{c}"
    );
}

#[test]
fn an_untrusted_peer_is_served_plainly_but_may_not_send_a_header() {
    // Only 127.0.0.2 is trusted; this test connects from 127.0.0.1.
    let srv = in_process("--protocol http --proxy-protocol any --proxy-from 127.0.0.2/32");
    assert_eq!(get_after(srv.local_addr(), b""), 200);
    let c = connect(srv.local_addr());
    (&c).write_all(b"PROXY TCP4 192.0.2.7 127.0.0.1 51000 80\r\nGET / HTTP/1.1\r\n\r\n")
        .unwrap();
    assert!(closed_unanswered(c));
    let c = connect(srv.local_addr());
    (&c).write_all(&v2_header("192.0.2.9:4000", "127.0.0.1:80"))
        .unwrap();
    assert!(closed_unanswered(c));
    let c = wait_stats(&srv, |c| c.proxy_untrusted == 2);
    assert_eq!(c.requests, 1);
}

#[test]
fn the_per_address_limit_counts_the_address_in_the_header() {
    let srv = in_process("--protocol http --proxy-protocol v1 --max-connections-per-ip 1");
    let addr = srv.local_addr();
    let open = |client: &str| {
        let c = connect(addr);
        let mut msg = format!("PROXY TCP4 {client} 127.0.0.1 5000 80\r\n").into_bytes();
        msg.extend_from_slice(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        (&c).write_all(&msg).unwrap();
        c
    };
    // All from 127.0.0.1 (the balancer), for three different clients: all served.
    let a = open("192.0.2.1");
    let b = open("192.0.2.2");
    for c in [&a, &b] {
        let resp = read_response(&mut BufReader::new(c.try_clone().unwrap()));
        assert_eq!(resp.status, 200);
    }
    // A second connection for a client that already has one: refused.
    assert!(closed_unanswered(open("192.0.2.1")));
    assert_eq!(
        wait_stats(&srv, |c| c.rejected_per_ip == 1).rejected_per_ip,
        1
    );
}
