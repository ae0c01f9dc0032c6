//! `--config scimlog.toml`: the flags of `scimlog serve` in a file, one key per flag (its long
//! name or its field name, with `_` or `-`: `max_scan = 100000`, `nats-url = "nats://..."`).
//!
//! Precedence: defaults < file < environment < command line. The file is read before the real
//! parse and its keys become flags for what neither the environment nor the command line set,
//! so clap parses and checks every value, wherever it came from. An unknown key is an error
//! naming it; secrets (`--token`, `--master-key`) do not belong in it: their `*_FILE` variants
//! (`token_file`, `master_key_file`) do.
//!
//! `scimlog config show` prints the effective configuration as such a file, secrets redacted.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Command, CommandFactory};

/// The subcommands that take the serve flags (and so `--config`).
const WITH_SERVE_FLAGS: &[&[&str]] = &[&["serve"], &["config", "show"]];

/// `args` with the config file's keys added as flags, when `--config` is given, and the ids of
/// the flags the file set.
pub fn with_file(args: Vec<OsString>) -> anyhow::Result<(Vec<OsString>, Vec<String>)> {
    // A command line clap refuses is left to the real parse, which explains it.
    let Ok(matches) = crate::cli::Cli::command().try_get_matches_from(&args) else { return Ok((args, vec![])) };
    let Some((sub, path)) =
        serve_matches(&matches).and_then(|m| m.get_one::<PathBuf>("config").map(|p| (m, p.clone())))
    else {
        return Ok((args, vec![]));
    };
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read --config {}", path.display()))?;
    let table: toml::Table = text.parse().with_context(|| format!("{} is not valid TOML", path.display()))?;
    let serve = serve_command();
    let mut args = args;
    let mut from_file = Vec::new();
    for (key, value) in table {
        let (as_id, as_long) = (key.replace('-', "_"), key.replace('_', "-"));
        let named = |a: &&clap::Arg| a.get_id().as_str() == as_id || a.get_long() == Some(as_long.as_str());
        let Some(arg) = serve.get_arguments().find(named) else {
            bail!(
                "{}: unknown key {key:?} (keys are the flags of `scimlog serve --help`, with _ or -)",
                path.display()
            );
        };
        if arg.is_hide_env_values_set() {
            bail!(
                "{}: {key:?} is a secret and does not belong in a file of settings; name a file holding it instead \
                 (token_file, admin_token_file, master_key_file)",
                path.display()
            );
        }
        if key == "config" {
            bail!("{}: a config file cannot name another (`config`)", path.display());
        }
        // The environment and the command line win over the file.
        if matches!(sub.value_source(arg.get_id().as_str()), Some(ValueSource::EnvVariable | ValueSource::CommandLine))
        {
            continue;
        }
        let long = format!("--{}", arg.get_long().context("every serve flag is long")?);
        from_file.push(arg.get_id().to_string());
        let values = match value {
            toml::Value::Array(items) => items,
            one => vec![one],
        };
        for v in values {
            match (arg.get_action(), v) {
                (ArgAction::SetTrue, toml::Value::Boolean(true)) => args.push(long.clone().into()),
                (ArgAction::SetTrue, toml::Value::Boolean(false)) => {}
                (_, toml::Value::String(s)) => args.extend([long.clone().into(), s.into()]),
                (_, other) => args.extend([long.clone().into(), other.to_string().into()]),
            }
        }
    }
    Ok((args, from_file))
}

/// The effective configuration as a config file: every serve flag with its value and where it
/// came from; secrets redacted.
pub fn show(args: &[OsString], from_file: &[String]) -> anyhow::Result<String> {
    let matches = crate::cli::Cli::command().try_get_matches_from(args)?;
    let sub = serve_matches(&matches).context("`config show` takes the flags of `serve`")?;
    let mut out = String::new();
    for arg in serve_command().get_arguments() {
        let id = arg.get_id().as_str();
        if matches!(id, "help" | "version" | "config") {
            continue;
        }
        let Some(raw) = sub.get_raw(id) else { continue };
        let source = match sub.value_source(id) {
            _ if from_file.iter().any(|f| f == id) => "config file",
            Some(ValueSource::CommandLine) => "command line",
            Some(ValueSource::EnvVariable) => "environment",
            Some(ValueSource::DefaultValue) => "default",
            _ => "other",
        };
        let values: Vec<String> =
            raw.map(|v| {
                if arg.is_hide_env_values_set() {
                    "[redacted]".to_string()
                } else {
                    v.to_string_lossy().into_owned()
                }
            })
            .collect();
        let value = match (arg.get_action(), values.as_slice()) {
            (ArgAction::SetTrue, [v]) => v.clone(),
            (_, [v]) if v.parse::<i64>().is_ok() || v == "true" || v == "false" => v.clone(),
            (_, [v]) => toml::Value::String(v.clone()).to_string(),
            (_, many) => toml::Value::Array(many.iter().cloned().map(toml::Value::String).collect()).to_string(),
        };
        out.push_str(&format!("{id} = {value}  # {source}\n"));
    }
    Ok(out)
}

fn serve_matches(matches: &ArgMatches) -> Option<&ArgMatches> {
    WITH_SERVE_FLAGS.iter().find_map(|path| {
        path.iter().try_fold(matches, |m, name| m.subcommand().filter(|(n, _)| n == name).map(|(_, sub)| sub))
    })
}

fn serve_command() -> Command {
    crate::cli::Cli::command().find_subcommand("serve").cloned().expect("serve is a subcommand")
}
