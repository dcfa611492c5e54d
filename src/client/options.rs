//! Every setting of a client pool and its default.

use std::time::Duration;

/// How a [`Pool`](super::Pool) connects, waits and recycles. Start from
/// `Options::default()` and change what you need:
///
/// ```
/// # use std::time::Duration;
/// let opts = reactor::client::Options {
///     max_size: 4,
///     response_timeout: Some(Duration::from_secs(2)),
///     ..Default::default()
/// };
/// # let _ = opts;
/// ```
#[derive(Clone, Debug)]
pub struct Options {
    /// A request unanswered this long after it was handed to the pool fails with
    /// [`Error::Timeout`](super::Error::Timeout), and its connection is retired
    /// (`None`: wait for ever).
    pub response_timeout: Option<Duration>,
    /// A connection not established within this long fails, with the requests
    /// waiting on it.
    pub dial_timeout: Duration,
    /// TCP keep-alive idle time (`None`: off).
    pub keepalive: Option<Duration>,
    /// `TCP_NODELAY`: send small requests at once (Nagle off).
    pub nodelay: bool,
    /// `SO_LINGER 0`: a close resets the connection instead of leaving it in TIME_WAIT
    /// (the seed sets it; useful for benchmarks that open many connections).
    pub linger_zero: bool,
    /// Most connections, connecting and checked-out ones included.
    pub max_size: usize,
    /// Idle connections the pool keeps open (dialled up front and after closes).
    pub min_idle: usize,
    /// An idle connection is closed after this long unused (above `min_idle`).
    pub idle_timeout: Option<Duration>,
    /// A connection older than this is retired: it takes no new request, and closes
    /// once its requests are answered and it is returned.
    pub max_lifetime: Option<Duration>,
    /// How long a request or an `acquire` waits for a connection when none can take
    /// it; [`Error::PoolTimeout`](super::Error::PoolTimeout) past it.
    pub wait_timeout: Duration,
    /// A connection idle longer than this is checked (a non-blocking peek for a close
    /// or a reset) before it is handed out; a fresher one is not, since a check on
    /// every request would add a system call to each (`None`: never check).
    pub check_after: Option<Duration>,
    /// Most requests in flight on one connection; past it the pool spreads to another
    /// connection or makes the request wait.
    pub max_in_flight: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            response_timeout: Some(Duration::from_secs(30)),
            dial_timeout: Duration::from_secs(5),
            keepalive: Some(Duration::from_secs(60)),
            nodelay: true,
            linger_zero: false,
            max_size: 8,
            min_idle: 0,
            idle_timeout: Some(Duration::from_secs(600)),
            max_lifetime: Some(Duration::from_secs(1800)),
            wait_timeout: Duration::from_secs(30),
            check_after: Some(Duration::from_secs(1)),
            max_in_flight: 1024,
        }
    }
}
