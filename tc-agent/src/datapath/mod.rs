//! The eBPF side as the agent sees it: load the embedded object, pin its
//! maps, write policies into them atomically and read the counters back.

pub mod accounting;
pub mod attach;
mod batch;
mod bpf_call;
pub mod conn;
pub mod digest;
mod elem;
mod flow_filter;
mod fresh;
pub mod held;
pub mod interactions;
pub mod prefixes;
mod programs;
mod prune;
pub mod qdisc;
pub mod reach;
mod rtnl;
pub mod steps;
mod sync;
pub mod sys;

use std::{
    borrow::Cow,
    path::{Path, PathBuf},
};

use aya::{
    maps::{Array, HashMap, LpmTrie, MapData, MapError, PerCpuArray},
    programs::ProgramError,
    Ebpf, EbpfLoader,
};
use tc_common::{
    BucketState, ChannelCounters, ChannelPolicy, ChannelSet, Config, FlowKey4, FlowKey6, GenInfo,
    GlobalCounters, BUCKETS, CHANNEL_SLOTS, CONFIG, COUNTERS, FLAG_NO_DST_MEMO, FLAG_NO_FLOW_CACHE,
    FLOWS4, FLOWS6, GENS, GLOBAL, MAP_NAMES, MAX_CHANNELS, POLICIES, TABLE_DST_V4, TABLE_DST_V6,
    TABLE_L4, TABLE_SRC_V4, TABLE_SRC_V6,
};

use self::batch::batch_err;
pub use self::programs::Programs;
use crate::policy::compile::Compiled;

/// The datapath object, built by `build.rs` from `tc-ebpf`.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("TC_EBPF_OBJ"));

/// Layout version of the pinned maps. Bump it whenever a shared type in
/// `tc-common` changes, or a pinned map's size or meaning, so a new agent
/// never reuses maps of another layout.
pub const MAPS_LAYOUT: &str = "maps-v13";

/// tc programs in the object.
pub const TC_INGRESS: &str = "tc_ingress";
pub const TC_EGRESS: &str = "tc_egress";
pub const TC_PASS: &str = "tc_pass";
/// XDP programs in the object.
pub const XDP_INGRESS: &str = "xdp_ingress";
pub const XDP_PASS: &str = "xdp_pass";
/// The accounting programs the hooks tail-call (see `datapath::interactions`).
pub const TC_ACCOUNT_INGRESS: &str = "tc_account_ingress";
pub const TC_ACCOUNT_EGRESS: &str = "tc_account_egress";
pub const XDP_ACCOUNT: &str = "xdp_account";

/// Sizes of the tables the agent sizes when they are created (pinned ones
/// keep theirs).
#[derive(Debug, Clone, Copy)]
pub struct TableSizes {
    /// Entries of the connection table (`--conn-table-size`).
    pub conns: u32,
    /// Entries of the interaction table (`--interaction-table-size`).
    pub interactions: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("the kernel refused the eBPF object: {0}\n  (tc-agent needs Linux 5.18+ with BPF atomics, bpf_xdp_load_bytes, BTF and CAP_BPF/CAP_NET_ADMIN)")]
    Load(#[from] aya::EbpfError),
    #[error("eBPF program `{name}`: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("eBPF map `{name}`: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("{0}")]
    Setup(String),
}

fn map_err(name: &'static str) -> impl FnOnce(MapError) -> DatapathError {
    move |source| DatapathError::Map { name, source }
}

/// Summed counters of one channel slot.
pub type Counters = ChannelCounters;

/// The loaded object and its maps.
pub struct Datapath {
    /// Programs and maps; the programs stay loaded while this lives.
    pub ebpf: Ebpf,
    /// Where the maps are pinned, if they are (`None` in unit-style tests).
    pub pin_dir: Option<PathBuf>,
    /// The programs loaded: whether the XDP hook and its accounting exist.
    programs: Programs,
    /// What each generation's tables hold, so a write into one writes only
    /// what differs (see [`held`]). Unknown until this agent writes or
    /// reads a generation.
    gens: [held::Generation; 2],
    /// The node's `flow_inserts` when the flow cache's filter was last
    /// aged, or when this agent first looked (see [`flow_filter`]).
    flow_bits_since: Option<u64>,
}

