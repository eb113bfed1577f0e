//! Exclusive ownership of the state directory (and the pin directory).

use super::*;

/// Holds an exclusive lock on the state directory for the agent's lifetime.
pub(super) struct LockFile {
    /// The flock is released when this closes, i.e. when the agent exits.
    _file: std::fs::File,
}

pub(super) fn lock_state_dir(dir: &std::path::Path) -> Result<LockFile> {
    use std::os::fd::AsRawFd;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    let path = dir.join("agent.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: f is an open file.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let pid = std::fs::read_to_string(dir.join("agent.pid")).unwrap_or_default();
        bail!(
            "another tc-agent (pid {}) already runs with state directory {}; stop it, or give this one its own --state-dir, --pin-dir and --socket",
            pid.trim(),
            dir.display()
        );
    }
    std::fs::write(dir.join("agent.pid"), std::process::id().to_string())?;
    Ok(LockFile { _file: f })
}
