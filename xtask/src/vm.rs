//! `cargo xtask vm-test`: the kernel-dependent test suites (BPF_PROG_TEST_RUN
//! verdicts and namespace traffic) inside qemu on Debian's cloud kernels.
//!
//! - Kernels come from `apt-get download` + `dpkg -x`, cached under `target/vm/`.
//! - The guest is a busybox-static initramfs holding the statically linked
//!   test binaries and `tc-agent` (debug info stripped), iproute2 (`ip`,
//!   `tc`, `ss`), iperf3, nginx, wrk, promtool and tmux with their shared
//!   libraries, the few /etc files nginx needs, tmux's terminfo entries,
//!   and the kernel modules the tests need.
//! - qemu runs under TCG: KVM hangs on this host kind (kvm_pvm). The
//!   kernels' guests run at once, each on two vCPUs.
//! - Results come back as markers on the serial console; only a run that
//!   printed its final `TCVM-DONE` marker, with every suite passing, counts.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{cargo_output, root, run};

/// A kernel of the matrix: its short name and Debian's meta package.
pub struct Kernel {
    pub name: &'static str,
    meta: &'static str,
}

pub const KERNELS: [Kernel; 2] = [
    // Before TCX (6.6): tc attaches through clsact + cls_bpf over netlink.
    Kernel {
        name: "6.1",
        meta: "linux-image-cloud-amd64",
    },
    // TCX links.
    Kernel {
        name: "6.12",
        meta: "linux-image-6.12-cloud-amd64",
    },
];

/// Modules the suites need; built in on some kernels, so a failed insmod is
/// fine. /init loads them in name order: inet_diag before tcp_diag (`ss`).
const MODULES: [&str; 9] = [
    "drivers/net/veth",
    "net/sched/sch_ingress",
    "net/sched/cls_bpf",
    "net/sched/sch_fq",
    "net/sched/sch_tbf",
    "net/sched/sch_htb",
    "net/sched/sch_netem",
    "net/ipv4/inet_diag",
    "net/ipv4/tcp_diag",
];

/// Kernel-dependent suites (integration test targets of `tc-tests`).
const SUITES: [&str; 13] = [
    "verdicts",
    "diff",
    "conntrack",
    "account",
    "traffic",
    "evasion",
    "restart",
    "qdisc",
    "connections",
    "metrics",
    "top",
    "observe",
    "flood",
];
/// Tests the guest leaves out, with the reason: each needs what the guest
/// kernels have and this host lacks, the other way round.
const HOST_ONLY: [(&str, &str); 1] = [(
    "delay_without_fq_is_refused_and_nothing_changes",
    "checks the refusal where a kernel has no fq; the guest kernels have it",
)];
/// Host-side limit for one guest run: the slower (6.12) took up to
/// 1,406 s with the other guest beside it, and 2,113 s on a slower host
/// (an AMD EPYC guest with retpolines).
/// With the host's part (about 20 minutes there), a run stays within CI's
/// 90 minutes.
const GUEST_TIMEOUT: Duration = Duration::from_secs(3600);
/// Programs the guest runs besides busybox's applets, copied with their
/// shared libraries. coreutils' timeout, not busybox's: the applet would run
/// its own `ip`. nginx and wrk are Debian's nginx-light and wrk, promtool
/// (`promtool check metrics`, the metrics suite) comes with Debian's
/// prometheus (scripts/install-deps.sh), `ss` comes with iproute2; tmux
/// gives `tc-agent top` a terminal (its pty needs /dev/pts, which /init
/// mounts); ethtool reads the flood suite's veth XDP counters.
const GUEST_PROGRAMS: [&str; 11] = [
    "/usr/sbin/ip",
    "/usr/sbin/tc",
    "/usr/bin/ss",
    "/usr/bin/iperf3",
    "/usr/bin/timeout",
    "/usr/bin/ping",
    "/usr/sbin/nginx",
    "/usr/bin/wrk",
    "/usr/bin/promtool",
    "/usr/bin/tmux",
    "/usr/sbin/ethtool",
];
/// Other host files the guest needs, copied to the same path: terminfo
/// entries for the terminal types tmux names (`tmux-256color`, Debian's
/// default-terminal, and `screen`, tmux's own default), and the console's;
/// the C.UTF-8 locale's character classes, without which tmux refuses to
/// start ("need UTF-8 locale (LC_CTYPE) but have ANSI_X3.4-1968").
const GUEST_FILES: [&str; 4] = [
    "/lib/terminfo/t/tmux-256color",
    "/lib/terminfo/s/screen",
    "/lib/terminfo/l/linux",
    "/usr/lib/locale/C.utf8/LC_CTYPE",
];
/// /etc files for the guest: nginx (as root, `user root root`) looks its
/// user and group up, and glibc reads them through nsswitch's `files`.
const GUEST_ETC: [(&str, &str); 3] = [
    (
        "passwd",
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    ),
    ("group", "root:x:0:\nnogroup:x:65534:\n"),
    (
        "nsswitch.conf",
        "passwd: files\ngroup: files\nhosts: files\n",
    ),
];
const TRIPLE: &str = "x86_64-unknown-linux-gnu";

