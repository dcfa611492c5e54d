//! The simulation's network: one in-memory pipe per connection, behind the same
//! [`Sockets`] interface a driver gives the core. It behaves as a kernel socket does
//! (a read takes everything there is up to the buffer, a write takes what the peer's
//! window allows, end of stream after a half-close, an error after a reset), and it
//! watches what the core does with it: a write after our shutdown, and, on a TLS
//! connection, any byte that is not part of a well-formed TLS record.

use std::collections::VecDeque;
use std::io;

use super::super::socket::{Socket, Sockets};

/// One connection's two directions.
pub(super) struct Pipe {
    /// What the client wrote that the server has not read.
    pub to_server: VecDeque<u8>,
    /// The client shut down its writing side (after `to_server` is read, end of stream).
    pub client_fin: bool,
    /// The client reset the connection: every call fails.
    pub reset: bool,
    /// What the server wrote that the client has not read.
    pub to_client: Vec<u8>,
    /// Most unread bytes `to_client` may hold (the client's window plus our send
    /// buffer).
    pub cap: usize,
    pub server_fin: bool,
    /// Bytes at the end of `to_client` held back by a last write (MSG_MORE) until a
    /// plain write, our shutdown or the close pushes them: the client cannot see them.
    pub corked: usize,
    pub want_write: bool,
    /// TLS: the server's bytes must be TLS records. Bytes left of the current record.
    pub tls: bool,
    record_left: usize,
    record_head: Vec<u8>,
    pub written: u64,
}

impl Pipe {
    pub fn new(cap: usize, tls: bool) -> Pipe {
        Pipe {
            to_server: VecDeque::new(),
            client_fin: false,
            reset: false,
            to_client: Vec::new(),
            cap,
            server_fin: false,
            corked: 0,
            want_write: false,
            tls,
            record_left: 0,
            record_head: Vec::new(),
            written: 0,
        }
    }

    /// Follows the server's byte stream record by record: a header whose content type
    /// or version is not TLS's means plaintext reached the socket.
    fn check_records(&mut self, mut bytes: &[u8]) -> Result<(), String> {
        while !bytes.is_empty() {
            if self.record_left > 0 {
                let n = self.record_left.min(bytes.len());
                self.record_left -= n;
                bytes = &bytes[n..];
                continue;
            }
            let need = 5 - self.record_head.len();
            let n = need.min(bytes.len());
            self.record_head.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.record_head.len() < 5 {
                break;
            }
            let h = std::mem::take(&mut self.record_head);
            let len = usize::from(u16::from_be_bytes([h[3], h[4]]));
            if !(20..=23).contains(&h[0]) || h[1] != 3 || h[2] > 4 || len > 16384 + 2048 {
                return Err(format!(
                    "a byte that is not TLS reached the socket of a TLS connection: \
                     record header {:02x?} then {:?}",
                    h,
                    String::from_utf8_lossy(&bytes[..bytes.len().min(40)])
                ));
            }
            self.record_left = len;
        }
        Ok(())
    }
}

/// Every connection's pipe, by key, and what the core was caught doing.
#[derive(Default)]
pub(super) struct Net {
    pub pipes: Vec<Option<Pipe>>,
    /// Pipes the core closed this step, with their keys.
    pub closed: Vec<(usize, Pipe)>,
    pub violation: Option<String>,
    /// The shard was told to stop reading: only a socket whose peer has taken every
    /// byte written to it may be read.
    pub paused: bool,
}

impl Net {
    pub fn put(&mut self, key: usize, pipe: Pipe) {
        if key >= self.pipes.len() {
            self.pipes.resize_with(key + 1, || None);
        }
        if self.pipes[key].is_some() {
            self.violation = Some(format!("key {key} given to two connections"));
        }
        self.pipes[key] = Some(pipe);
    }

    pub fn pipe(&mut self, key: usize) -> Option<&mut Pipe> {
        self.pipes.get_mut(key)?.as_mut()
    }
}

pub(super) struct SimSock<'a> {
    pipe: &'a mut Pipe,
    violation: &'a mut Option<String>,
    paused: bool,
}

impl Socket for SimSock<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.paused && !self.pipe.to_client.is_empty() {
            // While reading is paused (a memory budget spent), only a connection whose
            // peer has taken every byte written to it may be read.
            self.violation.get_or_insert_with(|| {
                "a read while reading is paused, with answers not taken by the peer".to_string()
            });
        }
        let p = &mut *self.pipe;
        if p.reset {
            return Err(io::ErrorKind::ConnectionReset.into());
        }
        if p.to_server.is_empty() {
            return if p.client_fin {
                Ok(0)
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            };
        }
        // Like a kernel socket: everything there is, up to the buffer.
        let n = buf.len().min(p.to_server.len());
        for (b, x) in buf[..n].iter_mut().zip(p.to_server.drain(..n)) {
            *b = x;
        }
        Ok(n)
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let p = &mut *self.pipe;
        if p.reset {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        if p.server_fin {
            self.violation
                .get_or_insert_with(|| "a write after our shutdown".to_string());
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        let room = p.cap.saturating_sub(p.to_client.len());
        if room == 0 || buf.is_empty() {
            return if buf.is_empty() {
                Ok(0)
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            };
        }
        let n = room.min(buf.len());
        if p.tls
            && let Err(e) = p.check_records(&buf[..n])
        {
            self.violation.get_or_insert(e);
        }
        p.to_client.extend_from_slice(&buf[..n]);
        p.written += n as u64;
        // A plain write pushes what a last write held back.
        p.corked = 0;
        Ok(n)
    }

    fn write_last(&mut self, buf: &[u8]) -> io::Result<usize> {
        let held = self.pipe.corked;
        let n = self.write(buf)?;
        self.pipe.corked = held + n;
        Ok(n)
    }

    fn shutdown_write(&mut self) {
        self.pipe.server_fin = true;
        self.pipe.corked = 0;
    }

    fn unsent(&self) -> usize {
        self.pipe.to_client.len()
    }

    fn want_write(&mut self, on: bool) -> io::Result<()> {
        if self.pipe.want_write == on {
            self.violation
                .get_or_insert_with(|| format!("want_write({on}) when it was already {on}"));
        }
        self.pipe.want_write = on;
        Ok(())
    }
}

impl Sockets for Net {
    type Sock<'a> = SimSock<'a>;

    fn get(&mut self, key: usize, _: u32) -> Option<SimSock<'_>> {
        let Net {
            pipes,
            violation,
            paused,
            ..
        } = self;
        match pipes.get_mut(key).and_then(|p| p.as_mut()) {
            Some(pipe) => Some(SimSock {
                pipe,
                violation,
                paused: *paused,
            }),
            None => {
                violation.get_or_insert_with(|| format!("the core used closed key {key}"));
                None
            }
        }
    }

    fn close(&mut self, key: usize, _: u32) {
        match self.pipes.get_mut(key).and_then(Option::take) {
            Some(mut pipe) => {
                if !pipe.to_server.is_empty() && !pipe.server_fin {
                    // Closed with bytes unread: the kernel resets the connection and
                    // drops its send queue, so bytes held back for a FIN never leave.
                    let sent = pipe.to_client.len() - pipe.corked;
                    pipe.to_client.truncate(sent);
                }
                self.closed.push((key, pipe));
            }
            None => {
                self.violation
                    .get_or_insert_with(|| format!("closed key {key} twice"));
            }
        }
    }
}
