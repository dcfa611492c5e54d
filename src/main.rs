use clap::Parser;

fn main() {
    let cfg = reactor::Config::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    if let Err(e) = reactor::server::run(&cfg) {
        log::error!("reactor: {e}");
        std::process::exit(1);
    }
}