/// Cargo's target directory: `CARGO_TARGET_DIR` when set (cargo builds
/// there, so the agent must be picked up there too), else `target/`.
pub(crate) fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

fn vm_dir() -> PathBuf {
    root().join("target/vm")
}

/// Downloads and unpacks the kernel package once; returns its unpacked root.
fn fetch_kernel(k: &Kernel) -> Result<PathBuf> {
    let dir = vm_dir().join("kernels").join(k.name);
    if dir.join("ready").exists() {
        return Ok(dir);
    }
    fs::create_dir_all(&dir)?;
    // The meta package depends on the versioned image package.
    let deps = Command::new("apt-cache")
        .args(["depends", k.meta])
        .output()?;
    let deps = String::from_utf8_lossy(&deps.stdout);
    let image = deps
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-"))
        .with_context(|| {
            format!(
                "apt-cache knows no image behind {} (run apt-get update)",
                k.meta
            )
        })?
        .to_string();
    println!("vm-test: downloading {image}");
    run(Command::new("apt-get")
        .args(["download", "-q", &image])
        .current_dir(&dir))?;
    let deb = fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download left no .deb")?;
    run(Command::new("dpkg")
        .arg("-x")
        .arg(&deb)
        .arg(dir.join("root")))?;
    fs::remove_file(&deb)?;
    fs::write(dir.join("ready"), image)?;
    Ok(dir)
}

fn find_one(dir: &Path, pred: &dyn Fn(&Path) -> bool) -> Option<PathBuf> {
    for e in fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if p.is_dir() {
            if let Some(f) = find_one(&p, pred) {
                return Some(f);
            }
        } else if pred(&p) {
            return Some(p);
        }
    }
    None
}

/// Builds the static test binaries and agent; returns (suite name, path) and the agent path.
///
/// Debug info is line tables only (the workspace's dev profile): backtraces
/// keep their files and lines, and the binaries shrink from about 90 MB
/// each (full DWARF) to a size the guest can hold. The initramfs is
/// unpacked into the guest's 2 GiB of RAM; with eight suites and the agent
/// at full debug info it came to 887 MB unpacked and the kernel failed
/// with "Initramfs unpacking failed: write error".
///
/// Optimised (`opt-level` 1), unlike the host's debug build: under qemu's
/// TCG every instruction is emulated, and unoptimised Rust spent most of
/// some suites' time (on 6.1, `verdicts` 94 s at level 0, 29 s at level 1;
/// the whole run 1,015 s, 802 s) for about a minute more of build.
/// Overflow checks and debug assertions stay on, as in any dev build.
fn build_static() -> Result<(Vec<(String, PathBuf)>, PathBuf)> {
    let flags = [
        ("RUSTFLAGS", "-C target-feature=+crt-static"),
        ("CARGO_PROFILE_DEV_OPT_LEVEL", "1"),
    ];
    // Only the suites the guests run: the package's other test targets
    // would only lengthen the build.
    let mut args = vec!["test", "--no-run", "-p", "tc-tests"];
    for suite in SUITES {
        args.extend(["--test", suite]);
    }
    args.extend(["--target", TRIPLE, "--message-format=json"]);
    let out = cargo_output(&args, &flags)?;
    let mut suites = Vec::new();
    for line in out.lines() {
        let Ok(m) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let name = m["target"]["name"].as_str().unwrap_or_default();
        if m["reason"] == "compiler-artifact" && SUITES.contains(&name) {
            if let Some(exe) = m["executable"].as_str() {
                suites.push((name.to_string(), PathBuf::from(exe)));
            }
        }
    }
    if suites.len() != SUITES.len() {
        bail!("expected test binaries {SUITES:?}, cargo built {suites:?}");
    }
    cargo_output(&["build", "-p", "tc-agent", "--target", TRIPLE], &flags)?;
    Ok((suites, target_dir().join(TRIPLE).join("debug/tc-agent")))
}

