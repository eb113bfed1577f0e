//! `tc-agent validate`: check a policy file without an agent.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::Output;
use crate::policy::{compile::compile, Policy};

/// Validate a policy file offline: every error with its line and field, plus
/// warnings such as channels an earlier channel shadows. Exits non-zero if
/// the file would be rejected by `apply`.
#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The policy file (YAML).
    pub file: PathBuf,
    /// Output format: `text` for people, `json` for scripts (the field
    /// names are a contract).
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Output,
}

pub fn execute(args: ValidateArgs) -> Result<()> {
    let policy = Policy::load(&args.file)?;
    let compiled = compile(&policy)?;
    match args.output {
        Output::Json => println!(
            "{}",
            serde_json::json!({
                "valid": true,
                "channels": policy.channels,
                "warnings": policy.warnings,
                "table_entries": compiled.entries(),
            })
        ),
        Output::Text => {
            for w in &policy.warnings {
                println!("warning: {w}");
            }
            println!(
                "{}: valid, {} channels, {} table entries",
                args.file.display(),
                policy.channels.len(),
                compiled.entries()
            );
        }
    }
    Ok(())
}
