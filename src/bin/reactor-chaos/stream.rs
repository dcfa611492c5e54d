//! A peer's connection before its exchanges: TCP, then the PROXY header a balancer
//! would send (`--proxy-header`), then TLS (`--tls-ca`); and the few ways a peer ends
//! it (half-close, reset) whatever it runs over.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use clap::ValueEnum;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, StreamOwned};

/// The PROXY protocol header each connection starts with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum ProxyHeader {
    /// Text: `PROXY TCP4 <src> <dst> <sport> <dport>\r\n`.
    V1,
    /// Binary, with the 12-byte signature.
    V2,
}

/// The v2 signature.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

impl ProxyHeader {
    /// The header for a connection from `src` to `dst`, as HAProxy writes it.
    pub(crate) fn encode(self, src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
        match self {
            ProxyHeader::V1 => {
                let family = if src.is_ipv4() { "TCP4" } else { "TCP6" };
                format!(
                    "PROXY {family} {} {} {} {}\r\n",
                    src.ip(),
                    dst.ip(),
                    src.port(),
                    dst.port()
                )
                .into_bytes()
            }
            ProxyHeader::V2 => {
                let mut h = V2_SIGNATURE.to_vec();
                // Version 2, PROXY command.
                h.push(0x21);
                let addrs: Vec<u8> = match (src.ip(), dst.ip()) {
                    (IpAddr::V4(s), IpAddr::V4(d)) => {
                        // TCP over IPv4.
                        h.push(0x11);
                        [s.octets().as_slice(), &d.octets()].concat()
                    }
                    (s, d) => {
                        // TCP over IPv6 (an IPv4 address mapped).
                        h.push(0x21);
                        [v6(s).as_slice(), &v6(d)].concat()
                    }
                };
                let len = addrs.len() + 4;
                h.extend_from_slice(&(len as u16).to_be_bytes());
                h.extend_from_slice(&addrs);
                h.extend_from_slice(&src.port().to_be_bytes());
                h.extend_from_slice(&dst.port().to_be_bytes());
                h
            }
        }
    }
}

fn v6(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    }
}

/// How to open a connection.
pub(crate) struct Dialer {
    pub(crate) addr: SocketAddr,
    pub(crate) timeout: Duration,
    pub(crate) header: Option<ProxyHeader>,
    pub(crate) tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
}

/// A connection, plain or TLS.
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Dialer {
    /// Connects, sends the PROXY header if any, and wraps the socket in TLS if asked
    /// (the handshake runs with the first write).
    pub(crate) fn connect(&self) -> io::Result<Stream> {
        let mut s = TcpStream::connect_timeout(&self.addr, self.timeout)?;
        s.set_read_timeout(Some(self.timeout))?;
        s.set_write_timeout(Some(self.timeout))?;
        s.set_nodelay(true)?;
        if let Some(h) = self.header {
            s.write_all(&h.encode(s.local_addr()?, s.peer_addr()?))?;
        }
        Ok(match &self.tls {
            None => Stream::Plain(s),
            Some((cfg, name)) => {
                let conn =
                    ClientConnection::new(cfg.clone(), name.clone()).map_err(io::Error::other)?;
                Stream::Tls(Box::new(StreamOwned::new(conn, s)))
            }
        })
    }
}

impl Stream {
    pub(crate) fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(t) => &t.sock,
        }
    }

    /// The local port: what the fault proxy marks a cut connection by.
    pub(crate) fn local_port(&self) -> u16 {
        self.tcp().local_addr().map_or(0, |a| a.port())
    }

    /// No more requests: over TLS, close_notify first, then the TCP half-close.
    pub(crate) fn half_close(&mut self) -> io::Result<()> {
        if let Stream::Tls(t) = self {
            t.conn.send_close_notify();
            t.flush()?;
        }
        self.tcp().shutdown(Shutdown::Write)
    }

    /// Ends with a reset (SO_LINGER 0), whatever is in flight.
    pub(crate) fn reset(self) {
        let _ = socket2::SockRef::from(self.tcp()).set_linger(Some(Duration::ZERO));
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(t) => t.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(t) => t.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(t) => t.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_what_the_server_parses() {
        let src: SocketAddr = "192.0.2.7:51000".parse().unwrap();
        let dst: SocketAddr = "127.0.0.1:80".parse().unwrap();
        assert_eq!(
            ProxyHeader::V1.encode(src, dst),
            b"PROXY TCP4 192.0.2.7 127.0.0.1 51000 80\r\n"
        );
        let v2 = ProxyHeader::V2.encode(src, dst);
        let parsed = ppp::v2::Header::try_from(v2.as_slice()).unwrap();
        assert_eq!(
            parsed.addresses,
            ppp::v2::Addresses::IPv4(ppp::v2::IPv4::new(
                [192, 0, 2, 7],
                [127, 0, 0, 1],
                51000,
                80
            ))
        );
    }
}
