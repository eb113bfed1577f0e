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

use super::{sys, Datapath, TC_EGRESS, TC_INGRESS, XDP_INGRESS};

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
    pub kind: HookKind,
    pub mechanism: Mechanism,
    /// The pinned link, for TCX and XDP; dropping it after unpinning detaches.
    pinned: Option<(PinnedLink, PathBuf)>,
    /// Whether the pinned link was taken over from a previous agent.
    pub replaced: bool,
}

impl Hook {
    /// Detaches: unpins the link (so the kernel drops it with our fd). Netlink
    /// filters are detached when the [`Datapath`] is dropped.
    pub fn detach(self) -> Result<()> {
        if let Some((pinned, path)) = self.pinned {
            let fd = pinned
                .unpin()
                .with_context(|| format!("unpinning {}", path.display()))?;
            drop(fd);
        }
        Ok(())
    }
}

fn link_path(links_dir: &Path, iface: &str, kind: HookKind) -> PathBuf {
    links_dir.join(format!("{iface}-{kind}"))
}

/// Takes over a link pinned by a previous agent, if there is one.
fn take_pinned(path: &Path) -> Result<Option<FdLink>> {
    match PinnedLink::from_pin(path) {
        Ok(p) => {
            Ok(Some(p.unpin().with_context(|| {
                format!("unpinning {}", path.display())
            })?))
        }
        Err(aya::programs::links::LinkError::SyscallError(e))
            if e.io_error.kind() == io::ErrorKind::NotFound =>
        {
            Ok(None)
        }
        Err(e) => Err(e).with_context(|| format!("opening pinned link {}", path.display())),
    }
}

/// Attaches `kind` to `iface`, pinning links under `links_dir`.
pub fn attach(dp: &mut Datapath, iface: &str, kind: HookKind, links_dir: &Path) -> Result<Hook> {
    sys::ifindex(iface)?;
    std::fs::create_dir_all(links_dir)
        .with_context(|| format!("creating {}", links_dir.display()))?;
    let path = link_path(links_dir, iface, kind);
    match kind {
        HookKind::TcIngress | HookKind::TcEgress => attach_tc(dp, iface, kind, path),
        HookKind::XdpIngress => attach_xdp(dp, iface, path),
    }
}

fn attach_tc(dp: &mut Datapath, iface: &str, kind: HookKind, path: PathBuf) -> Result<Hook> {
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
        // Linux < 6.6: clsact + cls_bpf. Adding clsact twice is harmless.
        let _ = qdisc_add_clsact(iface);
        let opts = || {
            TcAttachOptions::Netlink(NlOptions {
                priority: NETLINK_PRIORITY,
                handle: TcHandle::new(0, NETLINK_HANDLE),
                ..Default::default()
            })
        };
        let mut replaced = false;
        if prog.attach_with_options(iface, ty, opts()).is_err() {
            // Our filter from an agent that did not shut down cleanly: replace it.
            let old = SchedClassifierLink::attached(
                iface,
                ty,
                NETLINK_PRIORITY,
                TcHandle::new(0, NETLINK_HANDLE),
                None,
            )?;
            old.detach()
                .with_context(|| format!("removing the stale tc filter on {iface}"))?;
            prog.attach_with_options(iface, ty, opts())
                .with_context(|| format!("attaching {name} to {iface} via netlink (clsact)"))?;
            replaced = true;
        }
        return Ok(Hook {
            iface: iface.into(),
            kind,
            mechanism: Mechanism::Netlink,
            pinned: None,
            replaced,
        });
    }
    let (id, replaced) = match take_pinned(&path)? {
        Some(fd) => {
            let link =
                SchedClassifierLink::try_from(fd).context("pinned link is not a TCX link")?;
            (
                prog.attach_to_link(link)
                    .with_context(|| format!("replacing the program on {iface}"))?,
                true,
            )
        }
        None => {
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
            (id, false)
        }
    };
    let fd: FdLink = prog.take_link(id)?.try_into()?;
    let pinned = fd
        .pin(&path)
        .with_context(|| format!("pinning link at {}", path.display()))?;
    Ok(Hook {
        iface: iface.into(),
        kind,
        mechanism: Mechanism::Tcx,
        pinned: Some((pinned, path)),
        replaced,
    })
}

fn attach_xdp(dp: &mut Datapath, iface: &str, path: PathBuf) -> Result<Hook> {
    let prog: &mut Xdp = dp
        .ebpf
        .program_mut(XDP_INGRESS)
        .context("program missing")?
        .try_into()?;
    let (id, replaced) = match take_pinned(&path)? {
        Some(fd) => {
            let link = XdpLink::try_from(fd).context("pinned link is not an XDP link")?;
            (prog.attach_to_link(link)?, true)
        }
        None => (
            prog.attach(iface, XdpMode::Default).with_context(|| {
                format!("attaching XDP to {iface} (is another XDP program attached?)")
            })?,
            false,
        ),
    };
    let fd: FdLink = prog
        .take_link(id)?
        .try_into()
        .context("XDP links need Linux 5.9+")?;
    let pinned = fd
        .pin(&path)
        .with_context(|| format!("pinning link at {}", path.display()))?;
    Ok(Hook {
        iface: iface.into(),
        kind: HookKind::XdpIngress,
        mechanism: Mechanism::XdpLink,
        pinned: Some((pinned, path)),
        replaced,
    })
}
