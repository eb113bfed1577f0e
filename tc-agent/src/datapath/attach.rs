//! Attaching the programs to interfaces.
//!
//! - tc: TCX links (Linux 6.6+), pinned under `<pin dir>/links/`, so a
//!   restarted agent swaps its new program into the existing link
//!   atomically (`bpf_link_update`) and enforcement never pauses. Before 6.6,
//!   a clsact qdisc and a direct-action cls_bpf filter at a fixed priority
//!   and handle, so a restarted agent can find and replace its own filter.
//! - XDP (opt-in, ingress only): an XDP link (Linux 5.9+), pinned likewise.

use std::{
    fmt, io,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use aya::programs::{
    links::{FdLink, Link as _, PinnedLink},
    tc::{qdisc_add_clsact, NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle},
    xdp::XdpLink,
    LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
};
use serde::{Deserialize, Serialize};

use super::{sys, Datapath, Programs, TC_EGRESS, TC_INGRESS, XDP_INGRESS};

/// Priority of our cls_bpf filter on pre-TCX kernels.
const NETLINK_PRIORITY: u16 = 0x7c00;
/// Handle of our cls_bpf filter on pre-TCX kernels.
const NETLINK_HANDLE: u16 = 0x7c;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HookKind {
    TcIngress,
    TcEgress,
    XdpIngress,
}

impl fmt::Display for HookKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HookKind::TcIngress => "tc-ingress",
            HookKind::TcEgress => "tc-egress",
            HookKind::XdpIngress => "xdp-ingress",
        })
    }
}

/// How a program is attached, for `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mechanism {
    /// TCX link, Linux 6.6+.
    Tcx,
    /// clsact qdisc + cls_bpf filter over netlink, before 6.6.
    Netlink,
    /// XDP link, Linux 5.9+.
    XdpLink,
}

/// One attached program.
pub struct Hook {
    /// Interface name.
    pub iface: String,
    /// The interface's index when attached: a link pinned for a deleted and
    /// recreated interface of the same name is not this one's.
    pub ifindex: u32,
    /// Which hook of the interface.
    pub kind: HookKind,
    /// How the program is attached (TCX link, netlink filter, XDP link).
    pub mechanism: Mechanism,
    /// What keeps the program attached.
    link: HookLink,
    /// Whether the program was swapped into a hook a previous agent left.
    pub replaced: bool,
}

/// What keeps a hook's program attached.
enum HookLink {
    /// TCX or XDP link pinned at `path`: the pin keeps it attached after
    /// the agent exits; removing the pin (and closing `fd`) detaches it.
    Pinned { fd: FdLink, path: PathBuf },
    /// cls_bpf filter under clsact (before Linux 6.6): the kernel keeps it
    /// until it is deleted.
    Netlink(SchedClassifierLink),
}

impl Hook {
    /// Leaves the program attached and enforcing for the next agent: a
    /// stopped agent must not leave the node unenforced.
    pub fn leave(self) {
        match self.link {
            // Closing our fd is fine: the pin holds the link.
            HookLink::Pinned { fd, .. } => drop(fd),
            // Dropping the link object would delete the filter.
            HookLink::Netlink(link) => std::mem::forget(link),
        }
    }

    /// Detaches the program now.
    pub fn detach(self) -> Result<()> {
        match self.link {
            HookLink::Pinned { fd, path } => {
                std::fs::remove_file(&path)
                    .with_context(|| format!("unpinning {}", path.display()))?;
                // With the pin gone, closing the last fd detaches the link.
                drop(fd);
            }
            HookLink::Netlink(link) => link
                .detach()
                .with_context(|| format!("removing the tc filter on {}", self.iface))?,
        }
        Ok(())
    }
}

/// Every hook kind.
pub const HOOK_KINDS: [HookKind; 3] = [
    HookKind::TcIngress,
    HookKind::TcEgress,
    HookKind::XdpIngress,
];

/// Links pinned under `links_dir`, as (interface, kind, pin path).
pub fn pinned_hooks(links_dir: &Path) -> Vec<(String, HookKind, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(links_dir) else {
        return vec![];
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        for kind in HOOK_KINDS {
            if let Some(iface) = name.strip_suffix(&format!("-{kind}")) {
                out.push((iface.to_string(), kind, e.path()));
                break;
            }
        }
    }
    out.sort_by(|a, b| a.2.cmp(&b.2));
    out
}

