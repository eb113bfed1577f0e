//! `tc-agent apply`: validate and apply a policy atomically.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use super::Output;
use crate::{
    control::{request, request_with_body, ApplyReport, Body, BodyError, Request},
    policy::Policy,
};

/// Validate a policy file and apply it atomically: the datapath switches from
/// the old policy to the new one in a single map write, so no packet is ever
/// classified against a mix of both. An invalid file changes nothing.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The policy file (YAML).
    pub file: PathBuf,
    /// Output format: `text` for people, `json` for scripts (the field
    /// names are a contract).
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Output,
}

pub fn execute(args: ApplyArgs, socket: &std::path::Path) -> Result<()> {
    let file = args.file.display().to_string();
    // The agent validates the policy itself (a large policy takes a tenth
    // of a second to read, so the CLI does not read it first), and the
    // text goes to it as it is, after the request line: a regular file
    // straight from the file, a piece at a time, anything else (a pipe)
    // read first. If the agent refuses it, or cannot be reached, the CLI
    // reads it: a file it finds invalid is reported with every diagnostic
    // as the CLI renders them. The file is opened once: what is sent and
    // what is read again are the same file (a pipe cannot be opened
    // twice, an editor may rename another file in its place).
    let opened = std::fs::File::open(&args.file).with_context(|| format!("cannot read {file}"))?;
    let regular = opened.metadata().ok().filter(std::fs::Metadata::is_file);
    let size = regular
        .as_ref()
        .and_then(|m| usize::try_from(m.len()).ok())
        // Empty, or sized 0 as some virtual files are: read whole.
        .filter(|&len| len > 0);
    // The file as it was opened: sent only if it is still that when all
    // of it is read, and read again for diagnostics only if it is.
    let stamp = regular.as_ref().map(Stamp::of);
    let unchanged = || opened.metadata().ok().as_ref().map(Stamp::of) == stamp;
    let mut text = None;
    let sent = match size {
        Some(len) => send_raw(socket, &file, &mut &opened, len, &unchanged),
        None => {
            let t = read_text(&opened, &file)?;
            let sent = send_raw(socket, &file, &mut t.as_bytes(), t.len(), &|| true);
            text = Some(t);
            sent
        }
    };
    let sent = sent.or_else(|e| {
        // An agent from before `apply-raw` (during an upgrade) takes the
        // text inside the line.
        if !format!("{e:#}").contains(OLDER_AGENT) {
            return Err(e);
        }
        let text = match &text {
            Some(t) => t.clone(),
            None => {
                let t = read_text(&opened, &file)?;
                if !unchanged() {
                    return Err(BodyError::Rewritten.into());
                }
                t
            }
        };
        request(
            socket,
            &Request::Apply {
                file: file.clone(),
                text,
            },
        )
    });
    let data = match sent {
        Ok(data) => data,
        // The file changed while it was sent, or could not be read: there
        // is no one text to report on.
        Err(e) if e.downcast_ref::<BodyError>().is_some() => return Err(e),
        Err(e) => {
            // The CLI's own reading, when it can read the file as text
            // (the agent's error says why if it cannot).
            if text.is_none() {
                text = read_text(&opened, &file).ok().filter(|_| unchanged());
            }
            if let Some(text) = text {
                Policy::parse(&text, &file)?;
            }
            return Err(e);
        }
    };
    if args.output == Output::Json {
        println!("{data}");
        return Ok(());
    }
    let r: ApplyReport = serde_json::from_value(data)?;
    for w in &r.warnings {
        println!("warning: {w}");
    }
    println!(
        "applied policy version {}: {} channels ({} added, {} changed, {} removed, {} unchanged), {} table entries, live in {:.1} ms",
        r.version,
        r.channels,
        r.added.len(),
        r.changed.len(),
        r.removed.len(),
        r.unchanged.len(),
        r.table_entries,
        r.took_ms
    );
    // Names, up to about a screen; `-o json` lists every one.
    let mut budget = NAMES_SHOWN;
    for (label, names) in [
        ("added", &r.added),
        ("changed", &r.changed),
        ("removed", &r.removed),
    ] {
        if names.is_empty() {
            continue;
        }
        let shown = names.len().min(budget);
        budget -= shown;
        let more = names.len() - shown;
        let mut line = names[..shown].join(", ");
        if more > 0 {
            line.push_str(&format!(
                "{}... and {more} more (-o json lists all)",
                if shown > 0 { ", " } else { "" }
            ));
        }
        println!("  {label:<9} {line}");
    }
    Ok(())
}

/// The whole text of `opened` (`file`), from its start if it has one.
fn read_text(opened: &std::fs::File, file: &str) -> Result<String> {
    use std::io::{Read, Seek};
    let mut opened = opened;
    // A pipe cannot seek, and has not been read from.
    let _ = opened.rewind();
    let mut text = String::new();
    opened
        .read_to_string(&mut text)
        .with_context(|| format!("cannot read {file}"))?;
    Ok(text)
}

/// Sends the `len` bytes of `text` as an `apply-raw` request; see
/// [`Body::unchanged`].
fn send_raw(
    socket: &std::path::Path,
    file: &str,
    text: &mut dyn std::io::Read,
    len: usize,
    unchanged: &dyn Fn() -> bool,
) -> Result<serde_json::Value> {
    let raw = Request::ApplyRaw {
        file: file.to_string(),
        bytes: len,
    };
    let body = Body {
        from: text,
        len,
        unchanged,
    };
    request_with_body(socket, &raw, body)
}

/// What says a regular file was not written to since it was opened, as
/// far as its file system's timestamps tell (a write of the same size
/// within one tick of a coarse clock goes unseen): its size and
/// modification time. Its change time would move on a rename or a
/// `chmod` too, which leave the text as it was.
#[derive(PartialEq, Eq)]
struct Stamp {
    /// Its size.
    len: u64,
    /// Last modification, seconds and nanoseconds.
    modified: (i64, i64),
}

impl Stamp {
    fn of(m: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        Self {
            len: m.len(),
            modified: (m.mtime(), m.mtime_nsec()),
        }
    }
}

/// Channel names an apply report prints before it summarizes.
const NAMES_SHOWN: usize = 40;

/// What an agent from before `apply-raw` answers it with (serde's words
/// for a request it does not know).
const OLDER_AGENT: &str = "bad request: unknown variant `apply-raw`";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_older_agent_refuses_apply_raw_in_the_words_the_cli_looks_for() {
        /// The requests of an agent from before `apply-raw`.
        #[derive(serde::Deserialize)]
        #[serde(tag = "cmd", rename_all = "kebab-case")]
        #[expect(dead_code, reason = "only the requests it knows matter")]
        enum Older {
            Apply { file: String, text: String },
            Status,
        }
        let line = serde_json::to_string(&Request::ApplyRaw {
            file: "p.yaml".into(),
            bytes: 10,
        })
        .unwrap();
        let Err(e) = serde_json::from_str::<Older>(&line) else {
            panic!("an older agent took {line}");
        };
        // As the older agent's server words it.
        assert!(format!("bad request: {e}").contains(OLDER_AGENT), "{e}");
    }
}
