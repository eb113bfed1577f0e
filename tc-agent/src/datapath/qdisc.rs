//! The fq qdisc that `delay` needs: fq releases each packet at the
//! earliest departure time the tc egress program wrote into `skb->tstamp`
//! (EDT, Linux 4.20+). Managed over rtnetlink, as `tc qdisc` would.

use std::path::Path;

use anyhow::{bail, Context, Result};
use netlink_packet_core::{NLM_F_CREATE, NLM_F_REPLACE};
use netlink_packet_route::{
    link::{LinkAttribute, LinkMessage},
    tc::{TcAttribute, TcHandle, TcMessage},
    RouteNetlinkMessage,
};

use super::{
    rtnl::{Rtnl, RtnlError},
    sys,
};

/// Root qdiscs the kernel or a distribution installs by itself. Anything
/// else was configured by someone, and the agent will not replace it.
const DEFAULT_ROOTS: [&str; 5] = ["noqueue", "pfifo_fast", "fq_codel", "mq", "fq"];

/// Handle of the mq root the agent installs on multi-queue devices (`7c:`).
pub const MQ_HANDLE: u32 = tc_handle(0x7c, 0);

/// `TC_H_ROOT`: the parent of a device's root qdisc.
pub const ROOT: u32 = u32::MAX;

/// A tc handle `major:minor` as the kernel stores it.
pub const fn tc_handle(major: u16, minor: u16) -> u32 {
    (major as u32) << 16 | minor as u32
}

/// One qdisc of a device, as `tc qdisc show` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qdisc {
    /// Its kind (`fq`, `mq`, `noqueue`, `htb`, …): what decides whether the
    /// agent may replace it.
    pub kind: String,
    /// Its handle (`7c:` is [`MQ_HANDLE`]); 0 for the kernel's defaults.
    pub handle: u32,
    /// Its parent: [`ROOT`] for the root qdisc, a class (`7c:1`) for an mq child.
    pub parent: u32,
}

/// Whether this kernel can run fq: loaded as a module (it is in
/// /sys/module), available as one, or built in (its qdisc ops are in
/// kallsyms). The cheap looks come first: reading all of /proc/kallsyms
/// takes 30-40 ms on a host and seconds under an emulator.
pub fn fq_available() -> bool {
    let loaded = Path::new("/sys/module/sch_fq").exists();
    let module = || {
        let release = super::sys::kernel_release();
        ["sch_fq.ko", "sch_fq.ko.xz", "sch_fq.ko.zst", "sch_fq.ko.gz"]
            .iter()
            .any(|m| Path::new(&format!("/lib/modules/{release}/kernel/net/sched/{m}")).exists())
    };
    let in_kernel = || {
        std::fs::read_to_string("/proc/kallsyms")
            .map(|k| {
                k.lines()
                    .any(|l| l.ends_with(" fq_qdisc_ops") || l.contains(" fq_qdisc_ops\t"))
            })
            .unwrap_or(false)
    };
    loaded || module() || in_kernel()
}

/// Every qdisc of `iface` (root, children, ingress/clsact), in the calling
/// thread's network namespace.
pub fn qdiscs(iface: &str) -> Result<Vec<Qdisc>> {
    let index = sys::ifindex(iface)?;
    let replies = Rtnl::open()
        .and_then(|mut nl| nl.dump(RouteNetlinkMessage::GetQueueDiscipline(TcMessage::default())))
        .with_context(|| format!("listing the qdiscs of {iface}"))?;
    Ok(replies
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewQueueDiscipline(q) => Some(q),
            _ => None,
        })
        .filter(|q| u32::try_from(q.header.index) == Ok(index))
        .map(|q| Qdisc {
            kind: q
                .attributes
                .iter()
                .find_map(|a| match a {
                    TcAttribute::Kind(k) => Some(k.clone()),
                    _ => None,
                })
                .unwrap_or_default(),
            handle: q.header.handle.into(),
            parent: q.header.parent.into(),
        })
        .collect())
}

/// Kind of `iface`'s root qdisc. A device without one listed (a veth that
/// is down) has the kernel's default: `noqueue` for virtual devices.
pub fn root_kind(iface: &str) -> Result<String> {
    Ok(qdiscs(iface)?
        .into_iter()
        .find(|q| q.parent == ROOT)
        .map(|q| q.kind)
        .unwrap_or_else(|| "noqueue".into()))
}

