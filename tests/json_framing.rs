//! JSON messages that arrive in pieces, over real sockets, answered inline and on the
//! worker pool: a message is answered the same however it is cut, and one that comes a
//! few bytes at a time is framed as it arrives rather than parsed again from its start
//! at every read.

mod common;

use std::io::{BufRead, BufReader};
use std::time::Duration;

use common::*;
use serde_json::Value;

fn line(r: &mut impl BufRead) -> Value {
    let mut l = String::new();
    r.read_line(&mut l).unwrap();
    assert!(l.ends_with('\n'), "a whole line: {l:?}");
    serde_json::from_str(&l).unwrap_or_else(|e| panic!("{l:?}: {e}"))
}

fn servers() -> Vec<Server> {
    vec![
        Server::start("--protocol json"),
        Server::start("--protocol json --workers 1 --work sleep:1ms"),
    ]
}

#[test]
fn values_cut_between_reads_are_answered_as_if_sent_whole() {
    for srv in servers() {
        let c = connect(srv.addr);
        c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut w = c.try_clone().unwrap();
        let mut r = BufReader::new(c);
        // Cut inside numbers (where serde_json alone reads `1.` or `-` at the end of the
        // input as an error, and `12` as the whole number) and inside a literal, each
        // piece its own write, apart enough to be its own read.
        for piece in [
            r#"{"Uid":"1","Val":"a","X":1."#,
            "5}",
            r#"{"Uid":"2","Val":"b","X":[-"#,
            "7e",
            "+3,tr",
            "ue]}12",
            "3 ",
            "{\"Uid\":\"3\",\"Val\":\"c\"}\n",
        ] {
            send(&mut w, piece.as_bytes());
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(line(&mut r)["Uid"], "1");
        assert_eq!(line(&mut r)["Uid"], "2");
        let e = line(&mut r);
        assert!(
            e["error"].as_str().unwrap().contains("integer `123`"),
            "{e}"
        );
        assert_eq!(line(&mut r)["Uid"], "3");
    }
}

#[test]
fn a_long_message_dribbled_in_small_pieces_is_answered() {
    let mut msg = format!(
        "{{\"Uid\":\"big\",\"Val\":\"{}\",\"X\":[",
        "v\\\"{}[]".repeat(2500)
    );
    while msg.len() < 60_000 {
        msg.push_str(r#"{"k":"a\"b\u00e9","n":[1,-2.5e+3,true,null,{"d":[]}]},"#);
    }
    msg.push_str("0]}\n");
    for srv in servers() {
        let mut conns: Vec<_> = (0..10).map(|_| connect(srv.addr)).collect();
        let cpu = srv.cpu_ticks();
        for piece in msg.as_bytes().chunks(64) {
            for c in &mut conns {
                send(c, piece);
            }
        }
        for c in conns {
            let v = line(&mut BufReader::new(c));
            assert_eq!(v["Uid"], "big");
            assert_eq!(v["Val"].as_str().unwrap().len(), 15 + 6 * 2500);
        }
        // For the record only (no timing assertion): before the framer, each piece
        // had serde_json parse the message again from its start.
        eprintln!(
            "server CPU for 10 messages of {} bytes in pieces of 64: {} ticks",
            msg.len(),
            srv.cpu_ticks() - cpu
        );
    }
}
