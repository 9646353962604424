//! The admin CLI: the same binary, talking to a running service over its
//! HTTP API (so it needs no Redis access and obeys the same roles, audit
//! and problem codes as any client). `--url` / `STAMPEDE_URL`, `--key` /
//! `STAMPEDE_KEY`; human tables by default, `--json` for scripts; on error
//! the problem's `detail` on stderr and a non-zero exit (1: the service
//! refused, 2: bad usage or a bad file, 3: the service cannot be reached).
//!
//! Why over HTTP and not on `Services` (STYLE.md's sketch): an operator's
//! terminal is rarely inside the Redis network, and going through the API
//! keeps one permission table, one audit trail and one set of error codes.

pub mod client;
mod commands;
mod table;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

pub use client::{CliError, Client};

/// Where the service is and who is asking.
#[derive(Debug, Clone, Args)]
pub struct Remote {
    /// The service's base URL.
    #[arg(
        long,
        env = "STAMPEDE_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub url: String,
    /// An API key (`admin` to change things, `viewer` to read).
    #[arg(long, env = "STAMPEDE_KEY", hide_env_values = true, global = true)]
    pub key: Option<String>,
    /// Print the service's JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum CampaignCmd {
    /// Create a campaign (flags, or the whole JSON body with --from).
    Create(Box<commands::CreateArgs>),
    /// The newest campaigns.
    List {
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// One campaign with its live counters and stats.
    Show { id: String },
    /// Stop claims for now.
    Pause(commands::TransitionArgs),
    /// Take claims again.
    Resume(commands::TransitionArgs),
    /// End for good.
    End(commands::TransitionArgs),
    /// Approve a campaign another key created (four eyes).
    Approve(commands::TransitionArgs),
    /// Ask for approval (a draft).
    Submit(commands::TransitionArgs),
    /// Send back for changes.
    Reject(commands::TransitionArgs),
}

#[derive(Debug, Subcommand)]
pub enum CodesCmd {
    /// Reserve COUNT codes against the stock and write them as CSV.
    Export {
        campaign: String,
        #[arg(long)]
        count: u64,
        #[arg(long)]
        out: PathBuf,
        /// Makes a retry stream the same codes instead of reserving more.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum BanCmd {
    /// Ban a phone (any spelling), a device or an IP.
    Add {
        #[arg(value_parser = ["phone", "device", "ip"])]
        kind: String,
        value: String,
        /// e.g. 30m, 24h, 7d (default 24h).
        #[arg(long)]
        duration: Option<String>,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Lift a ban.
    Rm {
        #[arg(value_parser = ["phone", "device", "ip"])]
        kind: String,
        value: String,
    },
    /// Running bans.
    List {
        #[arg(long, value_parser = ["phone", "device", "ip"])]
        kind: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum LimitsCmd {
    /// The rules in force on the service.
    Show,
    /// Validate a rules file (or a service config) offline.
    Check { file: PathBuf },
}

/// An admin command with where to send it.
#[derive(Debug)]
pub enum Admin {
    Campaign(CampaignCmd),
    Codes(CodesCmd),
    Ban(BanCmd),
    Limits(LimitsCmd),
    Audit {
        campaign: Option<String>,
        limit: u32,
    },
}

/// Runs one admin command; prints its result or its error.
pub fn run(remote: &Remote, cmd: Admin) -> ExitCode {
    if let Admin::Limits(LimitsCmd::Check { file }) = &cmd {
        return check_config(file);
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(3);
        }
    };
    let result = Client::new(&remote.url, remote.key.clone())
        .and_then(|client| rt.block_on(commands::dispatch(&client, remote.json, cmd)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(match e {
                CliError::Problem { .. } => 1,
                CliError::Usage(_) | CliError::Io(_) => 2,
                CliError::Connect { .. } => 3,
            })
        }
    }
}

/// `check-config FILE` / `limits check FILE`: exit 0, or 2 with
/// `FILE: line N[, column C]: reason`.
pub fn check_config(file: &std::path::Path) -> ExitCode {
    use crate::domain::limits::{MAX_FILE_BYTES, RuleSet, is_rules_file};
    let fail = |why: String| {
        eprintln!("{}: {why}", file.display());
        ExitCode::from(2)
    };
    match std::fs::metadata(file) {
        Ok(m) if m.len() > MAX_FILE_BYTES as u64 => {
            return fail("the file is larger than 1 MiB".into());
        }
        Ok(_) => {}
        Err(e) => return fail(format!("cannot read the file: {e}")),
    }
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => return fail(format!("cannot read the file: {e}")),
    };
    if is_rules_file(&text) {
        match RuleSet::parse(&text) {
            Ok(set) => {
                println!(
                    "{}: ok (rules file, {} rules, version {})",
                    file.display(),
                    set.rules.len(),
                    set.version
                );
                ExitCode::SUCCESS
            }
            Err(e) => fail(e.to_string()),
        }
    } else {
        match crate::settings::check_text(&text) {
            Ok(_) => {
                println!("{}: ok (service config)", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        }
    }
}