/// Runs `v4` on this thread and `v6` on a second one, named `name`, at
/// once: the IPv4 and the IPv6 tables share no map, and a large policy's
/// write (or prune) is mostly the kernel's time per entry. Without a
/// second thread (the system has none to give), `v6` runs after `v4`.
fn both_families<R4, R6: Send>(
    name: &str,
    v4: impl FnOnce() -> Result<R4, DatapathError>,
    v6: impl FnOnce() -> Result<R6, DatapathError> + Send + Copy,
) -> (Result<R4, DatapathError>, Result<R6, DatapathError>) {
    let (r4, r6) = crate::families::both(name, v4, v6);
    let r6 = r6.unwrap_or_else(|_| {
        Err(DatapathError::Setup(format!(
            "internal error: the IPv6 tables' half ({name}) panicked"
        )))
    });
    (r4, r6)
}

impl Datapath {
    /// Loads the object and every program in it. With `pin_dir`, maps are
    /// pinned under `pin_dir/`[`MAPS_LAYOUT`] and reused if already there, so
    /// counters, buckets, connections and the live policy survive an agent
    /// restart. `conn_table_size` sizes the connection table when it is
    /// created (a pinned one keeps its size).
    pub fn load(pin_dir: Option<&Path>, conn_table_size: u32) -> Result<Self, DatapathError> {
        Self::load_sized(
            pin_dir,
            TableSizes {
                conns: conn_table_size,
                interactions: tc_common::DEFAULT_MAX_INTERACTIONS,
            },
        )
    }

    /// [`load`](Self::load) with every table size the agent sets.
    pub fn load_sized(pin_dir: Option<&Path>, sizes: TableSizes) -> Result<Self, DatapathError> {
        Self::load_with(pin_dir, sizes, Programs::All)
    }

    /// [`load_sized`](Self::load_sized), loading the programs `which`
    /// selects: an agent without XDP hooks leaves the XDP programs out.
    pub fn load_with(
        pin_dir: Option<&Path>,
        sizes: TableSizes,
        which: Programs,
    ) -> Result<Self, DatapathError> {
        let mut loader = EbpfLoader::new();
        loader.map_max_entries(tc_common::CONNS, sizes.conns);
        for name in [
            tc_common::IX,
            tc_common::IX_SLOTS,
            tc_common::IX_FREE,
            tc_common::IX_GEN,
        ] {
            loader.map_max_entries(name, sizes.interactions);
        }
        if let Some(dir) = pin_dir {
            remove_other_layouts(dir);
            let maps = dir.join(MAPS_LAYOUT);
            std::fs::create_dir_all(&maps).map_err(|e| {
                DatapathError::Setup(format!(
                    "cannot create pin directory {}: {e}",
                    maps.display()
                ))
            })?;
            for name in MAP_NAMES {
                loader.map_pin_path(name, Cow::Owned(maps.join(name)));
            }
        }
        let mut ebpf = loader.load(EBPF_OBJECT)?;
        programs::load_all(&mut ebpf, which)?;
        let mut dp = Self {
            ebpf,
            programs: which,
            pin_dir: pin_dir.map(Path::to_path_buf),
            gens: [held::Generation::unknown(), held::Generation::unknown()],
            flow_bits_since: None,
        };
        dp.init_slots()?;
        dp.install_accounting()?;
        if let Some(dir) = pin_dir {
            dp.pin_accounting(dir)?;
        }
        Ok(dp)
    }

    /// The programs this datapath loaded.
    pub fn programs(&self) -> Programs {
        self.programs
    }

