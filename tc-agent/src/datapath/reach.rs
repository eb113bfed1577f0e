//! Which channels each probed prefix length of a table can add
//! ([`tc_common::GenInfo::reach`]), so that the datapath skips the lengths
//! that cannot change a packet's channel.
//!
//! Each entry of a table holds the merged set of its prefix: the channels
//! naming it or any prefix containing it. Along the prefixes that contain
//! an address, shortest to longest, those sets grow; a length adds the
//! channels of its entries' sets that their longest containing entry
//! (their parent) does not hold. When the channels still possible (what
//! the other tables left) include none that a length adds, its hit holds,
//! of those channels, exactly what the next shorter hit holds: the probe
//! is skipped, and the first hit among the lengths kept is, of the
//! channels possible, the longest match. No hit at all means none of them
//! names a prefix containing the address, as for the longest match.
//!
//! The sets must be exact, not merely wide enough: besides the skipping,
//! the datapath answers an address table of the zero-length prefix alone
//! with its length's reach, which is that entry's whole set (it has no
//! parent), without a lookup (`classify::zero_length` in `tc-ebpf`).

use tc_common::{
    ChannelSet, Probes, CHANNEL_WORDS, MAX_PROBES, TABLES, TABLE_DST_V6, TABLE_SRC_V6,
};

use super::prefixes::{entries_of, in_trie};
use crate::policy::{compile::Compiled, cover::mask};

/// Per table and probed length, the channels that length adds (empty for
/// tables in their trie).
pub fn reach(c: &Compiled, probes: &[Probes; TABLES]) -> [[ChannelSet; MAX_PROBES]; TABLES] {
    std::array::from_fn(|t| table_reach(c, t as u8, &probes[t]))
}

/// What each probed length of table `t` of `c` adds, the table placed as
/// `probes` says.
pub fn table_reach(c: &Compiled, t: u8, probes: &Probes) -> [ChannelSet; MAX_PROBES] {
    let mut out = [ChannelSet::EMPTY; MAX_PROBES];
    if in_trie(probes) {
        return out;
    }
    let lens = &probes.lens[..probes.count as usize];
    let bits: u8 = if t == TABLE_SRC_V6 || t == TABLE_DST_V6 {
        128
    } else {
        32
    };
    // Sorted by (masked prefix, length), each prefix comes right after the
    // ones containing it: a stack of the current chain finds each parent.
    let mut entries: Vec<(u128, u8, &ChannelSet)> = entries_of(c, t)
        .map(|(len, raw, set)| {
            let v = raw.iter().fold(0u128, |v, &b| v << 8 | u128::from(b));
            (mask(v, len, bits), len, set)
        })
        .collect();
    entries.sort_unstable_by_key(|&(v, len, _)| (v, len));
    let mut chain: Vec<(u128, u8, &ChannelSet)> = Vec::new();
    for &(v, len, set) in &entries {
        while let Some(&(pv, plen, _)) = chain.last() {
            if plen < len && mask(v, plen, bits) == pv {
                break;
            }
            chain.pop();
        }
        // Every entry's length is probed (the plan lists them all).
        let Some(i) = lens.iter().position(|&l| l == len) else {
            continue;
        };
        let parent = chain.last().map(|&(_, _, s)| s);
        for w in 0..CHANNEL_WORDS {
            out[i].words[w] |= set.words[w] & !parent.map_or(0, |p| p.words[w]);
        }
        chain.push((v, len, set));
    }
    out
}

#[cfg(test)]
mod tests {
    use tc_common::TABLE_SRC_V4;

    use super::*;
    use crate::{
        datapath::prefixes::plan,
        policy::{compile::compile, Policy},
    };

    /// A small deterministic generator (xorshift).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// The longest match of `addr` among `entries`, probed longest first
    /// over `lens`, skipping the lengths whose reach misses `acc`, as the
    /// datapath does; `skip` false probes every length.
    fn probe(
        entries: &[(u128, u8, ChannelSet)],
        lens: &[u8],
        reach: &[ChannelSet; MAX_PROBES],
        addr: u128,
        acc: &ChannelSet,
        skip: bool,
    ) -> ChannelSet {
        for (i, &len) in lens.iter().enumerate() {
            if skip && (0..CHANNEL_WORDS).all(|w| reach[i].words[w] & acc.words[w] == 0) {
                SKIPPED.with(|n| n.set(n.get() + 1));
                continue;
            }
            let key = mask(addr, len, 32);
            if let Some(e) = entries.iter().find(|e| e.1 == len && e.0 == key) {
                return e.2;
            }
        }
        ChannelSet::EMPTY
    }

    thread_local! {
        /// Probes skipped, so the test can tell it exercised skipping.
        static SKIPPED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    fn and(a: &ChannelSet, b: &ChannelSet) -> ChannelSet {
        let mut out = *a;
        for w in 0..CHANNEL_WORDS {
            out.words[w] &= b.words[w];
        }
        out
    }

    /// Nested prefixes over few lengths, channels naming several of them:
    /// for random addresses and random sets of possible channels, the
    /// probes that skip by reach find what probing every length finds.
    #[test]
    fn skipping_unreached_lengths_keeps_the_longest_match() {
        let mut rng = Rng(0x5eed_1234_abcd_0001);
        let base = 198u128 << 24 | 18 << 16;
        let mut tried = 0;
        for round in 0..40 {
            let mut text = String::from("channels:\n");
            let channels = 5 + rng.below(180); // up to three words
            for i in 0..channels {
                let from: Vec<String> = (0..1 + rng.below(3))
                    .map(|_| {
                        let len = [15u8, 16, 24, 32][rng.below(4) as usize];
                        let a = mask(base + u128::from(rng.below(1 << 17)), len, 32);
                        format!("{}/{len}", std::net::Ipv4Addr::from(a as u32))
                    })
                    .collect();
                text.push_str(&format!(
                    "  - name: c{i}\n    protocol: udp\n    from: [{}]\n    to: [198.19.0.0/16]\n    limit: {{packets: 10}}\n",
                    from.join(", ")
                ));
            }
            let policy = Policy::parse(&text, "reach.yaml").expect("valid policy");
            let c = compile(&policy).expect("compiles");
            let probes = plan(&c);
            let p = &probes[TABLE_SRC_V4 as usize];
            if in_trie(p) {
                continue;
            }
            tried += 1;
            let r = reach(&c, &probes);
            let lens = &p.lens[..p.count as usize];
            let entries: Vec<(u128, u8, ChannelSet)> = c
                .src_v4
                .iter()
                .map(|e| (u128::from(u32::from_be_bytes(e.addr)), e.len, *c.set(e.set)))
                .collect();
            for _ in 0..2000 {
                let addr = base + u128::from(rng.below(1 << 17));
                // The channels the other tables left: a few (one port's),
                // or every third of them.
                let mut acc = ChannelSet::EMPTY;
                if rng.below(2) == 0 {
                    for _ in 0..1 + rng.below(4) {
                        acc.insert(rng.below(channels) as usize);
                    }
                } else {
                    for ch in 0..channels as usize {
                        if rng.below(3) == 0 {
                            acc.insert(ch);
                        }
                    }
                }
                let want = and(&probe(&entries, lens, &r[0], addr, &acc, false), &acc);
                let got = and(&probe(&entries, lens, &r[0], addr, &acc, true), &acc);
                assert_eq!(got, want, "round {round}, address {addr:x}");
            }
        }
        assert!(tried >= 20, "only {tried} policies went to the hash maps");
        let skipped = SKIPPED.with(|n| n.get());
        assert!(skipped > 10_000, "only {skipped} probes skipped");
    }
}
