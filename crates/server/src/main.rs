//! The `fhirbox` binary: parse the command line and settings, then serve.

use std::path::PathBuf;
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
    /// External secrets: check a vault config and the files it names.
    Vault {
        #[command(subcommand)]
        command: VaultCommand,
    },
    /// Check every stored resource against the structure FHIR R4 defines and
    /// list those that fail, by type and id; changes nothing. Reads the
    /// database from BOX_DB_URL (or BOX_DB_*). Exit code 0 when all pass, 1
    /// when some fail, 2 when the database cannot be read.
    ValidateStore,
    /// Rebuild the search index of every stored resource (docs/search.md).
    /// The server does this by itself at start when the index was built by
    /// other definitions; this forces it. Stop the server first on SQLite.
    Reindex,
}

#[derive(Subcommand)]
enum VaultCommand {
    /// Validate a vault config and every secret file it names (exists, readable,
    /// regular, non-empty, size) and print names, paths, scopes and states —
    /// never values. Exit code 0 only when everything is good.
    Check {
        /// The vault config; defaults to BOX_VAULT_CONFIG (or AIDBOX_VAULT_CONFIG).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve().await,
        Command::Vault {
            command: VaultCommand::Check { config, json },
        } => vault_check(config, json),
        Command::ValidateStore => validate_store().await,
        Command::Reindex => reindex().await,
    }
}

async fn reindex() -> ExitCode {
    let settings = match Settings::from_env(&ProcessEnv) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("fhirbox: invalid setting {e}");
            return ExitCode::from(2);
        }
    };
    let store = match fhirbox_store::Store::open(settings.database.expose()).await {
        Ok(store) => store,
        Err(e) => {
            eprintln!(
                "fhirbox reindex: cannot open the database {}: {e}",
                settings.database.masked()
            );
            return ExitCode::from(2);
        }
    };
    let started = std::time::Instant::now();
    let result = fhirbox_rest::indexing::reindex(&store).await;
    store.close().await;
    match result {
        Ok(count) => {
            println!(
                "indexed {count} resources in {:.1} s",
                started.elapsed().as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fhirbox reindex: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn validate_store() -> ExitCode {
    let settings = match Settings::from_env(&ProcessEnv) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("fhirbox: invalid setting {e}");
            return ExitCode::from(2);
        }
    };
    let (code, text) = fhirbox_server::validate_store::validate_store_command(&settings).await;
    print!("{text}");
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn vault_check(config: Option<PathBuf>, json: bool) -> ExitCode {
    let config = config.or_else(|| match Settings::from_env(&ProcessEnv) {
        Ok(settings) => settings.vault_config,
        Err(e) => {
            eprintln!("fhirbox: invalid setting {e}");
            None
        }
    });
    let Some(config) = config else {
        eprintln!(
            "fhirbox vault check: name the vault config with --config PATH or BOX_VAULT_CONFIG"
        );
        return ExitCode::from(2);
    };
    match fhirbox_server::vault::check_command(&config, json) {
        0 => ExitCode::SUCCESS,
        code => ExitCode::from(u8::try_from(code).unwrap_or(1)),
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
