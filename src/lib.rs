//! reactor: a TCP server built directly on the operating system's event loop (epoll on
//! Linux, kqueue on BSD and macOS, through mio).
//!
//! The map of the crate, in the order a request travels:
//!
//! - [`server`]: binds one SO_REUSEPORT listener per thread, starts the shards, turns
//!   SIGINT/SIGTERM into a graceful drain.
//! - `driver` (private): the epoll (mio) driver: one shard's loop, accepting, and the
//!   system calls, nothing else.
//! - `core` (private): the connection core, sans-IO: one connection's life in layers
//!   (PROXY preamble, plain or TLS transport, inline or pooled dispatch) and the
//!   shard's policy (limits, timers, drain, counters), tested by deterministic
//!   simulation.
//! - `jobs` (private): a connection's jobs in flight (its reorder queue) and the completion
//!   queue that brings their answers back to the shard.
//! - [`workers`]: the worker pool for handlers that may block: fixed or growing,
//!   bounded queue.
//! - [`service`]: [`Codec`](service::Codec) + [`Service`](service::Service) for handlers
//!   that block, and [`Handler`](service::Handler), what the loop drives.
//! - [`buffer`]: the per-shard pool of 4 KB buffers, lent only while bytes are in flight.
//! - [`timer`]: the hashed timer wheel behind idle, read and write timeouts and
//!   `--delay-ms`.
//! - [`protocol`]: the sans-IO [`Protocol`](protocol::Protocol) trait and the built-in
//!   `echo`, `http` and `json` protocols.
//! - [`wire`]: each built-in protocol's wire facts, once: constants, and the client
//!   side (encode a request, frame and check a reply), shared by the server, the
//!   client, reactor-bench and the tests.
//! - [`client`]: the pooled client: one I/O thread per pool, many requests in flight
//!   per connection, replies waited for or awaited.
//! - [`tls`]: TLS around any protocol with rustls's unbuffered API: an idle TLS
//!   connection holds its session state and no buffer.
//! - [`listener`]: socket options and the open-files limit.
//! - [`config`]: every setting and its default.
//! - [`stats`]: the counters.
//! - `metrics` (private): `/metrics` (Prometheus) and `/health`, served by a shard of
//!   their own.
//!
//! # Examples
//!
//! Both are in `examples/`, run with `cargo run --release --example NAME`, and tested by
//! `cargo test` (their tests start the server in-process and talk to it over sockets).
//!
//! **`kv`**: a key-value store in memory over a line protocol. Its work never blocks,
//! so it is a [`Protocol`](protocol::Protocol), answered on the loop:
//!
#![doc = concat!("```rust,ignore\n", include_str!("../examples/kv.rs"), "```")]
//!
//! **`files`**: each request names a file, and a worker reads it (a blocking read) and
//! answers with its size. The decoding and encoding are a [`Codec`](service::Codec) on
//! the loop; the read is the [`Service`](service::Service), on the worker pool:
//!
#![doc = concat!("```rust,ignore\n", include_str!("../examples/files.rs"), "```")]

pub mod buffer;
pub mod client;
pub mod clock;
pub mod config;
pub mod connection;
mod core;
mod driver;
mod duration;
pub mod handover;
pub mod http;
mod jobs;
pub mod listener;
mod metrics;
mod mutant;
pub mod protocol;
pub mod proxy;
pub mod server;
pub mod service;
mod shared;
pub mod stats;
pub mod timer;
pub mod tls;
pub mod wire;
pub mod workers;

/// The `bytes` crate, whose `BytesMut` a protocol writes its answers into: re-exported
/// so that a protocol needs no dependency of its own on it (`reactor::bytes::BytesMut`).
pub use bytes;
pub use config::{Config, ProtocolKind};
pub use server::Server;