/// Transmit queues of `iface` (`IFLA_NUM_TX_QUEUES`).
fn tx_queues(iface: &str) -> Result<u32> {
    let mut link = LinkMessage::default();
    link.header.index = sys::ifindex(iface)?;
    let replies = Rtnl::open()
        .and_then(|mut nl| nl.request(RouteNetlinkMessage::GetLink(link), 0))
        .with_context(|| format!("reading the transmit queues of {iface}"))?;
    Ok(replies
        .iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(l),
            _ => None,
        })
        .flat_map(|l| &l.attributes)
        .find_map(|a| match a {
            LinkAttribute::NumTxQueues(n) => Some(*n),
            _ => None,
        })
        .unwrap_or(1))
}

/// `tc qdisc replace dev IFACE parent PARENT [handle HANDLE] KIND`, with no
/// options (fq and mq need none).
fn replace(
    nl: &mut Rtnl,
    index: u32,
    parent: u32,
    handle: u32,
    kind: &str,
) -> Result<(), RtnlError> {
    let mut msg = TcMessage::with_index(index as i32);
    msg.header.parent = TcHandle::from(parent);
    msg.header.handle = TcHandle::from(handle);
    msg.attributes.push(TcAttribute::Kind(kind.into()));
    nl.request(
        RouteNetlinkMessage::NewQueueDiscipline(msg),
        NLM_F_CREATE | NLM_F_REPLACE,
    )
    .map(drop)
}

/// `tc qdisc del dev IFACE root`: the kernel puts its default back.
fn delete_root(nl: &mut Rtnl, index: u32) -> Result<(), RtnlError> {
    let mut msg = TcMessage::with_index(index as i32);
    msg.header.parent = TcHandle::from(ROOT);
    nl.request(RouteNetlinkMessage::DelQueueDiscipline(msg), 0)
        .map(drop)
}

/// Makes fq the egress qdisc of `iface` (mq + fq per queue on multi-queue
/// devices). Returns `true` if it installed something, so detach restores
/// the default; `false` if fq was already there.
pub fn ensure_fq(iface: &str) -> Result<bool> {
    let kind = root_kind(iface)?;
    if kind == "fq" {
        return Ok(false);
    }
    if !DEFAULT_ROOTS.contains(&kind.as_str()) {
        bail!(
            "{iface} has a configured `{kind}` root qdisc; `delay` needs fq there (EDT) and tc-agent will not replace an operator's qdisc: remove it (`tc qdisc del dev {iface} root`) or use `drop`/`mark`"
        );
    }
    if !fq_available() {
        bail!("this kernel ({}) has no fq qdisc (CONFIG_NET_SCH_FQ): `delay` cannot pace here; use `drop` or `mark`", sys::kernel_release());
    }
    install_fq(iface)?;
    Ok(true)
}

/// Installs fq as the root qdisc of `iface`, or mq (handle `7c:`) with an
/// fq under each transmit queue on a multi-queue device, replacing what is
/// there. [`ensure_fq`] decides first whether it may; this is the kernel
/// part alone, and fails with the kernel's reason (no fq: "Specified qdisc
/// kind is unknown"). If an fq under mq fails, the mq is removed again, so
/// a failure leaves the kernel's default.
pub fn install_fq(iface: &str) -> Result<()> {
    let context = || format!("installing fq on {iface} for `delay`");
    let queues = tx_queues(iface).with_context(context)?;
    let index = sys::ifindex(iface)?;
    let mut nl = Rtnl::open().with_context(context)?;
    if queues <= 1 {
        return replace(&mut nl, index, ROOT, 0, "fq")
            .with_context(|| format!("replacing the root qdisc of {iface} with fq"))
            .with_context(context);
    }
    replace(&mut nl, index, ROOT, MQ_HANDLE, "mq")
        .with_context(|| format!("replacing the root qdisc of {iface} with mq 7c:"))
        .with_context(context)?;
    for q in 1..=queues {
        let parent = tc_handle(0x7c, q as u16);
        if let Err(e) = replace(&mut nl, index, parent, 0, "fq") {
            let _ = delete_root(&mut nl, index);
            return Err(anyhow::Error::new(e)
                .context(format!("adding fq under mq class 7c:{q:x} of {iface}"))
                .context(context()));
        }
    }
    Ok(())
}

/// Puts back the kernel's default root qdisc on `iface` by deleting the
/// root the agent installed.
pub fn restore(iface: &str) -> Result<()> {
    let index = sys::ifindex(iface)?;
    Rtnl::open()
        .and_then(|mut nl| delete_root(&mut nl, index))
        .with_context(|| format!("deleting the root qdisc of {iface}"))
}
