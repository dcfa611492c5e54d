//! reactor: a TCP server built directly on the operating system's event loop (epoll on
//! Linux, kqueue on BSD and macOS, through mio), one loop per thread, with connections
//! that hold no buffer while idle.
//!
//! What a program builds on:
//!
//! - [`http`]: HTTP/1.1 services: a handler gets each [`Request`](http::Request) whole
//!   and returns a [`Response`](http::Response), on the loop or on the worker pool.
//! - [`protocol`]: a protocol of your own, sans-IO: [`Protocol`](protocol::Protocol)
//!   decodes requests from bytes and appends answers; the built-in `echo` and `json`.
//! - [`connection`]: hooks when a connection opens and closes (its peer's address, the
//!   PROXY header's client, TLS ALPN), timers per connection, and a
//!   [`Pusher`](connection::Pusher) that writes to any connection from any thread.
//! - [`service`]: handlers that block, on the worker pool: a [`Codec`](service::Codec)
//!   on the loop and a [`Service`](service::Service) on the workers.
//! - [`Config`]: every setting and its default, with chainable setters; [`Server`]
//!   starts a configuration and a handler and reports its [`stats`](stats::Counters);
//!   [`server::run`] also owns the process (signals, the graceful drain, the stats
//!   line).
//! - [`client`]: the pooled client: many requests in flight per connection, replies
//!   waited for or awaited. [`wire`] holds each built-in protocol's wire facts, once.
//! - [`tls`]: the client side of TLS (the server's is `Config::tls_cert`).
//!
//! # Examples
//!
//! All are in `examples/`, run with `cargo run --release --example NAME`, and tested by
//! `cargo test`.
//!
//! **`kv_http`**: a key-value store over HTTP, on the request API:
//!
#![doc = concat!("```rust,ignore\n", include_str!("../examples/kv_http.rs"), "```")]
//!
//! **`chat`**: a chat room on the connection hooks and pushes:
//!
#![doc = concat!("```rust,ignore\n", include_str!("../examples/chat.rs"), "```")]
//!
//! **`kv`**: a key-value store over a line protocol, a [`Protocol`](protocol::Protocol)
//! of its own; **`files`**: files over HTTP, read on the worker pool. Both in
//! `examples/`.

/// Modules public only with the `internals` feature (this project's tests, benches
/// and fuzz targets); the crate's own otherwise.
macro_rules! internal {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {$(
        $(#[$doc])*
        #[cfg(feature = "internals")]
        #[doc(hidden)]
        pub mod $name;
        #[cfg(not(feature = "internals"))]
        #[allow(dead_code)]
        mod $name;
    )*};
}

internal!(buffer, handover, listener, proxy, timer, workers);
mod activation;
pub mod client;
pub mod clock;
pub mod config;
pub mod connection;
mod core;
mod driver;
mod duration;
pub mod http;
mod jobs;
pub mod memory;
mod metrics;
mod mutant;
pub mod protocol;
pub mod server;
pub mod service;
mod shared;
pub mod stats;
mod tickets;
pub mod tls;
pub mod wire;

/// The `bytes` crate, whose `BytesMut` a protocol writes its answers into: re-exported
/// so that a protocol needs no dependency of its own on it (`reactor::bytes::BytesMut`).
pub use bytes;
pub use config::{Config, ProtocolKind};
pub use server::Server;