    /// Map `name` of the object, as the typed map `M`.
    fn map<'a, M>(&'a mut self, name: &'static str) -> Result<M, DatapathError>
    where
        M: TryFrom<&'a mut aya::maps::Map, Error = MapError>,
    {
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or_else(|| DatapathError::Setup(format!("map {name} missing from object")))?;
        M::try_from(map).map_err(map_err(name))
    }

    /// The map `name`, once aya's typed view `T` of it has checked its
    /// type and its key and value sizes: for the calls aya 0.14 does not
    /// offer (`batch`, `elem`), which take its descriptor.
    fn checked_map<'a, T>(&'a self, name: &'static str) -> Result<&'a MapData, DatapathError>
    where
        T: TryFrom<&'a aya::maps::Map, Error = aya::maps::MapError>,
    {
        let map = self
            .ebpf
            .map(name)
            .ok_or_else(|| DatapathError::Setup(format!("map {name} missing from object")))?;
        T::try_from(map).map_err(map_err(name))?;
        match map {
            aya::maps::Map::HashMap(data)
            | aya::maps::Map::LpmTrie(data)
            | aya::maps::Map::Array(data)
            | aya::maps::Map::PerCpuArray(data) => Ok(data),
            _ => Err(DatapathError::Setup(format!(
                "map {name} is not a hash map, an LPM trie or an array"
            ))),
        }
    }

    fn array<T: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<Array<&mut MapData, T>, DatapathError> {
        self.map(name)
    }

    fn percpu<T: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<PerCpuArray<&mut MapData, T>, DatapathError> {
        self.map(name)
    }

    fn trie<K: aya::Pod>(
        &mut self,
        name: &'static str,
    ) -> Result<LpmTrie<&mut MapData, K, ChannelSet>, DatapathError> {
        self.map(name)
    }

    /// The datapath's node-wide settings (live generation).
    pub fn config(&mut self) -> Result<Config, DatapathError> {
        self.array::<Config>(CONFIG)?
            .get(&0, 0)
            .map_err(map_err(CONFIG))
    }

    /// Writes `compiled` under the inactive generation, then makes it live
    /// with one write of the generation index. If anything fails before that
    /// write, the live policy is untouched. `carry[i] = Some(old_slot)` copies
    /// the token-bucket state of an unchanged channel, so a re-apply does not
    /// hand out a fresh burst.
    ///
    /// Each table goes where [`prefixes::plan`] places it (its LPM trie or
    /// the prefix hash maps). Only what differs from what the inactive
    /// generation holds is written (stale entries removed, new and changed
    /// ones written) for each table that stays where it was; a table that
    /// moves is removed from the old place and written whole in the new
    /// (`sync`); a generation of unknown content is emptied first and
    /// written whole. Its `GenInfo` (words, where each table is, what each
    /// probed length reaches) is written before the switch.
    ///
    /// Returns the new live config: its generation, and its policy
    /// version, one more than the previous.
    pub fn apply(
        &mut self,
        compiled: &Compiled,
        carry: &[Option<u32>],
    ) -> Result<Config, DatapathError> {
        self.apply_tables(compiled, held::Tables::of(compiled), carry)
    }

