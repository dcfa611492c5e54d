//! A program of a user's own, built by tests/external_crate.rs in a crate outside this
//! project with `reactor = { path = ..., default-features = false }`: a protocol with
//! open and close hooks that learns its peer's address, and a push from another
//! thread. Prints what it saw; exits non-zero on anything unexpected.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reactor::bytes::BytesMut;
use reactor::connection::{Closed, ConnId, ConnInfo};
use reactor::protocol::{Cx, Decoded, Protocol};

#[derive(Clone)]
struct Upper {
    opened: Arc<Mutex<mpsc::Sender<(ConnId, Option<SocketAddr>)>>>,
    closed: Arc<Mutex<mpsc::Sender<Closed>>>,
}

impl Protocol for Upper {
    type State = ();

    fn open(&self, _: &mut (), conn: &ConnInfo, out: &mut BytesMut, _: &Cx) -> bool {
        let _ = self.opened.lock().unwrap().send((conn.id, conn.peer));
        out.extend_from_slice(b"ready\n");
        true
    }

    fn close(&self, _: &mut (), _: ConnId, why: Closed) {
        let _ = self.closed.lock().unwrap().send(why);
    }

    fn decode(&self, _: &mut (), input: &[u8], out: &mut BytesMut, cx: &Cx) -> Decoded {
        let mut d = Decoded::default();
        while let Some(nl) = input[d.consumed..].iter().position(|&b| b == b'\n') {
            if d.at_limit(cx, out) {
                break;
            }
            out.extend_from_slice(&input[d.consumed..=d.consumed + nl].to_ascii_uppercase());
            d.consumed += nl + 1;
            d.requests += 1;
        }
        d
    }
}

fn main() {
    let (open_tx, open_rx) = mpsc::channel();
    let (close_tx, close_rx) = mpsc::channel();
    let proto = Upper {
        opened: Arc::new(Mutex::new(open_tx)),
        closed: Arc::new(Mutex::new(close_tx)),
    };
    let cfg = reactor::Config::default()
        .addr("127.0.0.1:0".parse().unwrap())
        .threads(1)
        .stats_interval(Duration::ZERO);
    let server = reactor::Server::start_with(&cfg, proto).expect("the server starts");
    let c = TcpStream::connect(server.local_addr()).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut r = BufReader::new(c.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    let (id, peer) = open_rx.recv_timeout(Duration::from_secs(20)).unwrap();
    assert_eq!(peer, Some(c.local_addr().unwrap()));
    println!("opened {id} from {}", peer.unwrap());
    (&c).write_all(b"shout\n").unwrap();
    line.clear();
    r.read_line(&mut line).unwrap();
    assert_eq!(line, "SHOUT\n");
    let pusher = server.pusher();
    std::thread::spawn(move || pusher.push(id, &b"pushed\n"[..]))
        .join()
        .unwrap()
        .unwrap();
    line.clear();
    r.read_line(&mut line).unwrap();
    assert_eq!(line, "pushed\n");
    println!("pushed from another thread");
    drop((c, r));
    let why = close_rx.recv_timeout(Duration::from_secs(20)).unwrap();
    assert_eq!(why, Closed::Normal);
    println!("closed: {why}");
    server.shutdown();
    let totals = server.join().unwrap();
    assert_eq!((totals.accepted, totals.pushes), (1, 1));
    println!("ok");
}