/// Deletes our cls_bpf filter (before Linux 6.6) from `iface`.
pub fn detach_netlink(iface: &str, kind: HookKind) -> Result<()> {
    let ty = match kind {
        HookKind::TcEgress => TcAttachType::Egress,
        _ => TcAttachType::Ingress,
    };
    SchedClassifierLink::attached(
        iface,
        ty,
        NETLINK_PRIORITY,
        TcHandle::new(0, NETLINK_HANDLE),
        None,
    )?
    .detach()
    .with_context(|| format!("removing the tc filter on {iface}"))
}

/// Where the link of `kind` on `iface` is pinned.
pub fn link_path(links_dir: &Path, iface: &str, kind: HookKind) -> PathBuf {
    links_dir.join(format!("{iface}-{kind}"))
}

/// The interface a link is attached to (`bpf_link_info`: XDP links since
/// Linux 5.9, TCX since 6.6), or `None` when it is attached to none any
/// more (its interface was deleted).
fn link_ifindex(fd: &FdLink) -> Result<Option<u32>> {
    use std::os::fd::{FromRawFd, OwnedFd};

    use aya_obj::generated::{bpf_cmd, bpf_link_info};
    /// `union bpf_attr` as `BPF_LINK_GET_FD_BY_ID` reads it.
    #[repr(C)]
    struct IdAttr {
        /// The link wanted.
        link_id: u32,
        /// Unused by this command, zero.
        next_id: u32,
        /// No flags.
        open_flags: u32,
    }
    /// `union bpf_attr` as `BPF_OBJ_GET_INFO_BY_FD` reads it.
    #[repr(C)]
    struct InfoAttr {
        /// The object whose information is wanted.
        bpf_fd: u32,
        /// Size of the buffer at `info`.
        info_len: u32,
        /// Where the kernel writes the `bpf_link_info`.
        info: u64,
    }
    // aya's FdLink does not lend out its fd: open another one by the link's id.
    let mut id = IdAttr {
        link_id: fd.info().context("reading the pinned link's id")?.id(),
        next_id: 0,
        open_flags: 0,
    };
    // SAFETY: `IdAttr` is laid out as BPF_LINK_GET_FD_BY_ID reads the
    // attribute union, and points to no buffer.
    let raw = unsafe { super::bpf_call::sys_bpf(bpf_cmd::BPF_LINK_GET_FD_BY_ID, &mut id) }
        .context("opening the pinned link by id")?;
    // SAFETY: the kernel just returned this fd to us; OwnedFd closes it.
    let link = unsafe { OwnedFd::from_raw_fd(raw as i32) };
    // SAFETY: bpf_link_info is plain data; all-zero is a valid value.
    let mut info: bpf_link_info = unsafe { std::mem::zeroed() };
    let mut attr = InfoAttr {
        bpf_fd: std::os::fd::AsRawFd::as_raw_fd(&link) as u32,
        info_len: std::mem::size_of::<bpf_link_info>() as u32,
        info: &raw mut info as u64,
    };
    // SAFETY: `InfoAttr` is laid out as BPF_OBJ_GET_INFO_BY_FD reads the
    // attribute union; `info` points to a live `bpf_link_info` of the size
    // it names, where the kernel writes.
    unsafe { super::bpf_call::sys_bpf(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut attr) }
        .context("reading the pinned link's info")?;
    // SAFETY: the XDP and TCX members both start with the interface index,
    // a plain u32; which one the kernel filled depends on the link type.
    let ifindex = unsafe { info.__bindgen_anon_1.tcx.ifindex };
    Ok((ifindex != 0).then_some(ifindex))
}

