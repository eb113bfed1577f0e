//! The daemon: owns the datapath, applies policies, samples counters and
//! serves the control socket until shutdown.

mod apply;
mod connections;
mod detect;
mod lifecycle;
mod lock;
mod observe;
mod report;
mod server;
mod snapshot;
mod state;
mod uninstall;

pub use self::{
    lifecycle::run,
    lock::{lock_dirs, DirLocks},
    server::SocketGroup,
    uninstall::{uninstall, UninstallReport},
};

use std::{
    collections::{HashMap, VecDeque},
    future::Future,
    os::unix::fs::PermissionsExt,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use parking_lot::{Mutex, RwLock};
use tokio::net::{UnixListener, UnixStream};
use tracing::{debug, error, info, warn};

use self::state::SavedState;
use crate::{
    control::{
        ApplyReport, ChannelRow, ChannelsReport, ConnRow, Features, HookRow, Rates, Request,
        Response, StateCheck, StatusReport, Totals,
    },
    datapath::{
        attach::{self, Hook, HookKind},
        conn::PoolCounts,
        held::AddressRecord,
        qdisc, sys, Datapath, Programs, TableSizes,
    },
    policy::{
        compile::{compile_reusing, Addresses},
        Action, Mode, Policy,
    },
};

/// Everything `tc-agent run` is told.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Interfaces to attach tc ingress and egress to.
    pub ifaces: Vec<String>,
    /// Interfaces whose ingress hook is XDP instead of tc (early drop for floods).
    pub xdp: Vec<String>,
    /// Policy to apply at start; without it the pinned live policy is kept.
    pub policy: Option<PathBuf>,
    /// bpffs directory for pinned maps and links.
    pub pin_dir: PathBuf,
    /// Directory for the socket, the lock and the saved state.
    pub state_dir: PathBuf,
    /// Control socket path.
    pub socket: PathBuf,
    /// Counter sampling period for rates and history.
    pub sample_every: Duration,
    /// Remove the datapath when stopping (tests, demos) instead of leaving
    /// it attached and enforcing.
    pub detach_on_exit: bool,
    /// Group whose members may run read-only requests (`status`,
    /// `channels`); None: root only.
    pub socket_group: Option<SocketGroup>,
    /// Entries of the connection table when it is created.
    pub conn_table_size: u32,
    /// Idle timeouts of tracked connections, per state.
    pub conn_timeouts: tc_common::ConnConfig,
    /// Entries of the interaction table when it is created.
    pub interaction_table_size: u32,
    /// Distinct unnamed addresses `map` shows at most; the quietest others
    /// fold into `other`.
    pub max_unnamed: usize,
    /// Where to serve Prometheus `/metrics` (`--metrics-addr`); None: not served.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Feed the detectors every sample; false only for the benchmark's
    /// baseline (`run --no-detect`, hidden).
    pub detect: bool,
}

/// Samples kept: two minutes at one per second.
const HISTORY: usize = 120;
/// Grace period after a generation switch before the old generation's
/// counters are read: programs that loaded the old generation finish well
/// within it (they run for microseconds).
const SWITCH_GRACE: Duration = Duration::from_millis(20);

/// One counter sample of the live generation.
struct Sample {
    /// When it was taken: rates divide by the time between two samples.
    at: Instant,
    /// Totals per channel name.
    totals: HashMap<String, Totals>,
    /// Connection counters per channel name (channels with connection limits).
    conns: HashMap<String, PoolCounts>,
}

/// A generation switch whose old generation's counters are not yet in
/// `carried`.
struct PendingFold {
    /// When the switch was made: the fold waits [`SWITCH_GRACE`] after it.
    at: Instant,
    /// The old generation.
    generation: u32,
    /// Slot and name of each old channel the new policy still has.
    kept: Vec<(usize, String)>,
    /// The policy before the switch, freed with the fold rather than
    /// before the apply answers (with the samples below, about a
    /// millisecond to free at 1,024 channels).
    retired_policy: Arc<Policy>,
    /// The samples of its channels (their per-name totals).
    retired_samples: VecDeque<Sample>,
}

