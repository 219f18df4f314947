//! The `vmcryptfs` binary: parse arguments, run, map errors to exit codes.

use clap::Parser;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = vmcryptfs::cli::Cli::parse();
    if let Err(err) = vmcryptfs::cli::run(cli) {
        eprintln!("vmcryptfs: error: {err}");
        std::process::exit(err.kind.code());
    }
}
