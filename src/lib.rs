//! reactor: a TCP server built directly on the operating system's event loop (epoll on
//! Linux, kqueue on BSD and macOS, through mio).
//!
//! The map of the crate, in the order a request travels:
//!
//! - [`server`]: binds one SO_REUSEPORT listener per thread, starts the shards, turns
//!   SIGINT/SIGTERM into a graceful drain.
//! - `reactor` (private): one shard's loop: accept, read until WouldBlock, decode, write,
//!   timers, shutdown.
//! - `conn` (private): one connection's state, buffers and deadlines.
//! - [`buffer`]: the per-shard pool of 4 KB buffers, lent only while bytes are in flight.
//! - [`timer`]: the hashed timer wheel behind idle, read and write timeouts and
//!   `--delay-ms`.
//! - [`protocol`]: the sans-IO [`Protocol`](protocol::Protocol) trait and the built-in
//!   `echo`, `http` and `json` protocols.
//! - [`listener`]: socket options and the open-files limit.
//! - [`config`]: every setting and its default.
//! - [`stats`]: the counters.

pub mod buffer;
pub mod clock;
pub mod config;
mod conn;
pub mod listener;
pub mod protocol;
mod reactor;
pub mod server;
pub mod stats;
pub mod timer;

pub use config::{Config, ProtocolKind};
pub use server::Server;
