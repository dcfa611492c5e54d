use clap::Parser;

/// Counts the heap, for --max-buffer-memory and the `buffer_memory` gauge.
#[global_allocator]
static HEAP: reactor::memory::Counted = reactor::memory::Counted;

fn main() {
    // Started by a service manager with sockets of its own (systemd's socket
    // activation), the server serves those instead of binding --addr.
    let cfg = reactor::Config::parse().socket_activation(true);
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    if let Err(e) = reactor::server::run(&cfg) {
        log::error!("reactor: {e}");
        std::process::exit(1);
    }
}
