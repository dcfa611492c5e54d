//! Handing the listening sockets to a successor, so that a restart loses no connection
//! and needs no sysctl (HAProxy's `expose-fd listeners`, Envoy's hot restart).
//!
//! The running server (`--handover PATH`) listens on a Unix socket at PATH, mode 0600:
//! whoever can connect there can take its listeners. A new server started with
//! `--takeover PATH` connects, receives the listening sockets (SCM_RIGHTS: the same
//! kernel sockets, with their accept queues), starts its shards on them, and sends one
//! byte back. Only then does the old server drain: it stops accepting and closes its
//! own descriptors, and since the successor holds the same sockets, nothing waiting in
//! an accept queue is reset. Between the two steps both accept from the same queues,
//! which is harmless: each connection is accepted once.

use std::io::{self, Read, Write};
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

/// Most listeners one message carries (the kernel's SCM_MAX_FD is 253).
const MAX_FDS: usize = 253;
/// How long either side waits for the other.
pub const WAIT: Duration = Duration::from_secs(10);

/// Listens at `path` for a successor, replacing a stale socket file.
pub fn offer(path: &Path) -> io::Result<UnixListener> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let l = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// The old side: sends `fds` to a successor that connected, and waits for its word
/// that it serves them. `Ok(true)`: hand-over done, drain now.
pub fn give(mut peer: UnixStream, fds: &[RawFd]) -> io::Result<bool> {
    peer.set_nonblocking(false)?;
    peer.set_read_timeout(Some(WAIT))?;
    peer.set_write_timeout(Some(WAIT))?;
    send_fds(&peer, fds)?;
    let mut ack = [0u8; 1];
    match peer.read(&mut ack) {
        Ok(1) if ack[0] == b'1' => Ok(true),
        Ok(_) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The new side: connects to the server at `path` and takes its listeners. Call
/// [`confirm`] on the returned stream once they are served.
pub fn take(path: &Path) -> io::Result<(Vec<OwnedFd>, UnixStream)> {
    let s = UnixStream::connect(path)
        .map_err(|e| io::Error::new(e.kind(), format!("--takeover {}: {e}", path.display())))?;
    s.set_read_timeout(Some(WAIT))?;
    s.set_write_timeout(Some(WAIT))?;
    let fds = recv_fds(&s)?;
    if fds.is_empty() {
        return Err(io::Error::other("the old server handed over no listener"));
    }
    for fd in &fds {
        if !is_tcp_listener(fd.as_raw_fd()) {
            return Err(io::Error::other(
                "the old server handed over something that is not a listening TCP socket",
            ));
        }
    }
    Ok((fds, s))
}

/// Tells the old server that its listeners are served: it drains now.
pub fn confirm(mut s: UnixStream) -> io::Result<()> {
    s.write_all(b"1")
}

fn is_tcp_listener(fd: RawFd) -> bool {
    let mut v: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `v`.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    r == 0 && v == 1
}

/// The one byte of data that carries the descriptors (a message needs some).
fn one_byte(b: &mut [u8; 1]) -> libc::iovec {
    libc::iovec {
        iov_base: b.as_mut_ptr().cast(),
        iov_len: 1,
    }
}

/// A message of `iov` with `control` for ancillary data. The pointers it holds must
/// outlive its use.
fn message(iov: &mut libc::iovec, control: &mut [u8]) -> libc::msghdr {
    // SAFETY: all-zero is a valid msghdr (null pointers, zero lengths).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = control.len() as _;
    msg
}

fn send_fds(s: &UnixStream, fds: &[RawFd]) -> io::Result<()> {
    if fds.is_empty() || fds.len() > MAX_FDS {
        return Err(io::Error::other(format!(
            "cannot hand over {} listeners",
            fds.len()
        )));
    }
    let bytes = std::mem::size_of_val(fds);
    // SAFETY: CMSG_SPACE and CMSG_LEN only compute sizes.
    let (space, len) = unsafe {
        (
            libc::CMSG_SPACE(bytes as u32) as usize,
            libc::CMSG_LEN(bytes as u32) as usize,
        )
    };
    let mut control = vec![0u8; space];
    let mut count = [fds.len() as u8];
    let mut iov = one_byte(&mut count);
    // SAFETY: every pointer in the msghdr outlives the call, and the control buffer
    // has CMSG_SPACE bytes for one header and `fds`.
    unsafe {
        let msg = message(&mut iov, &mut control);
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = len as _;
        std::ptr::copy_nonoverlapping(
            fds.as_ptr(),
            libc::CMSG_DATA(cmsg).cast::<RawFd>(),
            fds.len(),
        );
        if libc::sendmsg(s.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn recv_fds(s: &UnixStream) -> io::Result<Vec<OwnedFd>> {
    let bytes = size_of::<RawFd>() * MAX_FDS;
    // SAFETY: computes a size.
    let space = unsafe { libc::CMSG_SPACE(bytes as u32) } as usize;
    let mut control = vec![0u8; space];
    let mut count = [0u8; 1];
    let mut iov = one_byte(&mut count);
    let mut fds = Vec::new();
    // SAFETY: as in send_fds; the kernel fills at most msg_controllen bytes, and every
    // descriptor it passes is new to this process, so owning it is right.
    unsafe {
        let mut msg = message(&mut iov, &mut control);
        let n = libc::recvmsg(s.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                let payload = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                for i in 0..payload / size_of::<RawFd>() {
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        if msg.msg_flags & libc::MSG_CTRUNC != 0 {
            return Err(io::Error::other("the listeners did not all arrive"));
        }
    }
    Ok(fds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_cross_a_unix_socket_and_keep_their_queue() {
        let dir = std::env::temp_dir().join(format!("reactor-handover-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("h.sock");
        let offered = offer(&path).unwrap();
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = tcp.local_addr().unwrap();
        // A connection waiting in the queue before the hand-over.
        let mut waiting = std::net::TcpStream::connect(addr).unwrap();
        let fd = tcp.as_raw_fd();
        let giver = std::thread::spawn(move || {
            offered.set_nonblocking(false).unwrap();
            let (peer, _) = offered.accept().unwrap();
            give(peer, &[fd]).unwrap()
        });
        let (fds, s) = take(&path).unwrap();
        assert_eq!(fds.len(), 1);
        confirm(s).unwrap();
        assert!(giver.join().unwrap());
        drop(tcp);
        let taken = std::net::TcpListener::from(fds.into_iter().next().unwrap());
        let (mut c, _) = taken.accept().unwrap();
        waiting.write_all(b"hi").unwrap();
        let mut b = [0u8; 2];
        c.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"hi");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