/// A link a previous agent pinned at `path` for `ifindex`, if there is one.
/// A pin whose link belongs to another interface (the name was reused) or
/// to none is stale: it enforces nothing here, so it is removed.
fn pinned_link(path: &Path, iface: &str, ifindex: u32) -> Result<Option<FdLink>> {
    let pinned = match PinnedLink::from_pin(path) {
        Ok(p) => p,
        Err(aya::programs::links::LinkError::SyscallError(e))
            if e.io_error.kind() == io::ErrorKind::NotFound =>
        {
            return Ok(None)
        }
        Err(e) => return Err(e).with_context(|| format!("opening pinned link {}", path.display())),
    };
    // Keep the pin: the program is swapped inside the link, and until the
    // swap succeeds the old program keeps enforcing.
    let fd: FdLink = pinned.into();
    match link_ifindex(&fd)? {
        Some(i) if i == ifindex => Ok(Some(fd)),
        other => {
            tracing::warn!(
                iface,
                pinned_ifindex = ?other,
                ifindex,
                path = %path.display(),
                "removing a stale pinned link: it belongs to another interface"
            );
            std::fs::remove_file(path)
                .with_context(|| format!("removing stale pin {}", path.display()))?;
            Ok(None)
        }
    }
}

/// Attaches `kind` to `iface`, pinning links under `links_dir`. A hook a
/// previous agent left is taken over in place: the program inside its link
/// (or filter) is replaced atomically, so enforcement never pauses, and if
/// that fails the hook is left exactly as it was.
pub fn attach(dp: &mut Datapath, iface: &str, kind: HookKind, links_dir: &Path) -> Result<Hook> {
    if kind == HookKind::XdpIngress && dp.programs() != Programs::All {
        bail!("attaching XDP to {iface}: this datapath was loaded without its XDP programs");
    }
    let ifindex = sys::ifindex(iface)?;
    std::fs::create_dir_all(links_dir)
        .with_context(|| format!("creating {}", links_dir.display()))?;
    let path = link_path(links_dir, iface, kind);
    match kind {
        HookKind::TcIngress | HookKind::TcEgress => attach_tc(dp, iface, ifindex, kind, path),
        HookKind::XdpIngress => attach_xdp(dp, iface, ifindex, path),
    }
}

fn attach_tc(
    dp: &mut Datapath,
    iface: &str,
    ifindex: u32,
    kind: HookKind,
    path: PathBuf,
) -> Result<Hook> {
    let (name, ty) = match kind {
        HookKind::TcIngress => (TC_INGRESS, TcAttachType::Ingress),
        _ => (TC_EGRESS, TcAttachType::Egress),
    };
    let prog: &mut SchedClassifier = dp
        .ebpf
        .program_mut(name)
        .context("program missing")?
        .try_into()?;
    if !sys::has_tcx() {
        // Linux < 6.6: clsact + cls_bpf at our fixed priority and handle.
        // Adding clsact twice is harmless.
        let _ = qdisc_add_clsact(iface);
        let opts = TcAttachOptions::Netlink(NlOptions {
            priority: NETLINK_PRIORITY,
            handle: TcHandle::new(0, NETLINK_HANDLE),
            ..Default::default()
        });
        // Creating fails if a previous agent's filter is there; then
        // attaching "to" that filter replaces its program in one netlink
        // request, so enforcement never pauses.
        let (id, replaced) = match prog.attach_with_options(iface, ty, opts) {
            Ok(id) => (id, false),
            Err(e) if !already_exists(&e) => {
                return Err(e)
                    .with_context(|| format!("attaching {name} to {iface} via netlink (clsact)"))
            }
            Err(_) => {
                let ours = SchedClassifierLink::attached(
                    iface,
                    ty,
                    NETLINK_PRIORITY,
                    TcHandle::new(0, NETLINK_HANDLE),
                    None,
                )?;
                let id = prog
                    .attach_to_link(ours)
                    .with_context(|| format!("attaching {name} to {iface} via netlink (clsact)"))?;
                (id, true)
            }
        };
        return Ok(Hook {
            iface: iface.into(),
            ifindex,
            kind,
            mechanism: Mechanism::Netlink,
            link: HookLink::Netlink(prog.take_link(id)?),
            replaced,
        });
    }
    if let Some(fd) = pinned_link(&path, iface, ifindex)? {
        let link = SchedClassifierLink::try_from(fd).context("pinned link is not a TCX link")?;
        let id = prog
            .attach_to_link(link)
            .with_context(|| format!("replacing the program on {iface} {kind}"))?;
        let fd: FdLink = prog.take_link(id)?.try_into()?;
        return Ok(Hook {
            iface: iface.into(),
            ifindex,
            kind,
            mechanism: Mechanism::Tcx,
            link: HookLink::Pinned { fd, path },
            replaced: true,
        });
    }
    let (_, progs) = SchedClassifier::query_tcx(iface, ty).unwrap_or_default();
    if let Some(p) = progs.iter().find(|p| p.name_as_str() == Some(name)) {
        bail!(
            "another agent already owns {iface} {kind}: program `{name}` (id {}) is attached and not pinned under {}; stop that agent, or point --pin-dir at its directory",
            p.id(),
            path.parent().map(Path::display).map(|d| d.to_string()).unwrap_or_default()
        );
    }
    let id = prog
        .attach_with_options(iface, ty, TcAttachOptions::TcxOrder(LinkOrder::default()))
        .with_context(|| format!("attaching {name} to {iface} via TCX"))?;
    let fd: FdLink = prog.take_link(id)?.try_into()?;
    pin_new(fd, path, iface, ifindex, kind, Mechanism::Tcx)
}

