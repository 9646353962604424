//! The `stampede` binary: parse the command line, load settings, start.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

/// mimalloc: the claim path allocates many small, short-lived buffers across
/// worker threads; glibc malloc spent ~13% of the service's CPU on them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use stampede::cli::{Admin, BanCmd, CampaignCmd, CodesCmd, LimitsCmd, Remote};
use stampede::domain::clock::SystemClock;
use stampede::settings::Settings;
use stampede::startup::Application;

#[derive(Parser)]
#[command(version, about = "Coupon issuance and anti-abuse service")]
struct Cli {
    /// TOML config file (also STAMPEDE_CONFIG); STAMPEDE_* variables override it.
    #[arg(long, env = "STAMPEDE_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(flatten)]
    remote: Remote,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (the default).
    Serve,
    /// Validate a service config or a rules file (LIMITS.md; recognised by
    /// its tables) without starting anything.
    CheckConfig { file: PathBuf },
    /// Campaigns on a running service (--url, --key).
    #[command(subcommand)]
    Campaign(CampaignCmd),
    /// Pre-issued codes.
    #[command(subcommand)]
    Codes(CodesCmd),
    /// Bans of phones, devices and IPs.
    #[command(subcommand)]
    Ban(BanCmd),
    /// The rules file: in force on the service, or checked offline.
    #[command(subcommand)]
    Limits(LimitsCmd),
    /// The audit trail of a campaign (or, without one, of the service).
    Audit {
        campaign: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let admin = |cmd| stampede::cli::run(&cli.remote, cmd);
    match cli.command.unwrap_or(Command::Serve) {
        Command::CheckConfig { file } => stampede::cli::check_config(&file),
        Command::Campaign(c) => admin(Admin::Campaign(c)),
        Command::Codes(c) => admin(Admin::Codes(c)),
        Command::Ban(c) => admin(Admin::Ban(c)),
        Command::Limits(c) => admin(Admin::Limits(c)),
        Command::Audit { campaign, limit } => admin(Admin::Audit { campaign, limit }),
        Command::Serve => {
            let settings = match Settings::load(cli.config.as_deref()).and_then(Settings::validate)
            {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("configuration error: {e}");
                    return ExitCode::from(2);
                }
            };
            stampede::telemetry::init(&settings.raw.log_format);
            let run = async {
                let app = Application::build(settings, Arc::new(SystemClock)).await?;
                app.run_until_stopped().await?;
                Ok::<_, Box<dyn std::error::Error>>(())
            };
            match actix_web::rt::System::new().block_on(run) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "stampede stopped with an error");
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
