//! The `fhirbox` binary: parse the command line and settings, then serve.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fhirbox_server::settings::{ProcessEnv, Settings};

#[derive(Parser)]
#[command(
    name = "fhirbox",
    version,
    about = "A FHIR R4 server whose credentials never live in its database"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Start the server (the default). Settings come from BOX_* environment variables.
    Serve,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve().await,
    }
}

async fn serve() -> ExitCode {
    let settings = match Settings::from_env(&ProcessEnv) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("fhirbox: invalid setting {e}");
            return ExitCode::from(2);
        }
    };
    fhirbox_server::logging::init(settings.log_format);
    match fhirbox_server::run(settings).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "fhirbox could not start");
            eprintln!("fhirbox: {e}");
            ExitCode::FAILURE
        }
    }
}