/// Copies `bin` into the image at the same path, with every shared library it needs.
fn copy_with_libs(bin: &str, image: &Path, libs: &mut BTreeSet<PathBuf>) -> Result<()> {
    copy_into(Path::new(bin), image)?;
    let out = Command::new("ldd").arg(bin).output()?;
    for l in String::from_utf8_lossy(&out.stdout).lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = l
            .split("=>")
            .last()
            .and_then(|r| r.split_whitespace().next())
            .filter(|p| p.starts_with('/'));
        if let Some(p) = path {
            libs.insert(PathBuf::from(p));
        }
    }
    Ok(())
}

fn copy_into(src: &Path, image: &Path) -> Result<()> {
    let dst = image.join(src.strip_prefix("/").unwrap_or(src));
    fs::create_dir_all(dst.parent().context("path has a parent")?)?;
    fs::copy(src, &dst).with_context(|| format!("copying {}", src.display()))?;
    Ok(())
}

const INIT: &str = r#"#!/bin/sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts
mount -t devpts devpts /dev/pts
mount -t tmpfs tmp /tmp
mount -t tmpfs run /run
mkdir -p /sys/fs/bpf /run/netns
mount -t bpf bpf /sys/fs/bpf
for m in /modules/*.ko; do insmod "$m" 2>/dev/null; done
ip link set lo up
echo "TCVM-KERNEL $(uname -r)"
# Holds the packet path's hook static keys on for the whole run, in a
# namespace of its own: a clsact qdisc holds the clsact ones (ingress and
# egress), and on kernels with TCX (Linux 6.6+) an agent's programs left in the
# veth's TCX hooks hold the TCX one. Otherwise every test's first hook and
# last detach flips them, and flipping a static key patches the packet
# path's code with int3 while the other vCPU may be running it, which
# qemu's TCG can get wrong (as with the CRNG's key: see `boot`). The agent
# is killed once up: its hooks stay, as a killed agent's do. iproute2's
# `ip` and `tc` by path: the shell prefers busybox's own applets.
keys=1
/usr/sbin/ip netns add tcvm-keys \
  && /usr/sbin/ip -n tcvm-keys link add tcvmkeys0 type veth peer name tcvmkeys1 \
  && /usr/sbin/tc -n tcvm-keys qdisc add dev tcvmkeys0 clsact \
  && mkdir -p /tmp/tcvm-keys \
  && echo 'channels: []' > /tmp/tcvm-keys/policy.yaml \
  && keys=0
if [ $keys -eq 0 ]; then
  /usr/bin/tc-agent --socket /tmp/tcvm-keys/sock run --netns tcvm-keys --iface tcvmkeys1 \
    --pin-dir /sys/fs/bpf/tcvm-keys --state-dir /tmp/tcvm-keys/state \
    --policy /tmp/tcvm-keys/policy.yaml > /tmp/tcvm-keys/log 2>&1 &
  agent=$!
  keys=1
  i=0
  while [ $i -lt 120 ] && kill -0 $agent 2> /dev/null; do
    if /usr/bin/tc-agent --socket /tmp/tcvm-keys/sock status > /dev/null 2>&1; then
      keys=0
      break
    fi
    sleep 1
    i=$((i + 1))
  done
  kill -9 $agent 2> /dev/null
  if [ $keys -eq 0 ]; then
    echo "TCVM-KEYS held; pinned hook links (none where hooks are netlink filters):"
    ls /sys/fs/bpf/tcvm-keys/links 2> /dev/null
  else
    cat /tmp/tcvm-keys/log
  fi
fi
[ $keys -eq 0 ] || echo "TCVM-KEYS failed"
# Holds the receive timestamp key (netstamp_needed_key) on likewise: iputils'
# ping asks for SO_TIMESTAMP, and each test's first ping (or scapy socket)
# flipped it, patching netif_rx_internal while the other vCPU ran it (seen
# once on 6.12: an int3 oops there, under a test's ping). This ping sends one
# echo to an address on its own namespace's loopback, has its reply (so its
# socket is set up), and then waits an hour with the socket open. `ip netns
# exec` execs the command in place: $! is ping itself. It is checked again
# at the end of the run (`stamp_held`).
stamp=1
stamper=
if /usr/sbin/ip -n tcvm-keys link set lo up \
  && /usr/sbin/ip -n tcvm-keys addr add 198.18.255.254/32 dev lo; then
  /usr/sbin/ip netns exec tcvm-keys /usr/bin/ping -i 3600 198.18.255.254 > /tmp/tcvm-stamp.log 2>&1 &
  stamper=$!
  i=0
  while [ $i -lt 30 ] && kill -0 $stamper 2> /dev/null; do
    if grep -q "bytes from" /tmp/tcvm-stamp.log; then
      stamp=0
      break
    fi
    sleep 1
    i=$((i + 1))
  done
fi
stamp_held() {
  [ -n "$stamper" ] && [ "$(cat /proc/$stamper/comm 2> /dev/null)" = ping ]
}
if [ $stamp -eq 0 ] && stamp_held; then
  echo "TCVM-STAMP held"
else
  echo "TCVM-STAMP failed"
  cat /tmp/tcvm-stamp.log
fi
export TC_AGENT_BIN=/usr/bin/tc-agent TMPDIR=/tmp RUST_BACKTRACE=1 TC_TESTS_IN_VM=1
all=0
run() {
  name=$1; shift
  read start _ < /proc/uptime
  "$@"
  rc=$?
  read end _ < /proc/uptime
  echo "TCVM-RESULT $name rc=$rc (${start%.*} s to ${end%.*} s after boot)"
  [ $rc -eq 0 ] || all=1
}
COMMANDS
stamp_held || echo "TCVM-STAMP lost"
echo "TCVM-DONE rc=$all"
poweroff -f
"#;

/// Copies a binary of ours without its debug info (symbols stay, for
/// backtraces): the guest unpacks the image into its 2 GiB of RAM, and nine
/// suites' debug builds (about 90 MB each) no longer fit beside it.
fn copy_without_debug_info(src: &Path, dst: &Path) -> Result<()> {
    let out = Command::new("objcopy")
        .arg("--strip-debug")
        .arg(src)
        .arg(dst)
        .output()
        .context("objcopy (binutils) missing")?;
    anyhow::ensure!(
        out.status.success(),
        "objcopy --strip-debug {}: {}",
        src.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Writes the initramfs for kernel `kdir` holding `programs` under /tests
/// and the agent, whose /init runs `commands` (`run NAME CMD...` lines).
fn initramfs(
    kdir: &Path,
    programs: &[(String, PathBuf)],
    agent: &Path,
    commands: &[String],
) -> Result<PathBuf> {
    let image = kdir.join("image");
    let _ = fs::remove_dir_all(&image);
    for d in [
        "bin", "sbin", "proc", "sys", "dev", "tmp", "run", "modules", "tests", "usr/bin",
        "usr/sbin", "etc",
    ] {
        fs::create_dir_all(image.join(d))?;
    }
    for (name, text) in GUEST_ETC {
        fs::write(image.join("etc").join(name), text)?;
    }
    fs::copy("/usr/bin/busybox", image.join("bin/busybox")).context("busybox-static missing")?;
    // No `ip` or `tc` applets: the real iproute2 must answer to those names.
    for applet in [
        "sh", "mount", "mkdir", "echo", "cat", "ls", "poweroff", "sleep", "insmod", "uname",
        "taskset", "ping", "rm", "ln", "kill", "grep", "env", "sysctl", "stty",
    ] {
        std::os::unix::fs::symlink("busybox", image.join("bin").join(applet))?;
    }
    let mut libs = BTreeSet::new();
    for bin in GUEST_PROGRAMS {
        copy_with_libs(bin, &image, &mut libs)?;
    }
    for lib in &libs {
        // fs::copy follows symlinks: the file lands under the name the loader asks for.
        copy_into(lib, &image)?;
    }
    for file in GUEST_FILES {
        copy_into(Path::new(file), &image)?;
    }
    let modroot = kdir.join("root/lib/modules");
    for m in MODULES {
        let base = m.rsplit('/').next().unwrap_or(m);
        let found = find_one(&modroot, &|p: &Path| {
            p.to_string_lossy().contains(&format!("/{m}.ko"))
        });
        let Some(src) = found else { continue };
        let dst = image.join("modules").join(format!("{base}.ko"));
        if src.extension().is_some_and(|e| e == "xz") {
            let out = Command::new("xz").arg("-dc").arg(&src).output()?;
            anyhow::ensure!(out.status.success(), "xz -d {}", src.display());
            fs::write(&dst, out.stdout)?;
        } else {
            fs::copy(&src, &dst)?;
        }
    }
    for (name, exe) in programs {
        copy_without_debug_info(exe, &image.join("tests").join(name))?;
    }
    copy_without_debug_info(agent, &image.join("usr/bin/tc-agent"))?;
    let init = image.join("init");
    fs::write(&init, INIT.replace("COMMANDS", &commands.join("\n")))?;
    fs::set_permissions(&init, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let cpio = kdir.join("initramfs.cpio.gz");
    run(Command::new("sh")
        .arg("-c")
        .arg("find . | cpio -o -H newc --quiet | gzip -1 > ../initramfs.cpio.gz")
        .current_dir(&image))?;
    Ok(cpio)
}

/// Boots `kernel` with the initramfs, its console into a log file, and
/// prints the log once the guest is done; returns whether every suite
/// passed.
fn boot(k: &Kernel, kdir: &Path, initrd: &Path, suites: &[&str]) -> Result<bool> {
    let vmlinuz = find_one(&kdir.join("root/boot"), &|p: &Path| {
        p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz"))
    })
    .context("no vmlinuz in the kernel package")?;
    let log = vm_dir().join(format!("console-{}.log", k.name));
    let t0 = Instant::now();
    // `--foreground`: timeout stays in this process group, and qemu with
    // it (by default timeout moves itself, and so qemu, into a group of
    // its own), so a Ctrl-C stops both guests with `vm-test` rather than
    // leaving them to run out their timeout.
    let mut child = Command::new("timeout")
        .arg("--foreground")
        .arg(GUEST_TIMEOUT.as_secs().to_string())
        .args([
            "qemu-system-x86_64",
            "-m",
            "2048",
            "-smp",
            "2",
            // RDRAND (emulated) seeds the CRNG at boot. Without it the CRNG
            // becomes ready mid-test, and the static key it flips then is
            // patched with int3 while the other vCPU runs that code, which
            // TCG can get wrong (seen once: an int3 oops in crng_make_state).
            "-cpu",
            "max",
            "-accel",
            "tcg",
            "-nographic",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(&vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .stdin(Stdio::null())
        .stdout(fs::File::create(&log)?)
        .stderr(Stdio::null())
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let status = child.wait()?;
    let text = fs::read_to_string(&log).unwrap_or_default();
    // One guest's report in one piece: the other guest may finish meanwhile.
    let _report = std::io::stdout().lock();
    // Echo what the guest printed from its first marker on (the firmware's
    // screen-control bytes before it are noise).
    let mut started = false;
    for l in text.lines() {
        started |= l.contains("TCVM-KERNEL");
        if started && !l.contains("TCVM-JSON") {
            println!("[{}] {}", k.name, l.trim_end());
        }
    }
    let done = text.lines().find_map(|l| {
        l.split("TCVM-DONE rc=")
            .nth(1)
            .map(str::trim)
            .map(str::to_string)
    });
    let problems = check_console(k, &text, suites);
    for p in &problems {
        println!("vm-test {}: {p}", k.name);
    }
    // The kernel's first report again, last: a long run's log can be cut
    // to its tail, and the register dump that ends it names no cause.
    if let Some(report) = kernel_report(&text) {
        println!("vm-test {}: the kernel's first report:", k.name);
        for l in report {
            println!("[{}] {}", k.name, l.trim_end());
        }
    }
    println!(
        "vm-test {}: {} in {:.0}s (console log: {})",
        k.name,
        match done.as_deref() {
            Some("0") => "passed",
            Some(_) => "FAILED",
            None => "did not finish (no TCVM-DONE marker)",
        },
        t0.elapsed().as_secs_f64(),
        log.display()
    );
    if done.is_none() && !status.success() {
        println!("vm-test {}: qemu exited with {status}", k.name);
    }
    Ok(done.as_deref() == Some("0") && problems.is_empty())
}

/// The first lines of the kernel's first oops, BUG or panic on the
/// console, if there is one. Only the kernel's own lines count (they carry
/// printk's `[seconds]` stamp, which may follow a test's unfinished line):
/// a test may print "WARNING:" too. (With `quiet`, the console shows only
/// messages above warning level: an oops, a BUG, a panic.)
fn kernel_report(text: &str) -> Option<Vec<&str>> {
    const MARKS: [&str; 7] = [
        "cut here",
        "BUG:",
        "Oops",
        "[#1]",
        "general protection fault",
        "WARNING:",
        "Kernel panic",
    ];
    let lines: Vec<&str> = text.lines().collect();
    let first = lines
        .iter()
        .position(|l| printk_message(l).is_some_and(|m| MARKS.iter().any(|s| m.contains(s))))?;
    Some(lines[first..].iter().take(45).copied().collect())
}

/// The message of a kernel console line (`[  354.441652] message`), also
/// where the stamp follows other output on the same line.
fn printk_message(line: &str) -> Option<&str> {
    line.match_indices('[').find_map(|(i, _)| {
        let (stamp, message) = line[i + 1..].split_once(']')?;
        let stamp = stamp.trim();
        let is_stamp = stamp.contains('.') && stamp.chars().all(|c| c.is_ascii_digit() || c == '.');
        is_stamp.then(|| message.trim_start())
    })
}

/// What the console must show besides a zero exit: the kernel that was
/// meant to boot, every suite run and passed, and no test that skipped.
fn check_console(k: &Kernel, text: &str, suites: &[&str]) -> Vec<String> {
    let mut problems = Vec::new();
    let booted = text
        .lines()
        .find_map(|l| l.split("TCVM-KERNEL ").nth(1))
        .map(str::trim);
    match booted {
        Some(r) if r.starts_with(&format!("{}.", k.name)) => {}
        other => problems.push(format!("booted kernel {other:?}, expected {}.x", k.name)),
    }
    for suite in suites {
        if !text.contains(&format!("TCVM-RESULT {suite} rc=0")) {
            problems.push(format!("suite {suite} did not run and pass"));
        }
    }
    if text.contains("TCVM-KEYS failed") {
        problems.push("the guest could not hold the hooks' static keys (see /init)".into());
    }
    if !text.contains("TCVM-STAMP held") || text.contains("TCVM-STAMP lost") {
        problems.push(
            "the guest could not hold the receive timestamp key for the whole run (see /init)"
                .into(),
        );
    }
    for l in text.lines().filter(|l| l.contains("skipped:")) {
        problems.push(format!("a test skipped in the VM: {}", l.trim()));
    }
    problems
}

/// Runs the kernel-dependent suites on each kernel in `which` ("6.1", "6.12"
/// or "all"); `only` ("SUITE" or "SUITE:FILTER") narrows the run to one
/// suite and a test-name filter, for working on one kernel's verifier.
pub fn vm_test(which: &str, only: Option<&str>) -> Result<()> {
    let kernels: Vec<&Kernel> = KERNELS
        .iter()
        .filter(|k| which == "all" || k.name == which)
        .collect();
    if kernels.is_empty() {
        bail!("unknown kernel `{which}`: use 6.1, 6.12 or all");
    }
    let (suites, agent) = build_static()?;
    let skips: String = HOST_ONLY
        .iter()
        .map(|(test, _)| format!(" --skip {test}"))
        .collect();
    for (test, why) in HOST_ONLY {
        println!("vm-test: leaves out {test}: {why}");
    }
    let (only_suite, filter) = match only.map(|o| o.split_once(':').unwrap_or((o, ""))) {
        Some((s, f)) => {
            if !SUITES.contains(&s) {
                bail!("unknown suite `{s}`: one of {SUITES:?}");
            }
            (Some(s), f)
        }
        None => (None, ""),
    };
    // Only the suites that run go into the image: it is unpacked into RAM.
    let suites: Vec<(String, PathBuf)> = suites
        .into_iter()
        .filter(|(name, _)| only_suite.is_none_or(|s| s == name))
        .collect();
    let commands: Vec<String> = suites
        .iter()
        .map(|(name, _)| {
            format!("run {name} /tests/{name} --test-threads=1 --nocapture{skips} {filter}")
        })
        .collect();
    let expected: Vec<&str> = SUITES
        .iter()
        .copied()
        .filter(|s| only_suite.is_none_or(|o| o == *s))
        .collect();
    let mut images = Vec::new();
    for k in kernels {
        let kdir = fetch_kernel(k)?;
        let initrd = initramfs(&kdir, &suites, &agent, &commands)?;
        images.push((k, kdir, initrd));
    }
    // The guests boot side by side. Each is idle for much of its run (the
    // suites wait on timers and rates), so two of them on this machine's two
    // cores take a fifth to a third longer each than alone (6.1 1,152 s,
    // 6.12 1,406 s in CI), where one after the other took the sum (911 and
    // 1,067 s).
    let results: Vec<(&str, Result<bool>)> = std::thread::scope(|scope| {
        let runs: Vec<_> = images
            .iter()
            .map(|(k, kdir, initrd)| {
                let expected = &expected;
                (k.name, scope.spawn(move || boot(k, kdir, initrd, expected)))
            })
            .collect();
        runs.into_iter()
            .map(|(name, run)| {
                let result = run
                    .join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("the guest's thread panicked")));
                (name, result)
            })
            .collect()
    });
    let mut failed = Vec::new();
    for (name, result) in results {
        match result {
            Ok(true) => {}
            Ok(false) => failed.push(name.to_string()),
            Err(e) => failed.push(format!("{name} ({e:#})")),
        }
    }
    if !failed.is_empty() {
        bail!("vm-test failed on kernel(s) {failed:?}");
    }
    Ok(())
}

/// Runs `bench actions` (drop, delay, mark, TBF, HTB at one rate) inside the
/// 6.12 VM, which has the fq and netem qdiscs this host lacks, and returns
/// its JSON.
pub fn vm_bench(methods: &[String]) -> Result<serde_json::Value> {
    let flags = [("RUSTFLAGS", "-C target-feature=+crt-static")];
    cargo_output(
        &[
            "build",
            "--release",
            "-p",
            "tc-tests",
            "--bin",
            "bench",
            "--target",
            TRIPLE,
        ],
        &flags,
    )?;
    cargo_output(
        &["build", "--release", "-p", "tc-agent", "--target", TRIPLE],
        &flags,
    )?;
    let dir = target_dir().join(TRIPLE).join("release");
    let k = &KERNELS[1];
    let kdir = fetch_kernel(k)?;
    let programs = [("bench".to_string(), dir.join("bench"))];
    let initrd = initramfs(
        &kdir,
        &programs,
        &dir.join("tc-agent"),
        &[format!(
            "run bench /tests/bench actions {}",
            methods.join(" ")
        )],
    )?;
    if !boot(k, &kdir, &initrd, &["bench"])? {
        bail!("the VM benchmark failed; see the console log under target/vm/");
    }
    let log = fs::read_to_string(vm_dir().join(format!("console-{}.log", k.name)))?;
    let json = log
        .lines()
        .find_map(|l| l.split("TCVM-JSON ").nth(1))
        .context("the VM benchmark printed no results")?;
    Ok(serde_json::from_str(json.trim())?)
}

#[cfg(test)]
mod tests {
    use super::{kernel_report, printk_message};

    #[test]
    fn kernel_lines_are_found_also_after_a_tests_unfinished_line() {
        assert_eq!(
            printk_message("[  354.441652] Kernel panic - not syncing"),
            Some("Kernel panic - not syncing")
        );
        assert_eq!(
            printk_message("test a ... [   12.5] int3: 0000 [#1] PREEMPT SMP"),
            Some("int3: 0000 [#1] PREEMPT SMP")
        );
        assert_eq!(printk_message("ratios [1.0, 0.9]"), None);
        assert_eq!(printk_message("WARNING: the kernel enforces"), None);
    }

    #[test]
    fn the_report_starts_at_the_first_kernel_oops_line() {
        let console = "WARNING: the kernel enforces v1\n\
                       test x ... [  12.000001] int3: 0000 [#1] PREEMPT SMP\n\
                       [  12.000002] RIP: 0010:tc_ingress\n";
        let report = kernel_report(console).expect("an oops");
        assert_eq!(report.len(), 2);
        assert!(report[0].contains("int3"));
        assert_eq!(kernel_report("WARNING: only a test's line\n"), None);
    }
}
