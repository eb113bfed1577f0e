//! Loading the object's programs into the kernel, several at a time.
//!
//! Most of an agent's start is the verifier: on a 6.18 host `tc_ingress`
//! and `tc_egress` take about 0.6 s each and `xdp_ingress` 0.3 s, one after
//! the other 1.6 s of a 2.2 s start. A privileged loader's programs are
//! verified in parallel (the kernel takes `bpf_verifier_lock` only for
//! unprivileged ones), so they load on up to [`loaders`] threads: all but
//! one of the node's CPUs, so that a restart never takes every CPU from the
//! node's own work (on a 2-CPU guest under emulation, a flood's sender
//! stalled for seconds while both loaded). On two CPUs that is one thread,
//! as before.
//!
//! An agent with no XDP hook (no `--xdp`) leaves the XDP programs out
//! ([`Programs::Tc`]): `xdp_ingress` and `xdp_account` are about a quarter
//! of the verifier's time, spent for programs nothing would run.

use aya::{
    programs::{Program, ProgramError},
    Ebpf,
};

use super::{
    DatapathError, TC_ACCOUNT_EGRESS, TC_ACCOUNT_INGRESS, TC_EGRESS, TC_INGRESS, TC_PASS,
    XDP_ACCOUNT, XDP_INGRESS, XDP_PASS,
};

/// The two kinds of program the object holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A tc classifier (`SchedClassifier`).
    Tc,
    /// An XDP program.
    Xdp,
}

/// Every program the agent loads, with the kind the hooks attach it as:
/// the hooks' programs (the largest first), their pass-through stand-ins
/// and the accounting programs they tail-call.
const PROGRAMS: [(&str, Kind); 8] = [
    (TC_INGRESS, Kind::Tc),
    (TC_EGRESS, Kind::Tc),
    (XDP_INGRESS, Kind::Xdp),
    (TC_PASS, Kind::Tc),
    (XDP_PASS, Kind::Xdp),
    (TC_ACCOUNT_INGRESS, Kind::Tc),
    (TC_ACCOUNT_EGRESS, Kind::Tc),
    (XDP_ACCOUNT, Kind::Xdp),
];

/// Which of the object's programs a datapath loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Programs {
    /// Every program: the tc and the XDP hooks', their stand-ins and
    /// accounting programs.
    All,
    /// The tc programs alone, for an agent with no XDP hook: its XDP
    /// programs stay unloaded, and an XDP hook cannot be attached.
    Tc,
}

/// Loads (and so verifies) the programs of [`PROGRAMS`] that `which`
/// selects on [`loaders`] threads. The first failure in [`PROGRAMS`]'
/// order is the one reported; a program the object lacks (selected or
/// not) is an error before any is loaded.
pub(super) fn load_all(ebpf: &mut Ebpf, which: Programs) -> Result<(), DatapathError> {
    load_on(ebpf, which, loaders())
}

/// [`load_all`] on `threads` threads.
fn load_on(ebpf: &mut Ebpf, which: Programs, threads: usize) -> Result<(), DatapathError> {
    let mut found: Vec<(&'static str, Kind, &mut Program)> = ebpf
        .programs_mut()
        .filter_map(|(name, prog)| {
            PROGRAMS
                .iter()
                .find(|(wanted, _)| *wanted == name)
                .map(|&(wanted, kind)| (wanted, kind, prog))
        })
        .collect();
    if let Some((missing, _)) = PROGRAMS
        .iter()
        .find(|(wanted, _)| !found.iter().any(|(name, _, _)| name == wanted))
    {
        return Err(DatapathError::Setup(format!(
            "program {missing} missing from object"
        )));
    }
    found.retain(|(_, kind, _)| which == Programs::All || *kind == Kind::Tc);
    found.sort_by_key(|(name, _, _)| PROGRAMS.iter().position(|(wanted, _)| wanted == name));
    if threads <= 1 {
        return found
            .into_iter()
            .try_for_each(|(name, kind, prog)| load_one(name, kind, prog));
    }
    // The largest programs first (PROGRAMS' order), each taken by the next
    // free thread.
    let queue = std::sync::Mutex::new(found.into_iter().enumerate().rev().collect::<Vec<_>>());
    let mut results: Vec<(usize, Result<(), DatapathError>)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let next = queue.lock().map(|mut q| q.pop()).unwrap_or(None);
                        let Some((i, (name, kind, prog))) = next else {
                            return done;
                        };
                        done.push((i, load_one(name, kind, prog)));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| {
                w.join().unwrap_or_else(|_| {
                    vec![(
                        usize::MAX,
                        Err(DatapathError::Setup(
                            "a thread loading the programs panicked".into(),
                        )),
                    )]
                })
            })
            .collect()
    });
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().try_for_each(|(_, r)| r)
}

/// Threads that load programs: every CPU this process may run on but one,
/// at least one, and no more than there are programs.
fn loaders() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get().saturating_sub(1))
        .clamp(1, PROGRAMS.len())
}

/// Loads one program, which must be of `kind` (as the hooks attach it).
fn load_one(name: &'static str, kind: Kind, prog: &mut Program) -> Result<(), DatapathError> {
    match (kind, prog) {
        (Kind::Tc, Program::SchedClassifier(p)) => p.load(),
        (Kind::Xdp, Program::Xdp(p)) => p.load(),
        _ => Err(ProgramError::UnexpectedProgramType),
    }
    .map_err(|source| DatapathError::Program { name, source })
}

#[cfg(test)]
mod tests {
    use aya::EbpfLoader;

    use super::*;
    use crate::datapath::EBPF_OBJECT;

    /// Loading on several threads (nodes of three CPUs or more) loads every
    /// program, as one thread does; this host kind has two CPUs, where
    /// agents load on one.
    #[test]
    fn every_program_loads_on_several_threads() {
        for threads in [3, 1] {
            let mut ebpf = EbpfLoader::new().load(EBPF_OBJECT).expect("object loads");
            load_on(&mut ebpf, Programs::All, threads).expect("programs pass the verifier");
            for (name, _) in PROGRAMS {
                let fd = match ebpf.program(name).expect("in the object") {
                    Program::SchedClassifier(p) => p.fd().is_ok(),
                    Program::Xdp(p) => p.fd().is_ok(),
                    _ => false,
                };
                assert!(fd, "{name} loaded on {threads} thread(s)");
            }
        }
    }

    /// The tc programs alone: every tc program loaded, no XDP one.
    #[test]
    fn tc_alone_leaves_the_xdp_programs_unloaded() {
        let mut ebpf = EbpfLoader::new().load(EBPF_OBJECT).expect("object loads");
        load_on(&mut ebpf, Programs::Tc, 1).expect("programs pass the verifier");
        for (name, kind) in PROGRAMS {
            let loaded = match ebpf.program(name).expect("in the object") {
                Program::SchedClassifier(p) => p.fd().is_ok(),
                Program::Xdp(p) => p.fd().is_ok(),
                _ => false,
            };
            assert_eq!(loaded, kind == Kind::Tc, "{name}");
        }
    }
}
