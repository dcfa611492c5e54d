//! Drivers: what makes the system calls for the connection core. A driver owns the
//! sockets and the wait for events, turns what happened into calls on the core
//! ([`Core`](crate::core::Core)) and lends it the sockets
//! ([`Sockets`](crate::core::Sockets)). It knows sockets, the core's interface and the
//! leaves (socket options); it imports no protocol, layer or counter.
//!
//! - `epoll`: mio (epoll on Linux, kqueue on BSD and macOS), one loop per shard.
//! - `accept`: accepting, bounded per turn, and surviving the lack of descriptors.
//!
//! Another backend plugs in the same way: one file that waits for its events, hands
//! each to the core, and implements [`Socket`](crate::core::Socket) over its own
//! notion of a connection (an io_uring driver would implement `read` over the buffers
//! its completions filled and `write` by queuing a send).

mod accept;
pub(crate) mod epoll;
