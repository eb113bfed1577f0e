//! Small system checks the operator's errors come from: privileges,
//! interfaces, bpffs, network namespaces and the running kernel.

use std::{ffi::CString, fs::File, os::fd::AsRawFd, path::Path};

use anyhow::{bail, Context, Result};

/// `statfs(2)` magic of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Fails unless running as root (CAP_BPF and CAP_NET_ADMIN are needed).
pub fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("tc-agent needs root (CAP_BPF and CAP_NET_ADMIN) to load and attach eBPF programs; run it with sudo");
    }
    Ok(())
}

/// Index of interface `name` in the current network namespace.
pub fn ifindex(name: &str) -> Result<u32> {
    let c = CString::new(name).context("interface names cannot contain NUL")?;
    // SAFETY: c is a valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        bail!("interface `{name}` not found in this network namespace; `ip link` lists the interfaces");
    }
    Ok(idx)
}

/// Mounts bpffs at `/sys/fs/bpf` if nothing is mounted there. `ip netns exec`
/// remounts /sys and hides the host's bpffs, so this is needed in namespaces.
pub fn ensure_bpffs(root: &Path) -> Result<()> {
    let mount_point = Path::new("/sys/fs/bpf");
    if !root.starts_with(mount_point) || is_bpffs(mount_point) {
        return Ok(());
    }
    std::fs::create_dir_all(mount_point).ok();
    let src = CString::new("bpf")?;
    let dst = CString::new("/sys/fs/bpf")?;
    let opts = CString::new("mode=0700")?;
    // SAFETY: all pointers are valid NUL-terminated strings.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            src.as_ptr(),
            0,
            opts.as_ptr().cast(),
        )
    };
    if rc != 0 {
        bail!(
            "cannot mount bpffs at /sys/fs/bpf: {}; mount it with `mount -t bpf bpf /sys/fs/bpf`",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

fn is_bpffs(p: &Path) -> bool {
    let Ok(c) = CString::new(p.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into a zeroed struct we own.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC
    }
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
    // SAFETY: f is an open namespace file descriptor.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!(
            "cannot enter network namespace `{name}`: {}",
            std::io::Error::last_os_error()
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
