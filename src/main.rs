//! The `stampede` binary: parse the command line, load settings, start.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

/// mimalloc: the claim path allocates many small, short-lived buffers across
/// worker threads; glibc malloc spent ~13% of the service's CPU on them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use stampede::domain::clock::SystemClock;
use stampede::settings::Settings;
use stampede::startup::Application;

#[derive(Parser)]
#[command(version, about = "Coupon issuance and anti-abuse service")]
struct Cli {
    /// TOML config file (also STAMPEDE_CONFIG); STAMPEDE_* variables override it.
    #[arg(long, env = "STAMPEDE_CONFIG", global = true)]
    config: Option<PathBuf>,
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve) {
        Command::CheckConfig { file } => check_config(&file),
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

/// `check-config FILE`: exit 0, or 2 with `FILE: line N[, column C]: reason`.
fn check_config(file: &std::path::Path) -> ExitCode {
    use stampede::domain::limits::{MAX_FILE_BYTES, RuleSet, is_rules_file};
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
        match stampede::settings::check_text(&text) {
            Ok(_) => {
                println!("{}: ok (service config)", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        }
    }
}