    /// [`apply`](Self::apply) with the record of `compiled` already made
    /// (the agent makes it once for the write and the digest).
    pub fn apply_tables(
        &mut self,
        compiled: &Compiled,
        want: held::Tables,
        carry: &[Option<u32>],
    ) -> Result<Config, DatapathError> {
        let mut steps = steps::Steps::new("datapath apply");
        let live = self.config()?;
        let next = live.generation ^ 1;
        let g = next as u8;
        // Until the write below completes, the generation holds neither
        // its old content nor the new: unknown if anything fails.
        let prior = std::mem::replace(&mut self.gens[next as usize], held::Generation::unknown());
        let (held, known) = match prior.tables {
            Some(t) => (t, true),
            None => {
                // Its entries may be anywhere: every trie and hash map.
                self.purge_tables(next)?;
                (held::Tables::default(), false)
            }
        };
        steps.step("purge unknown");
        if prior.flows_dirty {
            self.purge_flows::<FlowKey4>(FLOWS4, g, |k| k.meta.generation)?;
            self.purge_flows::<FlowKey6>(FLOWS6, g, |k| k.meta.generation)?;
        }
        steps.step("purge flows");

        // Addresses and ports, each table in its trie or the prefix hash
        // maps (`prefixes`), only what differs where it stays (`sync`).
        // The IPv6 tables are written from a second thread while this one
        // writes the IPv4 ones: they share no map, and a large policy's
        // write is mostly the kernel's time per entry (on a 2-core machine,
        // a full apply of the benchmark's 131,072 address entries, with as
        // many stale ones removed: 162-272 ms one table after the other,
        // 140-154 ms in two threads).
        let to = want.probes;
        let (v4_src, v4_dst) = (
            self.table_maps::<[u8; 4]>(TABLE_SRC_V4)?,
            self.table_maps::<[u8; 4]>(TABLE_DST_V4)?,
        );
        let (v6_src, v6_dst) = (
            self.table_maps::<[u8; 16]>(TABLE_SRC_V6)?,
            self.table_maps::<[u8; 16]>(TABLE_DST_V6)?,
        );
        let probes = held.probes;
        let write_v6 = || {
            v6_src.sync_table(
                TABLE_SRC_V6,
                g,
                sync::Holds::known(known, &held.src_v6, probes[TABLE_SRC_V6 as usize]),
                &want.src_v6,
                to[TABLE_SRC_V6 as usize],
                compiled,
            )?;
            v6_dst.sync_table(
                TABLE_DST_V6,
                g,
                sync::Holds::known(known, &held.dst_v6, probes[TABLE_DST_V6 as usize]),
                &want.dst_v6,
                to[TABLE_DST_V6 as usize],
                compiled,
            )
        };
        let write_v4 = || {
            v4_src.sync_table(
                TABLE_SRC_V4,
                g,
                sync::Holds::known(known, &held.src_v4, probes[TABLE_SRC_V4 as usize]),
                &want.src_v4,
                to[TABLE_SRC_V4 as usize],
                compiled,
            )?;
            v4_dst.sync_table(
                TABLE_DST_V4,
                g,
                sync::Holds::known(known, &held.dst_v4, probes[TABLE_DST_V4 as usize]),
                &want.dst_v4,
                to[TABLE_DST_V4 as usize],
                compiled,
            )
        };
        let (r4, r6) = both_families("apply-ipv6", write_v4, write_v6);
        r4?;
        r6?;
        steps.step("write addresses");
        self.table_maps::<[u8; 4]>(TABLE_L4)?.sync_table(
            TABLE_L4,
            g,
            sync::Holds::known(known, &held.l4, probes[TABLE_L4 as usize]),
            &want.l4,
            to[TABLE_L4 as usize],
            compiled,
        )?;
        steps.step("write l4");
        let info = GenInfo {
            words: compiled.words,
            // Versions only grow, across agents, restarts and wipes
            // (`seed_version`); a wrapped 0 leaves the memo off for it.
            epoch: (live.version + 1) as u32,
            probes: want.probes,
            reach: want.reach,
        };
        let base = next * MAX_CHANNELS;
        let ncpus = aya::util::nr_cpus()
            .map_err(|(_, e)| DatapathError::Setup(format!("cannot count CPUs: {e}")))?;
        {
            // The carried buckets read from the live generation, and the
            // new policy's slots of the next one written, in batched calls
            // (Linux 5.6): one call per slot was 2,048 calls for the
            // buckets and 1,024 for the counters at 1,024 channels, about
            // 1.2 ms.
            let buckets = self.checked_map::<Array<&MapData, BucketState>>(BUCKETS)?;
            // The carried slots' span (all in the live generation).
            let (lo, hi) = carry
                .iter()
                .flatten()
                .fold((u32::MAX, 0), |(lo, hi), &o| (lo.min(o), hi.max(o + 1)));
            let mut old = Vec::new();
            if lo < hi {
                let plain = batch::Layout { ncpus: None };
                batch::lookup_range(buckets, lo, (hi - lo) as usize, plain, |_, b| old.push(b))
                    .map_err(batch_err(BUCKETS))?;
            }
            let state = |i: usize| match carry[i] {
                Some(o) => old[(o - lo) as usize],
                None => BucketState::default(),
            };
            batch::update_range(
                buckets,
                base,
                carry.len(),
                batch::Layout { ncpus: None },
                state,
            )
            .map_err(batch_err(BUCKETS))?;
        }
        steps.step("buckets");
        {
            let counters = self.checked_map::<PerCpuArray<&MapData, ChannelCounters>>(COUNTERS)?;
            let per_cpu = batch::Layout { ncpus: Some(ncpus) };
            batch::update_range(counters, base, compiled.policies.len(), per_cpu, |_| {
                ChannelCounters::default()
            })
            .map_err(batch_err(COUNTERS))?;
        }
        steps.step("counters");
        {
            if !known {
                // What the slots hold is not known: deactivate every active one.
                self.deactivate_policies(next)?;
            }
            let mut policies = self.array::<ChannelPolicy>(POLICIES)?;
            for i in 0..held.policies.len().max(want.policies.len()) {
                let new = want.policies.get(i).copied().unwrap_or_default();
                if known && held.policies.get(i).copied().unwrap_or_default() == new {
                    continue;
                }
                policies
                    .set(base + i as u32, new, 0)
                    .map_err(map_err(POLICIES))?;
            }
        }
        self.array::<GenInfo>(GENS)?
            .set(next, info, 0)
            .map_err(map_err(GENS))?;
        // The switch: of what the datapath reads, only the generation's low
        // byte changes, so even a byte-wise copy is atomic for every reader.
        let config = Config {
            generation: next,
            version: live.version + 1,
            ..live
        };
        self.array::<Config>(CONFIG)?
            .set(0, config, 0)
            .map_err(map_err(CONFIG))?;
        steps.step("policies and switch");
        steps.log();
        self.gens[next as usize] = held::Generation {
            tables: Some(want),
            flows_dirty: false,
        };
        // Packets classified under the old generation were cached under it.
        self.gens[live.generation as usize].flows_dirty = true;
        Ok(config)
    }

