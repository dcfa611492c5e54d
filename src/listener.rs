//! Socket options: the listener (SO_REUSEADDR, SO_REUSEPORT, backlog, TCP_DEFER_ACCEPT)
//! and the accepted sockets (TCP_NODELAY, TCP keep-alive), plus the open-files limit.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use mio::net::{TcpListener, TcpStream, UnixListener};
use socket2::{Domain, Protocol, SockAddr, SockRef, Socket, TcpKeepalive, Type};

use crate::core::Peer;

/// A shard's listening socket: TCP, or a Unix socket (every shard holds a duplicate of
/// the one descriptor, since a path cannot be bound twice).
pub(crate) enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// A connection just accepted, before the core has it.
pub(crate) enum Accepted {
    Tcp(TcpStream),
    Unix(mio::net::UnixStream),
}

impl Listener {
    pub fn accept(&self) -> io::Result<(Accepted, Peer)> {
        match self {
            Listener::Tcp(l) => l.accept().map(|(s, a)| (Accepted::Tcp(s), Peer::Ip(a))),
            Listener::Unix(l) => l.accept().map(|(s, _)| (Accepted::Unix(s), Peer::Unix)),
        }
    }

    pub fn source(&mut self) -> &mut dyn mio::event::Source {
        match self {
            Listener::Tcp(l) => l,
            Listener::Unix(l) => l,
        }
    }

    /// Where it listens.
    pub fn listen_addr(&self) -> io::Result<crate::config::ListenAddr> {
        use crate::config::ListenAddr;
        match self {
            Listener::Tcp(l) => l.local_addr().map(ListenAddr::Tcp),
            Listener::Unix(l) => {
                let path = SockRef::from(l)
                    .local_addr()?
                    .as_pathname()
                    .map(Path::to_path_buf)
                    .unwrap_or_default();
                Ok(ListenAddr::Unix(path))
            }
        }
    }

    /// A listener from a descriptor handed over by a predecessor: TCP or Unix, as the
    /// socket says.
    pub fn from_fd(fd: std::os::fd::OwnedFd) -> io::Result<Listener> {
        let unix = SockRef::from(&fd).local_addr()?.is_unix();
        Ok(if unix {
            let l = std::os::unix::net::UnixListener::from(fd);
            l.set_nonblocking(true)?;
            Listener::Unix(UnixListener::from_std(l))
        } else {
            let l = std::net::TcpListener::from(fd);
            l.set_nonblocking(true)?;
            Listener::Tcp(TcpListener::from_std(l))
        })
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Listener::Tcp(l) => l.as_fd(),
            Listener::Unix(l) => l.as_fd(),
        }
    }
}

/// How a Unix socket's file is made.
#[derive(Clone, Debug, Default)]
pub(crate) struct UnixOptions {
    /// Its permission bits (`0o660`, say); the umask's otherwise.
    pub mode: Option<u32>,
    /// Its owner and group (numeric ids), when they are to change.
    pub owner: Option<(Option<u32>, Option<u32>)>,
}

/// Connects to the Unix socket at `path` without waiting: `Ok` when something listens
/// (connected, or its queue full), `ConnectionRefused` when nobody does.
fn probe_unix(path: &Path) -> io::Result<()> {
    let s = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    s.set_nonblocking(true)?;
    match s.connect(&SockAddr::unix(path)?) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(()),
        Err(e) => Err(e),
    }
}

/// A listening Unix socket at `path`. A file already there is taken over only if it is
/// a socket nobody listens on (left by a crash); a live server's socket, or a file of
/// another kind, is refused.
pub(crate) fn bind_unix(
    path: &Path,
    backlog: i32,
    opts: &UnixOptions,
) -> io::Result<std::os::unix::net::UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket: not touched", path.display()),
            ));
        }
        Ok(_) => match probe_unix(path) {
            // Connected, or a full accept queue (a live server, stopped or busy): in
            // use either way. A blocking connect would wait on the full queue.
            Ok(()) => {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!(
                        "unix:{} is already in use: another server listens there",
                        path.display()
                    ),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                log::info!("removing the stale socket {}", path.display());
                std::fs::remove_file(path)?;
            }
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("{}: checking the socket already there: {e}", path.display()),
                ));
            }
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
    }
    let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    socket
        .bind(&SockAddr::unix(path)?)
        .map_err(|e| io::Error::new(e.kind(), format!("binding {}: {e}", path.display())))?;
    // Mode and owner before listen(): until then a connection is refused, so nobody
    // gets in under the umask's permissions.
    let made = (|| {
        if let Some(mode) = opts.mode {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        }
        if let Some((uid, gid)) = opts.owner {
            std::os::unix::fs::chown(path, uid, gid)?;
        }
        socket.listen(backlog)?;
        socket.set_nonblocking(true)
    })();
    if let Err(e) = made {
        let _ = std::fs::remove_file(path);
        return Err(io::Error::new(e.kind(), format!("{}: {e}", path.display())));
    }
    Ok(socket.into())
}

