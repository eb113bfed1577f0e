//! What validation says about a policy file: errors and warnings, each with
//! file, line and field, printed as `file:line: field: message`.

use std::fmt;

use serde::Serialize;

/// One problem found in a policy file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// The file as the operator named it.
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// Field path, e.g. `channels[1].limit.bandwidth`.
    pub field: String,
    /// What is wrong and what would be valid.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{l}: ", self.file)?,
            None => write!(f, "{}: ", self.file)?,
        }
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

/// A policy file that failed validation: every error found, in file order.
#[derive(Debug, Clone, thiserror::Error, Serialize)]
pub struct PolicyError {
    /// All errors; never empty.
    pub errors: Vec<Diagnostic>,
}

impl PolicyError {
    /// An error about the file as a whole (cannot read it, too large...).
    pub fn whole_file(file: &str, line: Option<usize>, message: String) -> Self {
        PolicyError {
            errors: vec![Diagnostic {
                file: file.to_string(),
                line,
                field: String::new(),
                message,
            }],
        }
    }
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid policy ({} error", self.errors.len())?;
        if self.errors.len() != 1 {
            f.write_str("s")?;
        }
        f.write_str("):")?;
        for e in &self.errors {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}
