//! Loading the object's programs into the kernel, side by side.
//!
//! Almost all of an agent's start is the verifier: on a 6.18 host
//! `tc_ingress` and `tc_egress` take about 0.6 s each and `xdp_ingress`
//! 0.3 s, one after the other 1.6 s of a 2.2 s start. A privileged
//! loader's programs are verified in parallel (the kernel takes
//! `bpf_verifier_lock` only for unprivileged ones), so each program loads on
//! a thread of its own and the start takes about as long as the slowest
//! program where there are cores for them. That is also the time a node's
//! restarted agent takes before it serves its socket (the old programs keep
//! enforcing meanwhile).

use aya::{programs::Program, Ebpf};

use super::{
    DatapathError, TC_ACCOUNT_EGRESS, TC_ACCOUNT_INGRESS, TC_EGRESS, TC_INGRESS, TC_PASS,
    XDP_ACCOUNT, XDP_INGRESS, XDP_PASS,
};

/// Every program the agent loads: the hooks' programs, their pass-through
/// stand-ins and the accounting programs they tail-call.
const PROGRAMS: [&str; 8] = [
    TC_INGRESS,
    TC_EGRESS,
    XDP_INGRESS,
    TC_PASS,
    XDP_PASS,
    TC_ACCOUNT_INGRESS,
    TC_ACCOUNT_EGRESS,
    XDP_ACCOUNT,
];

/// Loads (and so verifies) every program of [`PROGRAMS`], each on a thread
/// of its own. The first failure in [`PROGRAMS`]' order is the one reported;
/// a program the object lacks is an error before any is loaded.
pub(super) fn load_all(ebpf: &mut Ebpf) -> Result<(), DatapathError> {
    let mut found: Vec<(&'static str, &mut Program)> = ebpf
        .programs_mut()
        .filter_map(|(name, prog)| {
            PROGRAMS
                .iter()
                .find(|wanted| **wanted == name)
                .map(|wanted| (*wanted, prog))
        })
        .collect();
    if let Some(missing) = PROGRAMS
        .iter()
        .find(|wanted| !found.iter().any(|(name, _)| name == *wanted))
    {
        return Err(DatapathError::Setup(format!(
            "program {missing} missing from object"
        )));
    }
    found.sort_by_key(|(name, _)| PROGRAMS.iter().position(|wanted| wanted == name));
    std::thread::scope(|scope| {
        let runs: Vec<_> = found
            .into_iter()
            .map(|(name, prog)| (name, scope.spawn(move || load_one(name, prog))))
            .collect();
        // Join every thread before returning, the first error aside.
        let results: Vec<_> = runs
            .into_iter()
            .map(|(name, run)| {
                run.join().unwrap_or_else(|_| {
                    Err(DatapathError::Setup(format!(
                        "the thread loading program {name} panicked"
                    )))
                })
            })
            .collect();
        results.into_iter().collect()
    })
}

/// Loads one program, whichever of the two kinds the object made it.
fn load_one(name: &'static str, prog: &mut Program) -> Result<(), DatapathError> {
    match prog {
        Program::SchedClassifier(p) => p.load(),
        Program::Xdp(p) => p.load(),
        _ => {
            return Err(DatapathError::Setup(format!(
                "program {name} is neither a tc classifier nor an XDP program"
            )))
        }
    }
    .map_err(|source| DatapathError::Program { name, source })
}