/// The agent's mutable state, behind one lock.
struct Agent {
    /// What `run` was told: interfaces, directories, socket.
    config: AgentConfig,
    /// The loaded programs and the pinned maps: the only way to the kernel.
    dp: Datapath,
    /// The hooks this agent attached or took over; left attached on stop.
    hooks: Vec<Hook>,
    /// The live policy (its channels are the live generation's slots, in
    /// order), shared with the observer for `suggest`.
    policy: Arc<Policy>,
    /// Where it came from, for `status`.
    policy_file: Option<String>,
    /// The live generation slot (0 or 1): where the live policy's tables,
    /// buckets and counters are.
    generation: u32,
    /// Policy version of the live generation (only grows; 0: none ever).
    version: u64,
    /// Digest of the live generation's tables, saved with the state so a
    /// restarted agent can tell whether the kernel still holds them.
    digest: u64,
    /// The live policy's compiled address tables and their share of the
    /// live generation's record, for the next apply to reuse when its
    /// channels name the same addresses (a compile and a record of
    /// 131,072 prefixes, most of a one-channel change, skipped). `None`
    /// until this agent's first apply, and after an apply that failed
    /// (taken by its compile): the next apply then builds both.
    addresses: Option<(Addresses, AddressRecord)>,
    /// Whether the saved state matched the kernel at start.
    state_check: StateCheck,
    /// Channels the live generation holds in the kernel, named or not.
    live_slots: usize,
    /// Set under the lock when the agent stops: a request that was waiting
    /// for the lock must not change the kernel after the directory locks
    /// are released (another agent may hold them by then).
    closing: bool,
    /// Counters of earlier generations, by channel name, so totals survive re-applies.
    carried: HashMap<String, Totals>,
    /// The last switch's old generation, whose counters are folded into
    /// `carried` once the grace period has passed (see [`Agent::settle`]):
    /// an apply answers without waiting for it.
    pending: Option<PendingFold>,
    /// Whether the old generation of the last folded switch is still to
    /// be pruned (`Datapath::prune_standby`): done in the background after
    /// the fold's save, skipped when an apply comes first (its write
    /// removes what it must).
    prune_due: bool,
    /// Recent samples, newest last, for rates.
    history: VecDeque<Sample>,
    /// Interfaces where the agent installed fq for `delay`; `uninstall`
    /// restores their default qdisc.
    fq_installed: Vec<String>,
    /// When the agent started, for `status`'s uptime.
    started: Instant,
    /// Connection pools: who holds which, and the collector's state.
    pools: connections::Pools,
    /// Entries the connection table holds (as created).
    conn_table_size: u32,
    /// Interactions, top talkers and history, shared with the server
    /// (which reads them without the agent lock).
    observer: Arc<Mutex<crate::observe::Observer>>,
    /// Interaction slots found neither in use nor free at the last look
    /// (see `observe`): reclaimed when the next look agrees.
    ix_stray: Vec<u32>,
    /// When the once-a-minute jobs (forgetting idle history, reclaiming
    /// stray slots) last ran, unix seconds.
    minute_jobs_at: u64,
    /// The live policy's channel sides for detection (`observe`): made
    /// again only when the policy changes, not every sample.
    channel_sides: observe::SidesCache,
    /// What the kernel offers, found once at start: looking for fq may
    /// read all of /proc/kallsyms (30-40 ms, where fq is built in or
    /// missing), which every apply's status snapshot paid before answering
    /// the client.
    features: Features,
}

impl Agent {
    fn state_file(&self) -> PathBuf {
        self.config.state_dir.join("state.json")
    }

    fn save(&self) {
        let s = state::SavedStateRef {
            generation: self.generation,
            version: self.version,
            digest: self.digest,
            hooks: self.saved_hooks(),
            policy: &self.policy,
            policy_file: &self.policy_file,
            carried: &self.carried,
            fq_installed: &self.fq_installed,
        };
        if let Err(e) = s.save(&self.state_file()) {
            warn!(error = %e, "cannot save agent state; counters of earlier generations will reset on restart");
        }
    }

