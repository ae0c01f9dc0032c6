//! The `scimlog` command line: `serve` and `token`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::ServeConfig;

#[derive(Parser)]
#[command(name = "scimlog", version, about = "Event-sourced SCIM 2.0 identity directory")]
pub struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve SCIM 2.0 over HTTP.
    Serve(ServeConfig),
    /// Manage bearer tokens (works while the server runs).
    Token {
        #[command(subcommand)]
        command: TokenCmd,
    },
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Create a token and print it once; only its hash is stored.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "default")]
        tenant: String,
        #[arg(long, env = "SCIMLOG_DATA_DIR", default_value = "./scimlog-data")]
        data_dir: PathBuf,
    },
    /// Revoke a token by name; takes effect at the next request.
    Revoke {
        #[arg(long)]
        name: String,
        #[arg(long, env = "SCIMLOG_DATA_DIR", default_value = "./scimlog-data")]
        data_dir: PathBuf,
    },
    /// List token names and tenants (never the tokens).
    List {
        #[arg(long, env = "SCIMLOG_DATA_DIR", default_value = "./scimlog-data")]
        data_dir: PathBuf,
    },
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SCIMLOG_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = std::env::var("SCIMLOG_LOG_FORMAT").is_ok_and(|f| f == "json");
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Runs the command line; the process exit code is non-zero on any error.
pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging();
    match cli.command {
        Cmd::Serve(cfg) => {
            tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(crate::server::serve(cfg))
        }
        Cmd::Token { command } => match command {
            TokenCmd::Create { name, tenant, data_dir } => {
                let token = crate::auth::create_token(&data_dir, &name, &tenant)?;
                println!("{token}");
                eprintln!("token {name:?} for tenant {tenant:?} created; it is shown once, store it now");
                Ok(())
            }
            TokenCmd::Revoke { name, data_dir } => {
                crate::auth::revoke_token(&data_dir, &name)?;
                eprintln!("token {name:?} revoked");
                Ok(())
            }
            TokenCmd::List { data_dir } => {
                for t in crate::auth::list_tokens(&data_dir)? {
                    println!("{}\t{}\t{}", t.name, t.tenant, t.created_at.to_rfc3339());
                }
                Ok(())
            }
        },
    }
}
