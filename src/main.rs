//! The `vmcryptfs` binary: parse arguments, run, map errors to exit codes.

use clap::Parser;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args =
        vmcryptfs::cli::mount_helper::rewrite_mount_helper_args(std::env::args_os().collect());
    let cli = vmcryptfs::cli::Cli::parse_from(args);
    if let Err(err) = vmcryptfs::cli::run(cli) {
        eprintln!("vmcryptfs: error: {err}");
        std::process::exit(err.kind.code());
    }
}
