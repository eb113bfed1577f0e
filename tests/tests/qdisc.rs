//! The agent's qdisc management (rtnetlink) against real veths in network
//! namespaces: what it reads agrees with `tc`, an operator's qdisc is never
//! replaced, and fq is installed and removed where the kernel has it (the
//! qemu kernels) or refused by the kernel, with nothing changed, where it
//! does not (this host). Needs root; addresses stay on 198.18.0.0/15.

use anyhow::Result;
use tc_agent::datapath::qdisc::{self, tc_handle, Qdisc, MQ_HANDLE, ROOT};
use tc_tests::netns::{in_netns, sh, Pair};

/// Transmit queues of the multi-queue veth: enough for mq to matter.
const QUEUES: u16 = 4;

/// True, with the printed reason, when not root (namespaces need it).
fn skip_unless_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    let skip = unsafe { libc::geteuid() } != 0;
    if skip {
        println!("skipped: network namespaces and qdiscs need root");
    }
    skip
}

/// Runs `f` on a thread inside namespace `ns`, where the agent's netlink
/// socket then lives.
fn inside<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    in_netns(ns, f).join().expect("namespace thread panicked")
}

/// The qdiscs of `dev` in `ns` as the agent reads them.
fn listed(ns: &str, dev: &str) -> Result<Vec<Qdisc>> {
    let dev = dev.to_string();
    inside(ns, move || qdisc::qdiscs(&dev))?
}

/// `(kind, handle, parent)` of every qdisc of `dev` in `ns` as `tc -j`
/// prints them, sorted; the root's parent is "root".
fn tc_view(ns: &str, dev: &str) -> Result<Vec<(String, String, String)>> {
    let mut all: Vec<_> = tc_tests::netns::tc_qdiscs(ns, dev)?
        .iter()
        .map(|q| {
            let s = |k: &str| q[k].as_str().unwrap_or_default().to_string();
            let parent = if q["root"] == true {
                "root".into()
            } else {
                s("parent")
            };
            (s("kind"), s("handle"), parent)
        })
        .collect();
    all.sort();
    Ok(all)
}

/// The agent's listing in `tc`'s notation, sorted, to compare with [`tc_view`].
fn as_tc(qdiscs: &[Qdisc]) -> Vec<(String, String, String)> {
    let show = |h: u32| match h & 0xffff {
        0 => format!("{:x}:", h >> 16),
        minor => format!("{:x}:{minor:x}", h >> 16),
    };
    let mut all: Vec<_> = qdiscs
        .iter()
        .map(|q| {
            let parent = if q.parent == ROOT {
                "root".into()
            } else {
                show(q.parent)
            };
            (q.kind.clone(), show(q.handle), parent)
        })
        .collect();
    all.sort();
    all
}

/// Kind of the root qdisc of `dev` in `ns`, as the agent reads it.
fn root_kind(ns: &str, dev: &str) -> Result<String> {
    let dev = dev.to_string();
    inside(ns, move || qdisc::root_kind(&dev))?
}

/// Another veth pair inside the client's namespace (deleted with it), with
/// `queues` transmit queues; returns the end the agent manages, up. (A
/// plain veth gets one queue per CPU, so the pair's own may have several.)
fn veth(pair: &Pair, suffix: &str, queues: u16) -> Result<String> {
    let dev = format!("{}{suffix}", pair.client_if);
    let peer = format!("{dev}p");
    let q = queues.to_string();
    sh(&[
        "ip",
        "-n",
        &pair.client,
        "link",
        "add",
        &dev,
        "numtxqueues",
        &q,
        "numrxqueues",
        &q,
        "type",
        "veth",
        "peer",
        "name",
        &peer,
    ])?;
    for d in [&dev, &peer] {
        sh(&["ip", "-n", &pair.client, "link", "set", d, "up"])?;
    }
    Ok(dev)
}

