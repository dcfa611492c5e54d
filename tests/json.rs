mod common;

use std::io::{BufRead, BufReader};

use common::*;
use serde_json::Value;

fn line(r: &mut impl BufRead) -> Value {
    let mut l = String::new();
    r.read_line(&mut l).unwrap();
    assert!(l.ends_with('\n'), "a whole line: {l:?}");
    serde_json::from_str(&l).unwrap_or_else(|e| panic!("{l:?}: {e}"))
}

#[test]
fn json_messages_back_to_back_and_on_lines_are_answered_in_order() {
    let srv = Server::start("--protocol json");
    let c = connect(srv.addr);
    let mut w = c.try_clone().unwrap();
    let mut r = BufReader::new(c);
    // The seed's Go client writes objects with no separator at all.
    let mut batch = String::new();
    for i in 0..100 {
        batch.push_str(&format!("{{\"Uid\":\"u{i}\",\"Val\":\"v{i}\"}}"));
        if i % 2 == 0 {
            batch.push('\n');
        }
    }
    send(&mut w, batch.as_bytes());
    for i in 0..100 {
        let v = line(&mut r);
        assert_eq!(v["Uid"], format!("u{i}"));
        assert_eq!(v["Val"], format!("server: hello, v{i}"));
        let ts = v["Ts"].as_str().unwrap();
        assert!(
            ts.len() == 20 && ts.ends_with('Z') && &ts[10..11] == "T",
            "{ts}"
        );
    }
}

#[test]
fn invalid_json_gets_an_error_line_and_the_connection_stays_open() {
    let srv = Server::start("--protocol json --max-message 1000");
    let other = connect(srv.addr);
    let mut ow = other.try_clone().unwrap();
    let mut or = BufReader::new(other);

    let c = connect(srv.addr);
    let mut w = c.try_clone().unwrap();
    let mut r = BufReader::new(c);
    send(&mut w, b"{not json at all\n");
    assert!(
        line(&mut r)["error"]
            .as_str()
            .unwrap()
            .contains("invalid JSON")
    );
    send(&mut w, b"{\"Uid\":7,\"Val\":\"x\"}\n");
    assert!(
        line(&mut r)["error"]
            .as_str()
            .unwrap()
            .contains("bad message")
    );
    send(&mut w, b"{\"Uid\":\"a\",\"Val\":\"still here\"}\n");
    assert_eq!(line(&mut r)["Val"], "server: hello, still here");

    send(&mut ow, b"{\"Uid\":\"o\",\"Val\":\"1\"}");
    assert_eq!(line(&mut or)["Uid"], "o");

    // Too long: an error line, then the close.
    let big = format!("{{\"Uid\":\"a\",\"Val\":\"{}", "z".repeat(5000));
    send(&mut w, big.as_bytes());
    assert_eq!(line(&mut r)["error"], "message too long");
    let mut s = r.into_inner();
    let (rest, closed) = read_to_close(&mut s);
    assert!(closed && rest.is_empty());

    send(&mut ow, b"{\"Uid\":\"o2\",\"Val\":\"2\"}\n");
    assert_eq!(line(&mut or)["Uid"], "o2");
    let (_, stats) = srv.stop();
    assert_eq!(stats["bad_requests"], 3);
}
