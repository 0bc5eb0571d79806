//! The command line: argument shapes only; the work is done in the library crate.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Portcullis: a security gateway for web APIs, configured by one TOML file.
#[derive(Debug, Parser)]
#[command(name = "portcullis", version, about, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway in front of the configured upstream.
    Serve {
        /// The config file.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Run the gateway in front of a built-in demo application.
    Demo {
        /// Where the demo listens.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
        listen: String,
    },
    /// Validate a config file and report every error.
    CheckConfig {
        /// The config file.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Mint a development JWT with the configured HMAC key.
    Token {
        /// The subject (user id).
        #[arg(long, value_name = "ID")]
        sub: String,
        /// A role to grant (repeat for several).
        #[arg(long, value_name = "ROLE")]
        role: Vec<String>,
        /// How long the token is valid.
        #[arg(long, value_name = "DURATION", default_value = "1h")]
        ttl: String,
        /// The config file holding `[auth.jwt]`.
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Manage API keys.
    Apikey {
        /// What to do with API keys.
        #[command(subcommand)]
        command: ApikeyCommand,
    },
    /// Read the audit log.
    Audit {
        /// What to do with the audit log.
        #[command(subcommand)]
        command: AuditCommand,
    },
}

/// `portcullis apikey …`.
#[derive(Debug, Subcommand)]
pub enum ApikeyCommand {
    /// Generate a key and print it with the `[[auth.api_keys]]` entry to paste.
    New {
        /// The key's id.
        #[arg(long, value_name = "ID")]
        id: String,
        /// A role to grant (repeat for several).
        #[arg(long, value_name = "ROLE")]
        role: Vec<String>,
    },
}

/// `portcullis audit …`.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Query audit events (the newest matches, printed oldest first).
    Query {
        /// Where the events are.
        #[command(flatten)]
        source: AuditSource,
        /// Only events newer than this: a duration ago (1h, 7d) or an RFC 3339 time.
        #[arg(long, value_name = "WHEN")]
        since: Option<String>,
        /// Only events older than this: a duration ago or an RFC 3339 time.
        #[arg(long, value_name = "WHEN")]
        until: Option<String>,
        /// Only this action (e.g. rate_limit_exceeded); an unknown name is refused.
        #[arg(long, value_name = "A")]
        action: Option<String>,
        /// Only this principal.
        #[arg(long, value_name = "U")]
        user: Option<String>,
        /// Only this client address (one address, IPv4 or IPv6; not a CIDR range).
        #[arg(long, value_name = "IP")]
        ip: Option<String>,
        /// Only this route pattern (or canonical path).
        #[arg(long, value_name = "R")]
        route: Option<String>,
        /// At most this many events.
        #[arg(long, value_name = "N", default_value_t = 100)]
        limit: u32,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Count the refusals of a window: events by action, the top offenders, refused users
    /// and rate-limited routes (what the admin dashboard shows).
    Summary {
        /// Where the events are.
        #[command(flatten)]
        source: AuditSource,
        /// The window's start: a duration ago (1h, 7d) or an RFC 3339 time.
        #[arg(long, value_name = "WHEN", default_value = "1h")]
        since: String,
        /// The window's end (now when absent): a duration ago or an RFC 3339 time.
        #[arg(long, value_name = "WHEN")]
        until: Option<String>,
        /// How many offenders, users and routes to list.
        #[arg(long, value_name = "N", default_value_t = 10)]
        top: u32,
        /// Output format: table or json.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Print new audit events as they are stored, until interrupted.
    Tail {
        /// Where the events are.
        #[command(flatten)]
        source: AuditSource,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Json)]
        format: Format,
        /// How often to look for new events.
        #[arg(long, value_name = "DURATION", default_value = "500ms")]
        interval: String,
    },
}

/// The audit store to read: the config's `[storage] audit`, or a storage URL.
#[derive(Debug, Clone, clap::Args)]
pub struct AuditSource {
    /// The config file naming the audit store.
    #[arg(long, short, value_name = "FILE", conflicts_with = "store")]
    pub config: Option<PathBuf>,
    /// The store itself: sqlite://PATH, postgres://…, jsonl://PATH.
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
}

/// Output format of `audit query` and `audit tail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    Table,
    /// One JSON object per line for tools.
    Json,
    /// Comma-separated values with a header line.
    Csv,
}