/// Whether an attach failed because the hook is already taken (EEXIST
/// somewhere in its causes).
fn already_exists(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if c.downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::AlreadyExists)
        {
            return true;
        }
        cause = c.source();
    }
    false
}

/// Pins a freshly attached link; if pinning fails the link is dropped,
/// which detaches it, and nothing is left behind.
fn pin_new(
    fd: FdLink,
    path: PathBuf,
    iface: &str,
    ifindex: u32,
    kind: HookKind,
    mechanism: Mechanism,
) -> Result<Hook> {
    let pinned = fd
        .pin(&path)
        .with_context(|| format!("pinning link at {}", path.display()))?;
    Ok(Hook {
        iface: iface.into(),
        ifindex,
        kind,
        mechanism,
        link: HookLink::Pinned {
            fd: pinned.into(),
            path,
        },
        replaced: false,
    })
}

fn attach_xdp(dp: &mut Datapath, iface: &str, ifindex: u32, path: PathBuf) -> Result<Hook> {
    let prog: &mut Xdp = dp
        .ebpf
        .program_mut(XDP_INGRESS)
        .context("program missing")?
        .try_into()?;
    if let Some(fd) = pinned_link(&path, iface, ifindex)? {
        let link = XdpLink::try_from(fd).context("pinned link is not an XDP link")?;
        let id = prog
            .attach_to_link(link)
            .with_context(|| format!("replacing the XDP program on {iface}"))?;
        let fd: FdLink = prog.take_link(id)?.try_into()?;
        return Ok(Hook {
            iface: iface.into(),
            ifindex,
            kind: HookKind::XdpIngress,
            mechanism: Mechanism::XdpLink,
            link: HookLink::Pinned { fd, path },
            replaced: true,
        });
    }
    let id = prog
        .attach(iface, XdpMode::Default)
        .with_context(|| format!("attaching XDP to {iface} (is another XDP program attached?)"))?;
    let fd: FdLink = prog
        .take_link(id)?
        .try_into()
        .context("XDP links need Linux 5.9+")?;
    pin_new(
        fd,
        path,
        iface,
        ifindex,
        HookKind::XdpIngress,
        Mechanism::XdpLink,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::TableSizes;

    /// A datapath loaded for tc alone refuses an XDP hook before it looks
    /// at the interface (this one does not exist) or touches the kernel.
    #[test]
    fn a_tc_only_datapath_refuses_an_xdp_hook() {
        let sizes = TableSizes {
            conns: 4096,
            interactions: tc_common::DEFAULT_MAX_INTERACTIONS,
        };
        let mut dp = Datapath::load_with(None, sizes, Programs::Tc).expect("the datapath loads");
        let dir = std::env::temp_dir().join(format!("tc-test-attach-{}", std::process::id()));
        let Err(err) = attach(&mut dp, "tcnone0", HookKind::XdpIngress, &dir) else {
            panic!("an XDP hook attached to a tc-only datapath");
        };
        assert!(
            format!("{err:#}").contains("loaded without its XDP programs"),
            "{err:#}"
        );
        assert!(!dir.exists(), "nothing created for a refused hook");
    }
}
