//! The fq qdisc that `delay` needs: fq releases each packet at the
//! earliest departure time the tc egress program wrote into `skb->tstamp`
//! (EDT, Linux 4.20+). Managed with iproute2's `tc`.

use std::{path::Path, process::Command};

use anyhow::{bail, Context, Result};

/// Root qdiscs the kernel or a distribution installs by itself. Anything
/// else was configured by someone, and the agent will not replace it.
const DEFAULT_ROOTS: [&str; 5] = ["noqueue", "pfifo_fast", "fq_codel", "mq", "fq"];

/// Handle of the mq root the agent installs on multi-queue devices.
const MQ_HANDLE: &str = "7c:";

fn tc(args: &[&str]) -> Result<String> {
    let out = Command::new("tc")
        .args(args)
        .output()
        .context("running `tc` (iproute2); delay needs it to install the fq qdisc")?;
    if !out.status.success() {
        bail!(
            "tc {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether this kernel can run fq: built in or loaded (its qdisc ops are in
/// kallsyms), or available as a module.
pub fn fq_available() -> bool {
    let in_kernel = std::fs::read_to_string("/proc/kallsyms")
        .map(|k| {
            k.lines()
                .any(|l| l.ends_with(" fq_qdisc_ops") || l.contains(" fq_qdisc_ops\t"))
        })
        .unwrap_or(false);
    let release = super::sys::kernel_release();
    let module = ["sch_fq.ko", "sch_fq.ko.xz", "sch_fq.ko.zst", "sch_fq.ko.gz"]
        .iter()
        .any(|m| Path::new(&format!("/lib/modules/{release}/kernel/net/sched/{m}")).exists());
    in_kernel || module
}

/// Kind of `iface`'s root qdisc.
fn root_kind(iface: &str) -> Result<String> {
    let out = tc(&["-j", "qdisc", "show", "dev", iface, "root"])?;
    let v: serde_json::Value = serde_json::from_str(&out).context("parsing `tc -j qdisc show`")?;
    Ok(v.get(0)
        .and_then(|q| q["kind"].as_str())
        .unwrap_or("noqueue")
        .to_string())
}

/// Transmit queues of `iface`.
fn tx_queues(iface: &str) -> Result<u32> {
    let out = Command::new("ip")
        .args(["-d", "-j", "link", "show", "dev", iface])
        .output()?;
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("parsing `ip -j link show`")?;
    Ok(v.get(0)
        .and_then(|l| l["num_tx_queues"].as_u64())
        .unwrap_or(1) as u32)
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
        bail!("this kernel ({}) has no fq qdisc (CONFIG_NET_SCH_FQ): `delay` cannot pace here; use `drop` or `mark`", super::sys::kernel_release());
    }
    let queues = tx_queues(iface)?;
    let fail = |e: anyhow::Error| e.context(format!("installing fq on {iface} for `delay`"));
    if queues <= 1 {
        tc(&["qdisc", "replace", "dev", iface, "root", "fq"]).map_err(fail)?;
    } else {
        tc(&[
            "qdisc", "replace", "dev", iface, "root", "handle", MQ_HANDLE, "mq",
        ])
        .map_err(fail)?;
        for q in 1..=queues {
            let parent = format!("{MQ_HANDLE}{q:x}");
            tc(&["qdisc", "replace", "dev", iface, "parent", &parent, "fq"]).map_err(fail)?;
        }
    }
    Ok(true)
}

/// Puts back the kernel's default root qdisc on `iface`.
pub fn restore(iface: &str) -> Result<()> {
    tc(&["qdisc", "del", "dev", iface, "root"]).map(|_| ())
}
