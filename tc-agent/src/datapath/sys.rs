//! Small system checks the operator's errors come from: privileges,
//! interfaces, bpffs, network namespaces and the running kernel.

use std::{fs::File, path::Path};

use anyhow::{bail, Context, Result};
use nix::{
    mount::{mount, MsFlags},
    sched::{setns, CloneFlags},
    sys::statfs::{statfs, BPF_FS_MAGIC},
};

/// Fails unless running as root (CAP_BPF and CAP_NET_ADMIN are needed).
pub fn require_root() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("tc-agent needs root (CAP_BPF and CAP_NET_ADMIN) to load and attach eBPF programs; run it with sudo");
    }
    Ok(())
}

/// Index of interface `name` in the current network namespace.
pub fn ifindex(name: &str) -> Result<u32> {
    if name.contains('\0') {
        bail!("interface names cannot contain NUL");
    }
    match nix::net::if_::if_nametoindex(name) {
        Ok(idx) if idx != 0 => Ok(idx),
        _ => bail!("interface `{name}` not found in this network namespace; `ip link` lists the interfaces"),
    }
}

/// Names of the interfaces in the current network namespace.
pub fn interfaces() -> Vec<String> {
    nix::net::if_::if_nameindex()
        .map(|l| {
            l.iter()
                .map(|i| i.name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Mounts bpffs at `/sys/fs/bpf` if nothing is mounted there. `ip netns exec`
/// remounts /sys and hides the host's bpffs, so this is needed in namespaces.
pub fn ensure_bpffs(root: &Path) -> Result<()> {
    let mount_point = Path::new("/sys/fs/bpf");
    if !root.starts_with(mount_point) || is_bpffs(mount_point) {
        return Ok(());
    }
    std::fs::create_dir_all(mount_point).ok();
    if let Err(e) = mount(
        Some("bpf"),
        mount_point,
        Some("bpf"),
        MsFlags::empty(),
        Some("mode=0700"),
    ) {
        bail!(
            "cannot mount bpffs at /sys/fs/bpf: {}; mount it with `mount -t bpf bpf /sys/fs/bpf`",
            std::io::Error::from(e)
        );
    }
    Ok(())
}

fn is_bpffs(p: &Path) -> bool {
    statfs(p).is_ok_and(|st| st.filesystem_type() == BPF_FS_MAGIC)
}

/// Moves the calling thread into network namespace `name` (`/run/netns/NAME`,
/// as made by `ip netns add`). Call before any other thread is started.
pub fn enter_netns(name: &str) -> Result<()> {
    let path = Path::new("/run/netns").join(name);
    let f = File::open(&path).with_context(|| {
        format!(
            "network namespace `{name}` not found ({} missing); `ip netns list` lists them",
            path.display()
        )
    })?;
    if let Err(e) = setns(&f, CloneFlags::CLONE_NEWNET) {
        bail!(
            "cannot enter network namespace `{name}`: {}",
            std::io::Error::from(e)
        );
    }
    Ok(())
}

/// The running kernel's release string, e.g. `6.18.44`.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Whether the kernel has TCX (tc eBPF links), which arrived in Linux 6.6.
pub fn has_tcx() -> bool {
    aya::util::KernelVersion::current().is_ok_and(|v| v >= aya::util::KernelVersion::new(6, 6, 0))
}

/// Whether the kernel exposes its BTF (needed for CO-RE; arrived in 5.4 with CONFIG_DEBUG_INFO_BTF).
pub fn has_btf() -> bool {
    Path::new("/sys/kernel/btf/vmlinux").exists()
}