    /// Totals per channel of the live policy: carried + live slots (+ the
    /// old generation's, while its fold is pending).
    fn totals(&mut self) -> Result<Vec<Totals>> {
        let live = self
            .dp
            .channel_counters(self.generation, self.policy.channels.len())?;
        let pending = match &self.pending {
            Some(p) => pending_counters(&mut self.dp, p.generation, &p.kept)?,
            None => HashMap::new(),
        };
        Ok(self
            .policy
            .channels
            .iter()
            .zip(live)
            .map(|(c, l)| {
                let mut t = self.carried.get(&c.name).copied().unwrap_or_default();
                t.add(&l);
                if let Some(p) = pending.get(c.name.as_str()) {
                    t.add(p);
                }
                t
            })
            .collect())
    }

    /// Completes the last switch, saves the state and gives the memory
    /// freed back to the kernel (see [`fold`](Self::fold)).
    fn settle(&mut self) {
        if self.fold() {
            self.save();
            // The old policy the fold freed and the state's text the save
            // did (after the apply's answer when the fold runs in the
            // background, on the path of a sample or an apply that comes
            // first).
            release_freed_memory();
        }
    }

    /// [`settle`](Self::settle), then the old generation's prune if it is
    /// due, unless the agent is stopping (its directory locks may be
    /// released by then, and another agent's state must not be
    /// overwritten).
    fn settle_in_background(&mut self) {
        if self.closing {
            return;
        }
        self.settle();
        if std::mem::take(&mut self.prune_due) {
            let t0 = Instant::now();
            match self.dp.prune_standby() {
                Ok(removed) => debug!(
                    removed,
                    took_ms = t0.elapsed().as_secs_f64() * 1e3,
                    "pruned the old generation to the entries the live one holds"
                ),
                Err(e) => warn!(
                    error = %e,
                    "pruning the old generation failed; the next apply empties it by walking every table, then writes it whole"
                ),
            }
        }
    }

    /// Completes the last switch, if one is pending: once the grace period
    /// has passed (it waits out what is left of it), folds the old
    /// generation's counters into `carried`, removes its flow-cache
    /// entries so the next apply need not walk the cache, and makes its
    /// prune due (see [`settle_in_background`](Self::settle_in_background)).
    /// Whether it did: `carried` changed, and the state is to be saved
    /// before anything writes into the old generation.
    fn fold(&mut self) -> bool {
        let Some(p) = self.pending.take() else {
            return false;
        };
        if let Some(left) = SWITCH_GRACE.checked_sub(p.at.elapsed()) {
            std::thread::sleep(left);
        }
        match pending_counters(&mut self.dp, p.generation, &p.kept) {
            Ok(old) => {
                for (name, c) in old {
                    self.carried.entry(name.to_string()).or_default().add(&c);
                }
            }
            Err(e) => {
                warn!(error = %e, "reading the previous policy's counters failed; its totals restart")
            }
        }
        if let Err(e) = self.dp.tidy_standby() {
            warn!(error = %e, "removing the old generation's flow-cache entries failed; the next apply removes them");
        }
        self.prune_due = true;
        // The old policy's last reference (unless a report still holds
        // it), and the samples of its channels.
        drop((p.retired_policy, p.retired_samples));
        true
    }
}

/// Counters of the old generation's `kept` channels, by name.
fn pending_counters<'a>(
    dp: &mut Datapath,
    generation: u32,
    kept: &'a [(usize, String)],
) -> Result<HashMap<&'a str, crate::datapath::Counters>> {
    let n = kept.iter().map(|(i, _)| i + 1).max().unwrap_or(0);
    let counters = dp.channel_counters(generation, n)?;
    Ok(kept
        .iter()
        .map(|(i, name)| (name.as_str(), counters[*i]))
        .collect())
}

/// Hands the heap memory an apply freed (parse tree, compiled tables,
/// the policy it replaced: tens of megabytes for a 1,024-channel policy)
/// back to the kernel: glibc keeps freed memory of its arenas otherwise,
/// and the agent's resident size would stay at its peak.
fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}