/// A non-blocking listener on `addr`. SO_REUSEPORT lets every reactor thread bind its
/// own listener to the same port; the kernel spreads new connections over them.
pub fn bind(addr: SocketAddr, backlog: i32) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    #[cfg(unix)]
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(TcpListener::from_std(socket.into()))
}

/// Makes sure no live socket listens on `addr` before the shards bind it, since their
/// SO_REUSEPORT would otherwise join a server already there (a forgotten instance, a
/// typo in a unit) and silently take part of its traffic. A probe binds without
/// SO_REUSEPORT (with SO_REUSEADDR, so that connections in TIME_WAIT from an earlier
/// run do not count): the kernel refuses it while any socket listens on the address.
/// Returns the address to bind, its port chosen when `addr`'s is 0.
pub fn claim(addr: SocketAddr) -> io::Result<SocketAddr> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    match socket.bind(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!(
                    "{addr} is already in use: another server listens there (to share the \
                     port with it on purpose, as a restart with SO_REUSEPORT does, give \
                     --reuse-port, Config::reuse_port)"
                ),
            ));
        }
        Err(e) => return Err(io::Error::new(e.kind(), format!("binding {addr}: {e}"))),
    }
    socket
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("the probe socket has no address"))
}

/// How accepted sockets notice a peer that vanished (no FIN, no RST ever comes).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct DeadPeer {
    /// Keep-alive: silence before the first probe, time between probes, probes.
    pub keepalive: Option<(Duration, Duration, u32)>,
    /// TCP_USER_TIMEOUT: most time sent data may stay unacknowledged.
    pub user_timeout: Option<Duration>,
}

/// How long the kernel holds a connection that has sent nothing before it lets it be
/// accepted anyway, with TCP_DEFER_ACCEPT, in seconds. One, as nginx sets it: the kernel
/// turns it into SYN-ACK retransmissions, so a silent client waits one retransmission
/// (about a second and more) rather than the minutes a longer value would hold it.
const DEFER_ACCEPT_SECS: libc::c_int = 1;

