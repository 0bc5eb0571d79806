//! The `portcullis` binary: a thin command line over the `portcullis_gateway` crate.

mod audit_cli;
mod cli;

/// mimalloc: the gateway allocates and frees small buffers on every request, across threads.
/// (Through `portcullis-alloc`, which keeps word-aligned blocks on mimalloc's fast path.)
#[global_allocator]
static ALLOCATOR: portcullis_alloc::MiMalloc = portcullis_alloc::MiMalloc;

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use portcullis_gateway::config::{ConfigErrors, GatewayConfig, Threading};
use portcullis_gateway::serve::ServeError;

use cli::{Cli, Command};

/// Exit status of a config with errors (clap uses 2 for usage errors too).
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::CheckConfig { config } => check_config(&config),
        Command::Serve { config } => serve(&config),
        Command::Demo { listen } => demo(&listen),
        Command::Token {
            sub,
            role,
            ttl,
            config,
        } => token(&sub, &role, &ttl, config.as_deref()),
        Command::Apikey {
            command: cli::ApikeyCommand::New { id, role },
        } => apikey_new(&id, &role),
        Command::Audit { command } => audit_cli::run(command),
    }
}

/// `demo`: the gateway in front of the built-in demo app, with secrets made for this run.
fn demo(listen: &str) -> ExitCode {
    init_logging();
    for (name, value) in portcullis_gateway::demo::fresh_secrets() {
        // SAFETY: no other thread exists yet (`demo::main` starts the runtime), so nothing
        // can read the environment while it changes.
        unsafe { std::env::set_var(name, value) };
    }
    portcullis_gateway::demo::main(listen)
}

/// `token`: mints a development HS256 token with `[auth.jwt] secret_env`.
fn token(sub: &str, roles: &[String], ttl: &str, config: Option<&Path>) -> ExitCode {
    let path = config.unwrap_or(Path::new("portcullis.toml"));
    let ttl = match portcullis_gateway::config::parse_duration(ttl) {
        Ok(d) => d,
        Err(reason) => {
            eprintln!("portcullis token: --ttl {ttl:?}: {reason}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let config = match GatewayConfig::load(path, portcullis_gateway::config::Purpose::Tool) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let Some(jwt) = &config.auth.jwt else {
        eprintln!(
            "{}: auth.jwt: no [auth.jwt] section to sign with",
            path.display()
        );
        return ExitCode::from(EXIT_CONFIG);
    };
    match portcullis_gateway::auth::mint(jwt, sub, roles, ttl) {
        Ok(t) => {
            println!("{t}");
            ExitCode::SUCCESS
        }
        Err(reason) => {
            eprintln!("{}: {reason}", path.display());
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// `apikey new`: prints a fresh key once, and the config entry holding only its hash; an id
/// or role the config would refuse is exit 2 with nothing on stdout.
fn apikey_new(id: &str, roles: &[String]) -> ExitCode {
    let (key, entry) = match portcullis_gateway::auth::new_api_key(id, roles) {
        Ok(made) => made,
        Err(reason) => {
            eprintln!("portcullis apikey new: {reason}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    println!(
        "API key (shown once; store it now): {key}
"
    );
    println!(
        "Paste into the config:

{entry}"
    );
    ExitCode::SUCCESS
}

/// `serve`: every config error on stderr and exit 2, or run until SIGTERM/SIGINT.
fn serve(path: &Path) -> ExitCode {
    init_logging();
    let loaded = portcullis_gateway::reload::FileStamp::of(path);
    let config = match GatewayConfig::from_file(path) {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // Per-core: the workers start their own runtimes (see `serve`); the main thread keeps
    // signals, reloads, the admin listener and the audit writer. Work-stealing: one runtime
    // of `workers` threads serves everything.
    let mut runtime = match config.server.threading {
        Threading::PerCore => tokio::runtime::Builder::new_current_thread(),
        Threading::WorkStealing => {
            let mut rt = tokio::runtime::Builder::new_multi_thread();
            rt.worker_threads(portcullis_gateway::serve::worker_count(
                config.server.workers,
            ));
            rt
        }
    };
    runtime.enable_all();
    let runtime = match runtime.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("portcullis serve: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(portcullis_gateway::serve::run(path, loaded, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(ServeError::Config(errors)) => {
            eprintln!("{errors}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(e) => {
            eprintln!("portcullis serve: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`), in colour only on a terminal.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = colour_logs(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Whether log lines carry ANSI colour: only for a terminal, since escapes in a file, a pipe
/// or a journal are noise that log tools do not strip; and never when `NO_COLOR` is set to a
/// non-empty value (<https://no-color.org>).
fn colour_logs(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// `check-config`: `FILE: ok (N routes)` on stdout, or every error on stderr and exit 2.
fn check_config(path: &Path) -> ExitCode {
    let file = path.display().to_string();
    // Beyond the file itself: whatever `serve` would refuse at start (TLS files, the
    // audit store), so a deploy that passes the check also starts.
    let checked = GatewayConfig::from_file(path).and_then(|config| {
        let errors = config.startup_errors();
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors {
                file: file.clone(),
                errors,
            })
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_are_coloured_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(colour_logs(true, None));
        assert!(!colour_logs(false, None));
        assert!(!colour_logs(true, Some(OsStr::new("1"))));
        // NO_COLOR set but empty does not count (no-color.org).
        assert!(colour_logs(true, Some(OsStr::new(""))));
        assert!(!colour_logs(false, Some(OsStr::new(""))));
    }
}
