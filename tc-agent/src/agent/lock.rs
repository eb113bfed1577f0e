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
        // Held by an agent with another state directory: no pid to name.
        return Err(match e {
            TryLockError::WouldBlock => anyhow::anyhow!(
                "another tc-agent holds the pin directory {}; stop it first, or give this one its own --pin-dir",
                pin_dir.display()
            ),
            TryLockError::Error(e) => {
                anyhow::anyhow!("cannot lock the pin directory {}: {e}", pin_dir.display())
            }
        });
    }
    std::fs::write(state_dir.join("agent.pid"), std::process::id().to_string())?;
    Ok(DirLocks {
        _state: state,
        _pins: pins,
    })
}

/// Where interface locks live: one directory for every agent on the node,
/// whatever its pin and state directories.
const IFACE_LOCKS: &str = "/run/lock/tc-agent";

/// Locks every interface in `ifaces` (in the current network namespace)
/// for the caller's lifetime, so that two agents with different pin and
/// state directories can never drive the same interface (before Linux 6.6
/// the hooks are netlink filters at a fixed priority, which a second agent
/// would otherwise replace).
pub fn lock_ifaces(ifaces: &[String]) -> Result<Vec<File>> {
    use std::os::unix::fs::MetadataExt;
    std::fs::create_dir_all(IFACE_LOCKS).with_context(|| format!("creating {IFACE_LOCKS}"))?;
    std::fs::set_permissions(IFACE_LOCKS, Permissions::from_mode(0o700))?;
    let netns = std::fs::metadata("/proc/thread-self/ns/net")
        .context("reading this thread's network namespace")?
        .ino();
    let mut locks = Vec::new();
    for iface in ifaces {
        let index = crate::datapath::sys::ifindex(iface)?;
        let path = Path::new(IFACE_LOCKS).join(format!("{netns}-{index}.lock"));
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        match f.try_lock() {
            Ok(()) => locks.push(f),
            Err(TryLockError::WouldBlock) => anyhow::bail!(
                "another tc-agent already drives {iface} in this network namespace (lock {}); stop it first",
                path.display()
            ),
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()))
            }
        }
    }
    Ok(locks)
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