/// Whether a listener accepts connections only once their first bytes have come
/// (TCP_DEFER_ACCEPT, set here or by whoever passed the socket: systemd's
/// `DeferAcceptSec=`).
pub(crate) fn defers_accept(listener: &Listener) -> bool {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Listener::Tcp(l) = listener {
        use std::os::fd::AsRawFd;
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `v`, which is that large;
        // the descriptor is the listener's.
        let r = unsafe {
            libc::getsockopt(
                l.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_DEFER_ACCEPT,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        return r == 0 && v > 0;
    }
    let _ = listener;
    false
}

/// TCP_DEFER_ACCEPT on a listener (Linux): accept a connection once its first bytes
/// have come. Elsewhere a warning: the option is not there.
pub(crate) fn defer_accept(listener: &TcpListener) -> io::Result<()> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use std::os::fd::AsRawFd;
        let on = DEFER_ACCEPT_SECS;
        // SAFETY: setsockopt reads one int from `on`; the descriptor is the listener's.
        let r = unsafe {
            libc::setsockopt(
                listener.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_DEFER_ACCEPT,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        let _ = (listener, DEFER_ACCEPT_SECS);
        log::warn!("--defer-accept: TCP_DEFER_ACCEPT is Linux's; connections are accepted at once");
    }
    Ok(())
}

/// Options for accepted sockets, set once on the listener: on Linux an accepted
/// socket inherits them (TCP_NODELAY, the keep-alive settings, TCP_USER_TIMEOUT), which
/// saves six system calls per connection. Elsewhere [`configure_accepted`] sets them
/// on each.
pub(crate) fn configure_listener(listener: &TcpListener, dead: DeadPeer) -> io::Result<()> {
    configure(SockRef::from(listener), dead)
}

/// Options for an accepted socket, where it does not inherit them from its listener
/// (on Linux it does: nothing to do, no system call).
#[inline]
pub(crate) fn configure_accepted(stream: &TcpStream, dead: DeadPeer) -> io::Result<()> {
    if cfg!(target_os = "linux") {
        return Ok(());
    }
    configure(SockRef::from(stream), dead)
}

/// No Nagle delay, and the dead-peer detection.
fn configure(sock: SockRef<'_>, dead: DeadPeer) -> io::Result<()> {
    sock.set_tcp_nodelay(true)?;
    if let Some((idle, interval, count)) = dead.keepalive {
        let ka = TcpKeepalive::new().with_time(idle);
        #[cfg(any(target_os = "linux", target_os = "macos", target_os = "freebsd"))]
        let ka = ka.with_interval(interval).with_retries(count);
        #[cfg(not(any(target_os = "linux", target_os = "macos", target_os = "freebsd")))]
        let _ = (interval, count);
        sock.set_tcp_keepalive(&ka)?;
    }
    #[cfg(target_os = "linux")]
    if let Some(t) = dead.user_timeout {
        sock.set_tcp_user_timeout(Some(t))?;
    }
    Ok(())
}

/// The open-files limit after raising the soft limit to the hard one: (soft, hard).
#[cfg(unix)]
pub fn raise_nofile_limit() -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(io::Error::last_os_error());
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 everywhere
    Ok((lim.rlim_cur as u64, lim.rlim_max as u64))
}

#[cfg(not(unix))]
pub fn raise_nofile_limit() -> io::Result<(u64, u64)> {
    Ok((u64::MAX, u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The connection made to `l`, once the kernel has it.
    fn accept_one(l: &TcpListener) -> TcpStream {
        loop {
            match l.accept() {
                Ok((s, _)) => return s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    #[test]
    fn two_listeners_share_a_port() {
        let a = bind("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let addr = a.local_addr().unwrap();
        let b = bind(addr, 16).unwrap();
        assert_eq!(b.local_addr().unwrap(), addr);
    }

    #[test]
    fn a_claim_is_refused_where_a_listener_is() {
        let a = bind("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let addr = a.local_addr().unwrap();
        let e = claim(addr).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        assert!(e.to_string().contains(&addr.to_string()), "{e}");
        drop(a);
        assert_eq!(claim(addr).unwrap(), addr);
        let picked = claim("127.0.0.1:0".parse().unwrap()).unwrap();
        assert_ne!(picked.port(), 0);
    }

    /// What the listener is given, an accepted socket has (read back with getsockopt):
    /// no call per connection needed.
    #[test]
    #[cfg(target_os = "linux")]
    fn accepted_sockets_inherit_the_listeners_options() {
        let l = bind("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let dead = SAMPLE;
        configure_listener(&l, dead).unwrap();
        let _c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let s = accept_one(&l);
        has_sample_options(&s);
    }

    /// A listener given TCP_DEFER_ACCEPT says so when asked (as one passed with it by
    /// systemd would), and one without it does not.
    #[test]
    #[cfg(target_os = "linux")]
    fn a_deferring_listener_is_recognised() {
        let l = bind("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let plain = Listener::Tcp(bind("127.0.0.1:0".parse().unwrap(), 16).unwrap());
        assert!(!defers_accept(&plain));
        defer_accept(&l).unwrap();
        assert!(defers_accept(&Listener::Tcp(l)));
    }

    #[test]
    fn accepted_sockets_get_nodelay_and_keepalive() {
        let l = bind("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let _c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let s = accept_one(&l);
        let dead = SAMPLE;
        configure(SockRef::from(&s), dead).unwrap();
        has_sample_options(&s);
    }

    /// Dead-peer settings no default has, so that reading them back proves they were set.
    const SAMPLE: DeadPeer = DeadPeer {
        keepalive: Some((Duration::from_secs(42), Duration::from_secs(7), 4)),
        user_timeout: Some(Duration::from_millis(9500)),
    };

    /// The accepted socket has TCP_NODELAY, keep-alive and (on Linux, where they can be
    /// read back) `SAMPLE`'s keep-alive timing and user timeout.
    fn has_sample_options(s: &TcpStream) {
        let r = SockRef::from(s);
        assert!(r.tcp_nodelay().unwrap());
        assert!(r.keepalive().unwrap());
        #[cfg(target_os = "linux")]
        {
            assert_eq!(r.tcp_keepalive_time().unwrap(), Duration::from_secs(42));
            assert_eq!(r.tcp_keepalive_interval().unwrap(), Duration::from_secs(7));
            assert_eq!(r.tcp_keepalive_retries().unwrap(), 4);
            assert_eq!(
                r.tcp_user_timeout().unwrap(),
                Some(Duration::from_millis(9500))
            );
        }
    }
}