#[test]
fn the_listing_matches_tc_and_an_operators_qdisc_is_never_replaced() -> Result<()> {
    if skip_unless_root() {
        return Ok(());
    }
    let pair = Pair::new()?;
    let (ns, dev) = (pair.client.clone(), pair.client_if.clone());

    // A veth's default root: noqueue, handle 0:, as tc shows it.
    let default = listed(&ns, &dev)?;
    assert_eq!(as_tc(&default), tc_view(&ns, &dev)?);
    assert_eq!(root_kind(&ns, &dev)?, "noqueue");

    for (kind, args) in [
        (
            "tbf",
            &[
                "handle", "1:", "tbf", "rate", "1mbit", "burst", "32k", "latency", "50ms",
            ][..],
        ),
        ("htb", &["handle", "2:", "htb", "default", "1"][..]),
    ] {
        let mut cmd = vec![
            "ip", "netns", "exec", &ns, "tc", "qdisc", "replace", "dev", &dev, "root",
        ];
        cmd.extend_from_slice(args);
        sh(&cmd)?;
        let before = listed(&ns, &dev)?;
        assert_eq!(as_tc(&before), tc_view(&ns, &dev)?);
        assert_eq!(root_kind(&ns, &dev)?, kind);

        let d = dev.clone();
        let err = inside(&ns, move || qdisc::ensure_fq(&d))?
            .expect_err("ensure_fq replaced an operator's qdisc");
        let msg = format!("{err:#}");
        println!("refused: {msg}");
        assert!(
            msg.contains(&format!("{dev} has a configured `{kind}` root qdisc"))
                && msg.contains("will not replace an operator's qdisc")
                && msg.contains(&format!("`tc qdisc del dev {dev} root`")),
            "{msg}"
        );
        assert_eq!(listed(&ns, &dev)?, before, "the refusal changed the qdiscs");
    }

    // Deleting the root gives the kernel's default back.
    let d = dev.clone();
    inside(&ns, move || qdisc::restore(&d))??;
    assert_eq!(root_kind(&ns, &dev)?, "noqueue");
    assert_eq!(as_tc(&listed(&ns, &dev)?), tc_view(&ns, &dev)?);
    Ok(())
}

#[test]
fn fq_is_installed_and_restored_where_the_kernel_has_it_and_refused_cleanly_where_not() -> Result<()>
{
    if skip_unless_root() {
        return Ok(());
    }
    let pair = Pair::new()?;
    let ns = pair.client.clone();
    let single = veth(&pair, "1", 1)?;
    let multi = veth(&pair, "m", QUEUES)?;
    let run = |dev: &str, f: fn(&str) -> anyhow::Result<bool>| {
        let dev = dev.to_string();
        inside(&ns, move || f(&dev))
    };

    if qdisc::fq_available() {
        println!("this kernel has fq: installing and restoring it");
        // One queue: fq at the root.
        assert!(
            run(&single, qdisc::ensure_fq)??,
            "fq reported as already there"
        );
        let q = listed(&ns, &single)?;
        assert!(
            q.iter().any(|q| q.parent == ROOT && q.kind == "fq"),
            "{q:?}"
        );
        assert_eq!(as_tc(&q), tc_view(&ns, &single)?);
        assert!(!run(&single, qdisc::ensure_fq)??, "fq installed twice");
        run(&single, |d| qdisc::restore(d).map(|()| true))??;
        assert_eq!(root_kind(&ns, &single)?, "noqueue");

        // Several queues: mq 7c: with an fq under each queue's class.
        assert!(run(&multi, qdisc::ensure_fq)??);
        let q = listed(&ns, &multi)?;
        assert_eq!(as_tc(&q), tc_view(&ns, &multi)?);
        let root = q.iter().find(|q| q.parent == ROOT).expect("no root qdisc");
        assert_eq!(
            (root.kind.as_str(), root.handle),
            ("mq", MQ_HANDLE),
            "{q:?}"
        );
        for queue in 1..=QUEUES {
            assert!(
                q.iter()
                    .any(|q| q.parent == tc_handle(0x7c, queue) && q.kind == "fq"),
                "no fq under 7c:{queue:x}: {q:?}"
            );
        }
        run(&multi, |d| qdisc::restore(d).map(|()| true))??;
        let q = listed(&ns, &multi)?;
        assert!(q.iter().all(|q| q.kind != "fq" && q.kind != "mq"), "{q:?}");
        assert_eq!(root_kind(&ns, &multi)?, "noqueue");
    } else {
        assert!(
            std::env::var_os("TC_TESTS_IN_VM").is_none(),
            "this VM kernel has no fq: the install path must be tested here"
        );
        println!("this kernel has no fq: the kernel must refuse it and nothing may change");
        for dev in [&single, &multi] {
            let before = listed(&ns, dev)?;
            // The agent's own check comes first, with the operator's advice.
            let err = run(dev, qdisc::ensure_fq)?.expect_err("ensure_fq without fq");
            assert!(format!("{err:#}").contains("no fq qdisc"), "{err:#}");
            // The kernel's refusal, in its own words, when asked anyway.
            let err = run(dev, |d| qdisc::install_fq(d).map(|()| true))?
                .expect_err("the kernel accepted fq without sch_fq");
            let msg = format!("{err:#}");
            println!("refused: {msg}");
            assert!(
                msg.contains(&format!("installing fq on {dev} for `delay`"))
                    && msg.contains("Specified qdisc kind is unknown")
                    && msg.contains("ENOENT"),
                "{msg}"
            );
            assert_eq!(listed(&ns, dev)?, before, "a failed install changed {dev}");
            assert_eq!(root_kind(&ns, dev)?, "noqueue");
        }
    }
    Ok(())
}
