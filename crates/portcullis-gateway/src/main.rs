//! The `portcullis` binary: a thin command line over the `portcullis_gateway` crate.

mod audit_cli;
mod cli;

use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use portcullis_gateway::config::{ConfigErrors, GatewayConfig};

use cli::{Cli, Command};

/// Exit status of a config with errors (clap uses 2 for usage errors too).
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::CheckConfig { config } => check_config(&config),
        Command::Serve { .. } => not_implemented("serve"),
        Command::Demo { .. } => not_implemented("demo"),
        Command::Token { .. } => not_implemented("token"),
        Command::Apikey { .. } => not_implemented("apikey"),
        Command::Audit { command } => audit_cli::run(command),
    }
}

/// The placeholder of a command still being written.
fn not_implemented(command: &str) -> ExitCode {
    eprintln!("portcullis {command}: not implemented yet");
    ExitCode::FAILURE
}

/// `check-config`: `FILE: ok (N routes)` on stdout, or every error on stderr and exit 2.
fn check_config(path: &Path) -> ExitCode {
    let file = path.display().to_string();
    let checked = GatewayConfig::from_file(path).and_then(|config| {
        config
            .security_layer()
            .map(|_| config)
            .map_err(|e| ConfigErrors {
                file: file.clone(),
                errors: vec![e],
            })
    });
    match checked {
        Ok(config) => {
            for w in config.unapplied_settings() {
                eprintln!("{file}: {}: warning: {}", w.key, w.reason);
            }
            let n = config.routes.len();
            println!("{file}: ok ({n} route{})", if n == 1 { "" } else { "s" });
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}