    /// Empties both generations of maps that hold no policy (version 0:
    /// new maps, or a wipe), so that both are known to be empty and the
    /// first applies write only what they add. Entries a failed apply left
    /// behind are removed here; nothing is live, so nothing is unenforced.
    pub fn reset_generations(&mut self) -> Result<(), DatapathError> {
        if self.config()?.version != 0 {
            return Err(DatapathError::Setup(
                "refusing to empty the generations of maps that hold a live policy".into(),
            ));
        }
        for generation in 0..2u32 {
            self.purge_tables(generation)?;
            self.deactivate_policies(generation)?;
            self.gens[generation as usize].tables = Some(held::Tables::default());
        }
        Ok(())
    }

    /// Deactivates every active policy slot of `generation`, read in
    /// batched calls (Linux 5.6, 256 KiB of values a call) where one call
    /// per slot made 1,024 for each generation at every agent's start on
    /// new maps.
    fn deactivate_policies(&mut self, generation: u32) -> Result<(), DatapathError> {
        let base = generation * MAX_CHANNELS;
        let mut active = Vec::new();
        let policies = self.checked_map::<Array<&MapData, ChannelPolicy>>(POLICIES)?;
        let plain = batch::Layout { ncpus: None };
        batch::lookup_range(
            policies,
            base,
            MAX_CHANNELS as usize,
            plain,
            |i, p: ChannelPolicy| {
                if p.active != 0 {
                    active.push(base + i as u32);
                }
            },
        )
        .map_err(batch_err(POLICIES))?;
        let mut policies = self.array::<ChannelPolicy>(POLICIES)?;
        for i in active {
            policies
                .set(i, ChannelPolicy::default(), 0)
                .map_err(map_err(POLICIES))?;
        }
        Ok(())
    }

