use std::process::ExitCode;

use clap::Parser;

use appserver_operator::cli::{self, Cli};

fn main() -> ExitCode {
    // One crypto provider for every TLS client in the process (kube's and Prometheus's); an
    // error only means one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match cli::execute(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
