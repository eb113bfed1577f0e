//! Exclusive ownership of the state directory and the pin directory: two
//! agents (or an agent and `tc-agent uninstall`) never drive the same pins,
//! interfaces or saved state.

use std::{
    fs::{File, OpenOptions, Permissions, TryLockError},
    os::unix::fs::PermissionsExt,
    path::Path,
};

use anyhow::{Context, Result};

/// Exclusive locks on the state and pin directories, released when dropped
/// (when the agent or the uninstall exits, however it exits).
pub struct DirLocks {
    /// flock on `<state dir>/agent.lock`.
    _state: File,
    /// flock on the pin directory itself (bpffs directories take flocks).
    _pins: File,
}

/// Locks `state_dir` (creating it, mode 0700) and `pin_dir` (creating it),
/// or says which agent holds them.
pub fn lock_dirs(state_dir: &Path, pin_dir: &Path) -> Result<DirLocks> {
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("creating {}", state_dir.display()))?;
    std::fs::set_permissions(state_dir, Permissions::from_mode(0o700))?;
    let path = state_dir.join("agent.lock");
    let state = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    if let Err(e) = state.try_lock() {
        return Err(held(e, state_dir, "state directory", state_dir));
    }
    std::fs::create_dir_all(pin_dir).with_context(|| format!("creating {}", pin_dir.display()))?;
    let pins = File::open(pin_dir).with_context(|| format!("opening {}", pin_dir.display()))?;
    if let Err(e) = pins.try_lock() {
        return Err(held(e, state_dir, "pin directory", pin_dir));
    }
    std::fs::write(state_dir.join("agent.pid"), std::process::id().to_string())?;
    Ok(DirLocks {
        _state: state,
        _pins: pins,
    })
}

fn held(e: TryLockError, state_dir: &Path, what: &str, dir: &Path) -> anyhow::Error {
    match e {
        TryLockError::WouldBlock => {
            let pid = std::fs::read_to_string(state_dir.join("agent.pid")).unwrap_or_default();
            anyhow::anyhow!(
                "another tc-agent (pid {}) holds the {what} {}; stop it first, or give this one its own --state-dir, --pin-dir and --socket",
                pid.trim(),
                dir.display()
            )
        }
        TryLockError::Error(e) => anyhow::anyhow!("cannot lock the {what} {}: {e}", dir.display()),
    }
}