    /// Records that generation `generation` holds `tables` (a new agent
    /// that read the live generation back from the kernel).
    /// A generation with entries outside the places its `GenInfo` names
    /// stays unknown: its next write empties it whole.
    pub fn adopt(&mut self, generation: u32, tables: held::Tables) {
        if tables.misplaced != 0 {
            tracing::warn!(
                generation,
                misplaced = tables.misplaced,
                "the generation holds entries where its tables are not: it is rewritten whole"
            );
            return;
        }
        self.gens[(generation & 1) as usize].tables = Some(tables);
    }

    /// Removes the flow-cache entries of the inactive generation if it may
    /// hold some, so the next apply need not walk the cache. Call it only
    /// once every program that may have read the old generation has
    /// finished (a grace period after the switch).
    pub fn tidy_standby(&mut self) -> Result<(), DatapathError> {
        let standby = self.config()?.generation ^ 1;
        if self.gens[standby as usize].flows_dirty {
            let g = standby as u8;
            self.purge_flows::<FlowKey4>(FLOWS4, g, |k| k.meta.generation)?;
            self.purge_flows::<FlowKey6>(FLOWS6, g, |k| k.meta.generation)?;
            self.gens[standby as usize].flows_dirty = false;
        }
        Ok(())
    }

    /// What this agent knows generation `generation`'s tables hold
    /// (`None`: not known). Only tests need it, to compare it with what
    /// the kernel holds ([`read_generation`](Self::read_generation)).
    #[doc(hidden)]
    pub fn known_tables(&self, generation: u32) -> Option<&held::Tables> {
        self.gens.get(generation as usize)?.tables.as_ref()
    }

    /// Makes the next apply's version follow `version` when the maps hold
    /// none yet (fresh maps after an upgrade or a wipe), so the version
    /// operators see keeps growing across them.
    pub fn seed_version(&mut self, version: u64) -> Result<(), DatapathError> {
        let mut config = self.config()?;
        if config.version == 0 {
            config.version = version;
            self.array::<Config>(CONFIG)?
                .set(0, config, 0)
                .map_err(map_err(CONFIG))?;
        }
        Ok(())
    }

    /// How many channels `generation` holds (its active policy slots).
    pub fn active_channels(&mut self, generation: u32) -> Result<usize, DatapathError> {
        let policies = self.array::<ChannelPolicy>(POLICIES)?;
        let base = generation * MAX_CHANNELS;
        let mut n = 0;
        while n < MAX_CHANNELS
            && policies
                .get(&(base + n), 0)
                .map_err(map_err(POLICIES))?
                .active
                != 0
        {
            n += 1;
        }
        Ok(n as usize)
    }

    /// The compiled policies of the first `count` channel slots of `generation`.
    pub fn policies(
        &mut self,
        generation: u32,
        count: usize,
    ) -> Result<Vec<ChannelPolicy>, DatapathError> {
        let policies = self.array::<ChannelPolicy>(POLICIES)?;
        let base = generation * MAX_CHANNELS;
        (0..count as u32)
            .map(|i| policies.get(&(base + i), 0).map_err(map_err(POLICIES)))
            .collect()
    }

    /// Counters of `count` channel slots of `generation`, summed over CPUs.
    pub fn channel_counters(
        &mut self,
        generation: u32,
        count: usize,
    ) -> Result<Vec<Counters>, DatapathError> {
        let ncpus = aya::util::nr_cpus()
            .map_err(|(_, e)| DatapathError::Setup(format!("cannot count CPUs: {e}")))?;
        let counters = self.checked_map::<PerCpuArray<&MapData, ChannelCounters>>(COUNTERS)?;
        // Batched (Linux 5.6), 256 KiB of per-CPU values a call (one call
        // for 1,024 channels on two possible CPUs), where one call per channel took
        // about 0.5 ms at 1,024 channels, at every sample.
        let mut totals = vec![Counters::default(); count];
        let per_cpu = batch::Layout { ncpus: Some(ncpus) };
        batch::lookup_range::<ChannelCounters>(
            counters,
            generation * MAX_CHANNELS,
            count,
            per_cpu,
            |i, c| totals[i].add(&c),
        )
        .map_err(batch_err(COUNTERS))?;
        Ok(totals)
    }

