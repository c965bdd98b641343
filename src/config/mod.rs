//! Configuration: one documented clap struct, readable from flags, `CAPRL_…` environment
//! variables and a TOML file (`--config`), validated once at start-up.
//!
//! Precedence, highest first: a flag on the command line, its environment variable, the file,
//! the default. The file has the same names in sections (`[server]`, `[limits]`, `[pool]`,
//! `[engine]`, `[batch]`, `[fetch]`), plus `[pools.NAME]` tables that override `[pool]` for one
//! model's pool, which only the file can express. `deploy/README.md` and `README.md` carry the
//! full table.
//!
//! - `args.rs`: the settings, section by section, with their defaults and documentation.
//! - `resolve.rs`: validation, which returns [`Resolved`] (workers parsed, pools merged).
//! - here: the command line and the file, layered.

mod args;
mod resolve;

pub use args::*;
pub use resolve::{Resolved, WorkerSpec, WorkerTarget};

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};

/// caprl-gateway: an OpenAI-compatible gateway for CapRL-3B image captioning.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the OpenAI-compatible API in front of a pool of workers.
    Serve(Box<ServeArgs>),
    /// Caption a directory, a JSON list or a JSONL manifest of images through an
    /// OpenAI-compatible server (this gateway or vLLM): resumable, with progress.
    Caption(Box<crate::workflow::caption::CaptionArgs>),
    /// Curate QA data as CapRL does: generate questions, extract them, answer them with and
    /// without the image, keep those that need it.
    Qa(Box<crate::workflow::qa::QaArgs>),
    /// Evaluate captions: `eval prism` answers benchmark questions from the captions alone.
    Eval(Box<crate::workflow::prism::EvalArgs>),
}

impl Command {
    /// The serve settings, when this is `serve`.
    pub fn into_serve(self) -> Option<Box<ServeArgs>> {
        match self {
            Command::Serve(args) => Some(args),
            Command::Caption(_) | Command::Qa(_) | Command::Eval(_) => None,
        }
    }
}

/// A configuration problem, naming the field.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {field}: {message}")]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

fn config_error(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.into(),
        message: message.into(),
    }
}

/// Parse the command line (and the environment, and the file it names) into settings.
pub fn parse_cli() -> Result<Cli, ConfigError> {
    let matches = Cli::command().get_matches();
    cli_from_matches(&matches)
}

/// Like [`parse_cli`], from an explicit argument list (for tests).
pub fn try_parse_from<I, T>(args: I) -> Result<Cli, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let matches = Cli::command()
        .try_get_matches_from(args)
        .map_err(|e| config_error("command line", e.to_string()))?;
    cli_from_matches(&matches)
}

fn cli_from_matches(matches: &ArgMatches) -> Result<Cli, ConfigError> {
    let mut cli =
        Cli::from_arg_matches(matches).map_err(|e| config_error("command line", e.to_string()))?;
    let Command::Serve(args) = &mut cli.command else {
        return Ok(cli);
    };
    if let Some(path) = args.config.clone() {
        let serve_matches = matches
            .subcommand_matches("serve")
            .expect("these are the serve settings; this is a bug");
        let file = std::fs::read_to_string(&path)
            .map_err(|e| config_error("config", format!("cannot read {}: {e}", path.display())))?;
        let merged = merge_file(args, &file, serve_matches)
            .map_err(|m| config_error(format!("config ({})", path.display()), m))?;
        **args = ServeArgs {
            config: Some(path),
            ..merged
        };
    }
    args.validate()?;
    Ok(cli)
}

/// Values from the file fill every setting that neither a flag nor an environment variable set.
fn merge_file(cli: &ServeArgs, file: &str, matches: &ArgMatches) -> Result<ServeArgs, String> {
    let file: toml::Table = toml::from_str(file).map_err(|e| e.to_string())?;
    let mut merged = toml::Table::try_from(cli).map_err(|e| e.to_string())?;
    let explicit = |id: &str| {
        // Only ask about known ids: clap panics on a name that is not an argument (the file's
        // unknown keys are reported by deserialization below, naming the key).
        matches.ids().any(|known| known.as_str() == id)
            && matches!(
                matches.value_source(id),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            )
    };
    for (section, value) in file {
        match value {
            toml::Value::Table(table) if section != "pools" => {
                let Some(toml::Value::Table(target)) = merged.get_mut(&section) else {
                    return Err(format!("unknown section [{section}]"));
                };
                for (key, value) in table {
                    if !explicit(&key) {
                        target.insert(key, value);
                    }
                }
            }
            other => {
                merged.insert(section, other);
            }
        }
    }
    toml::Value::Table(merged)
        .try_into()
        .map_err(|e: toml::de::Error| e.to_string())
}

#[cfg(test)]
mod tests;
