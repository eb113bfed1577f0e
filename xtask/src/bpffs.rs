//! The host's bpffs after a run: the agents a run starts mount bpffs at
//! `/sys/fs/bpf` when nothing is mounted there (as a node agent must), and
//! the kernel's preload then adds its own iterators (`maps.debug`,
//! `progs.debug`, Linux 5.10, which cannot be removed). A run that found
//! no bpffs leaves none: once every agent is gone and nothing else is
//! pinned, the mount is undone.

use std::process::Command;

const MOUNT_POINT: &str = "/sys/fs/bpf";

/// What the kernel's preload puts in every bpffs mount.
const PRELOAD: [&str; 2] = ["maps.debug", "progs.debug"];

/// Undoes, when dropped, a bpffs mount that was not there when it was made.
pub struct Guard {
    /// Whether bpffs was mounted at the start: then it is left alone.
    was_mounted: bool,
}

impl Guard {
    pub fn new() -> Self {
        Self {
            was_mounted: is_bpffs(),
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.was_mounted || !is_bpffs() {
            return;
        }
        let others: Vec<String> = std::fs::read_dir(MOUNT_POINT)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !PRELOAD.contains(&n.as_str()))
                    .collect()
            })
            .unwrap_or_default();
        if !others.is_empty() {
            eprintln!(
                "bpffs: left mounted at {MOUNT_POINT}, which this run mounted: it still holds {others:?}"
            );
            return;
        }
        match Command::new("umount").arg(MOUNT_POINT).status() {
            Ok(s) if s.success() => {
                println!("bpffs: unmounted {MOUNT_POINT}, which this run mounted")
            }
            Ok(s) => eprintln!("bpffs: umount {MOUNT_POINT} failed: {s}"),
            Err(e) => eprintln!("bpffs: cannot run umount: {e}"),
        }
    }
}

/// Whether bpffs is mounted at [`MOUNT_POINT`].
fn is_bpffs() -> bool {
    Command::new("stat")
        .args(["-f", "-c", "%T", MOUNT_POINT])
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "bpf_fs")
}