    /// Node-wide counters, summed over CPUs.
    pub fn global_counters(&mut self) -> Result<GlobalCounters, DatapathError> {
        let per_cpu = self
            .percpu::<GlobalCounters>(GLOBAL)?
            .get(&0, 0)
            .map_err(map_err(GLOBAL))?;
        Ok(per_cpu.iter().fold(GlobalCounters::default(), |mut a, c| {
            a.add(c);
            a
        }))
    }

    /// Removes the flow-cache entries of generation `g`.
    fn purge_flows<K: aya::Pod>(
        &mut self,
        name: &'static str,
        g: u8,
        generation: fn(&K) -> u8,
    ) -> Result<(), DatapathError> {
        let mut flows: HashMap<_, K, tc_common::FlowValue> = self.map(name)?;
        let stale: Vec<K> = flows
            .keys()
            .filter_map(Result::ok)
            .filter(|k| generation(k) == g)
            .collect();
        for k in stale {
            // An LRU entry may be evicted between listing and removal.
            let _ = flows.remove(&k);
        }
        Ok(())
    }

    /// Turns the flow cache on or off (benchmarks measure both paths).
    pub fn set_flow_cache(&mut self, enabled: bool) -> Result<(), DatapathError> {
        self.set_flag(FLAG_NO_FLOW_CACHE, !enabled)
    }

    /// Turns the per-CPU destination memo on or off (benchmarks measure
    /// the uncached path with and without it).
    pub fn set_dst_memo(&mut self, enabled: bool) -> Result<(), DatapathError> {
        self.set_flag(FLAG_NO_DST_MEMO, !enabled)
    }

    /// Sets or clears one of the config's `FLAG_*` bits.
    fn set_flag(&mut self, flag: u32, on: bool) -> Result<(), DatapathError> {
        let mut config = self.config()?;
        if on {
            config.flags |= flag;
        } else {
            config.flags &= !flag;
        }
        self.array::<Config>(CONFIG)?
            .set(0, config, 0)
            .map_err(map_err(CONFIG))
    }

    /// Slot index of channel `i` in `generation`.
    pub fn slot(generation: u32, i: usize) -> u32 {
        debug_assert!((generation * MAX_CHANNELS + i as u32) < CHANNEL_SLOTS);
        generation * MAX_CHANNELS + i as u32
    }

    /// Removes the maps pinned under `pin_dir` (any layout) and the
    /// accounting program arrays: the next agent starts from empty state.
    /// The kernel frees the maps once no program uses them, and empties the
    /// program arrays at once (call this once no hook of ours is left).
    pub fn unpin_all(pin_dir: &Path) {
        accounting::remove_all(pin_dir);
        let Ok(entries) = std::fs::read_dir(pin_dir) else {
            return;
        };
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with("maps-v") {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Removes maps pinned under `dir` by an agent of another layout (an
/// upgrade): no new program can use them, and their pins would keep them,
/// megabytes of kernel memory, alive for good. The programs still in the
/// hooks keep them until they are replaced; their accounting arrays are
/// pinned apart (see [`accounting`]), so they go on counting until then.
fn remove_other_layouts(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("maps-v") && name != MAPS_LAYOUT {
            let path = entry.path();
            match std::fs::remove_dir_all(&path) {
                Ok(()) => {
                    tracing::info!(path = %path.display(), "removed maps pinned by another layout")
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove maps pinned by another layout")
                }
            }
        }
    }
}
