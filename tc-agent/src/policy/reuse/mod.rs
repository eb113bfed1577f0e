//! Reading a policy file again after an edit of a few channels: the
//! channels whose item text is unchanged are taken from the last reading,
//! and only the others are parsed and checked, with the whole policy then
//! held to every bound and rule that spans channels.
//!
//! Reading the benchmark's 1,024-channel, 2.9 MB file takes about 100 ms,
//! most of a one-channel change's time; an operator pushing back on one
//! channel of a large policy should not wait for the other 1,023.
//!
//! The result is the one [`Policy::parse`] gives, or this falls back to
//! it. Why an item's channel can be taken from another reading:
//!
//! - the file is cut by its lines (`chunks`), and the text before and
//!   after the items (the `endpoints` the channels name, and any other
//!   key) must be the last reading's, byte for byte, and an item is taken
//!   only for the text it was read from (compared byte for byte with the
//!   last text's item at its place, or else by cryptographic digests);
//! - every item taken from a reading, and every new one, was parsed on its
//!   own (`channels:` and the item) and read as exactly one complete item:
//!   it neither starts nor leaves open a string, a `[...]` or a `{...}`,
//!   so in the file it reads the same, whatever items surround it;
//! - a channel's checks depend only on its own item and the endpoint sets;
//!   what spans channels is checked again on the whole: the number of
//!   channels, unique names, the prefix and port bounds (`fits`, from each
//!   channel's `Footprint`), the parser's event bound ([`MAX_EVENTS`]:
//!   each item's events are counted), and shadowing (its address half,
//!   the `Candidates`, kept with the memo while the channels name the
//!   same addresses in the same places).
//!
//! Anything else (a file this cannot cut, an error, a warning, a changed
//! endpoint set, more than a `NEW_SHARE`th of the items new) reads the
//! whole file, which reports every diagnostic with its line, and starts
//! the next reuse from it. The memo of a whole reading is built on a
//! thread at the lowest priority, once the apply is done (`builder`); a
//! reading that comes before it is there (back-to-back applies, a
//! CPU-bound node) is whole too.

mod builder;
mod memo;

use std::{
    collections::HashSet,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use parking_lot::Mutex;
use tracing::debug;

use self::{
    builder::Job,
    memo::{digest, item_events, Candidates, Item, Known, Memo, NextMemo, Pending},
};
use super::{
    chunks::{self, span, Cut},
    diagnostic::PolicyError,
    model::{Channel, Policy},
    shadow,
    validate::{self, bounded_distinct, over_limits, Footprint},
    yaml::{self, MAX_EVENTS},
};

/// Only the new items are read when they are at most one in this many
/// of the file's (a quarter): each is parsed twice (alone, and among the
/// endpoint sets), so past about a third of the file reading it whole is
/// as fast.
const NEW_SHARE: usize = 4;

/// Readings of one policy file after another, each reusing the channels
/// of the last one it can. Shared by the applies of one agent (they run
/// one at a time).
pub struct Reuse {
    /// The last reading's channels by item, when it could be cut.
    memo: Arc<Mutex<Option<Memo>>>,
    /// Readings started, so that a memo built for an older reading stops,
    /// and does not replace a newer one's.
    readings: Arc<AtomicU64>,
    /// Readings that reused channels of an earlier one (the rest were
    /// whole), for the apply's log.
    reused: AtomicU64,
    /// The last whole reading and its number, until [`Reuse::remember`]
    /// builds its memo.
    pending: Mutex<Option<(Pending, u64)>>,
    /// The memo builder's queue, once [`Reuse::remember`] has started it.
    builder: Mutex<Option<std::sync::mpsc::Sender<Job>>>,
    /// [`NEW_SHARE`]; tests lift it, to reuse whatever they can.
    #[cfg(test)]
    new_share: usize,
    /// Items digested by readings that used a memo, for tests of the
    /// comparison in place.
    #[cfg(test)]
    digested: AtomicU64,
}

impl Default for Reuse {
    fn default() -> Self {
        Self {
            memo: Arc::default(),
            readings: Arc::default(),
            reused: AtomicU64::new(0),
            pending: Mutex::new(None),
            builder: Mutex::new(None),
            #[cfg(test)]
            new_share: NEW_SHARE,
            #[cfg(test)]
            digested: AtomicU64::new(0),
        }
    }
}

impl Reuse {
    /// Reads and validates `text` as [`Policy::parse`] does, reusing the
    /// channels of the last reading whose item text is unchanged.
    pub fn parse(&self, text: String, file: &str) -> Result<Policy, PolicyError> {
        let reading = self.readings.fetch_add(1, Ordering::SeqCst) + 1;
        let text = match self.reuse(text) {
            Ok(policy) => {
                self.reused.fetch_add(1, Ordering::Relaxed);
                return Ok(policy);
            }
            Err(text) => text,
        };
        let r = validate::read(&text, file)?;
        if r.policy.warnings.is_empty() {
            let pending = Pending {
                text,
                channels: r.policy.channels.clone(),
                endpoints: r.policy.endpoints.clone(),
                footprints: r.footprints,
                events: r.events,
            };
            *self.pending.lock() = Some((pending, reading));
        }
        Ok(r.policy)
    }

    /// Readings so far that reused channels of an earlier one.
    pub fn reused(&self) -> u64 {
        self.reused.load(Ordering::Relaxed)
    }

    /// The largest share of new items worth reading alone.
    fn new_share(&self) -> usize {
        #[cfg(test)]
        return self.new_share;
        #[cfg(not(test))]
        NEW_SHARE
    }

    /// The policy from the memo and the items new to it, or the text back
    /// when it must be read whole. The memo keeps the text.
    fn reuse(&self, text: String) -> Result<Policy, String> {
        // The memo's thread holds the lock only to put a memo in place;
        // at the lowest priority it may wait for a CPU while it does, and
        // the apply does not wait for it.
        let Some(mut slot) = self.memo.try_lock() else {
            return Err(text);
        };
        let Some((policy, next)) = slot.as_ref().and_then(|m| self.reread(&text, m)) else {
            return Err(text);
        };
        let next = next.with_text(text);
        let old = slot.replace(next);
        drop(slot);
        // Outside the lock, as the memo's thread does.
        drop(old);
        Ok(policy)
    }

    /// `text` read with `memo`: the policy, and the next memo but for its
    /// text.
    fn reread(&self, text: &str, memo: &Memo) -> Option<(Policy, NextMemo)> {
        if text.len() > yaml::MAX_FILE_BYTES {
            return None;
        }
        let cut = chunks::cut(text)?;
        if cut.indent != memo.indent
            || cut.head != &memo.text[memo.head.clone()]
            || cut.tail != &memo.text[memo.tail.clone()]
        {
            return None;
        }
        // Each item is compared first with the last reading's item at its
        // place, counted from where the item before it was found (an item
        // added or removed shifts those after it), and digested only when
        // that is not it.
        let mut new = Vec::new();
        let mut found: Vec<Option<usize>> = Vec::with_capacity(cut.items.len());
        let mut digests = Vec::with_capacity(cut.items.len());
        let mut shift = 0isize;
        for (i, item) in cut.items.iter().enumerate() {
            let there = i.checked_add_signed(shift);
            if let Some(j) = there.filter(|&j| memo.item_text(j) == Some(item)) {
                found.push(Some(j));
                digests.push(memo.items[j].digest);
                continue;
            }
            let d = digest(item);
            #[cfg(test)]
            self.digested.fetch_add(1, Ordering::Relaxed);
            digests.push(d);
            match memo.by_digest.get(&d) {
                Some(&j) => {
                    found.push(Some(j));
                    shift = j as isize - i as isize;
                }
                None => {
                    found.push(None);
                    new.push(i);
                    // Too many to gain from: given up at once (a whole new
                    // policy costs one pass over a share of its items).
                    if new.len() * self.new_share() > cut.items.len() {
                        return None;
                    }
                }
            }
        }
        let mut fresh = read_new(&cut, &new)?.into_iter();
        let known = found
            .iter()
            .map(|j| match j {
                Some(j) => Some(memo.items[*j].known.clone()),
                None => fresh.next(),
            })
            .collect::<Option<Vec<Known>>>()?;
        let mut kept = vec![false; memo.items.len()];
        for j in found.iter().flatten() {
            kept[*j] = true;
        }
        let removed: usize = memo
            .items
            .iter()
            .zip(&kept)
            .filter(|(_, kept)| !**kept)
            .map(|(it, _)| it.known.events)
            .sum();
        let added: usize = new.iter().map(|&i| known[i].events).sum();
        let events = memo.events.checked_sub(removed)?.checked_add(added)?;
        if events > MAX_EVENTS {
            return None;
        }
        let channels: Vec<Channel> = known.iter().map(|k| Channel::clone(&k.channel)).collect();
        let candidates = match &memo.candidates {
            c if c.fit(&channels) => c.clone(),
            _ => Candidates::of(&channels),
        };
        if !holds_together(&known, &channels, &candidates) {
            return None;
        }
        debug!(
            items = cut.items.len(),
            new = new.len(),
            "policy read reusing unchanged channels"
        );
        let policy = Policy {
            channels,
            endpoints: memo.endpoints.clone(),
            warnings: Vec::new(),
        };
        let items = cut
            .items
            .iter()
            .zip(digests)
            .zip(known)
            .map(|((item, digest), known)| Item {
                span: span(text, item),
                digest,
                known,
            })
            .collect();
        let next = NextMemo {
            head: span(text, cut.head),
            tail: span(text, cut.tail),
            indent: memo.indent,
            endpoints: memo.endpoints.clone(),
            items,
            events,
            candidates,
        };
        Some((policy, next))
    }

    /// Hands the last whole reading to the memo builder (one short parse
    /// per item, on a thread at the lowest priority): called once the
    /// caller is done with the CPU (the agent: once the apply is done), so
    /// that it does not slow the apply it read the file for. A newer
    /// reading stops it.
    pub fn remember(&self) {
        let Some(job) = self.pending.lock().take() else {
            return;
        };
        self.send(Job::Build(job.0, job.1));
    }

    /// Sends `job` to the builder, starting it (again, if it is gone).
    fn send(&self, job: Job) {
        let mut builder = self.builder.lock();
        let job = match builder.as_ref() {
            Some(tx) => match tx.send(job) {
                Ok(()) => return,
                Err(e) => e.0,
            },
            None => job,
        };
        match builder::spawn(self.memo.clone(), self.readings.clone()) {
            Ok(tx) => {
                // A new thread's queue takes it.
                let _ = tx.send(job);
                *builder = Some(tx);
            }
            Err(e) => {
                debug!(error = %e, "no thread for the policy memo; readings are whole")
            }
        }
    }

    /// A reuse that reads only the new items however many there are, so
    /// that tests reach it with small files.
    #[cfg(test)]
    pub(crate) fn eager() -> Self {
        Self {
            new_share: 1,
            ..Self::default()
        }
    }

    /// Builds the memo of the last whole reading and waits for it.
    #[cfg(test)]
    pub(crate) fn settle(&self) {
        self.remember();
        let (tx, rx) = std::sync::mpsc::channel();
        self.send(Job::Sync(tx));
        rx.recv().expect("the memo's thread answers");
    }
}

/// The new items' channels, in order: each read alone (see
/// [`item_events`]), then all of them among the file's head and tail, as
/// [`Policy::parse`] would read a file of only them.
fn read_new(cut: &Cut<'_>, new: &[usize]) -> Option<Vec<Known>> {
    if new.is_empty() {
        return Some(Vec::new());
    }
    let events = new
        .iter()
        .map(|&i| item_events(cut.items[i]))
        .collect::<Option<Vec<usize>>>()?;
    let mut text = String::from(cut.head);
    for &i in new {
        text.push_str(cut.items[i]);
    }
    text.push_str(cut.tail);
    let r = validate::read(&text, "").ok()?;
    if !r.policy.warnings.is_empty() || r.policy.channels.len() != new.len() {
        return None;
    }
    Some(
        r.policy
            .channels
            .into_iter()
            .zip(r.footprints)
            .zip(events)
            .map(|((channel, footprint), events)| Known {
                channel: Arc::new(channel),
                footprint,
                events,
            })
            .collect(),
    )
}

/// Whether channels each valid alone make a valid policy without
/// warnings: what validation checks across channels. `channels` are
/// `known`'s, and `candidates` theirs.
fn holds_together(known: &[Known], channels: &[Channel], candidates: &Candidates) -> bool {
    if known.len() > tc_common::MAX_CHANNELS as usize {
        return false;
    }
    let mut names = HashSet::with_capacity(known.len());
    if !known.iter().all(|k| names.insert(k.channel.name.as_str())) {
        return false;
    }
    let footprints: Vec<Footprint> = known.iter().map(|k| k.footprint).collect();
    if !over_limits(&footprints, distinct(known)).is_empty() {
        return false;
    }
    shadow::shadowed_among(channels, &candidates.sets).is_empty()
}

/// Distinct prefixes per side and family, over the sides the file names,
/// as `fits` counts them (a channel's prefixes are its sets' and its
/// own), where the bound needs them (`validate::bounded_distinct`).
fn distinct(known: &[Known]) -> [[usize; 2]; 2] {
    std::array::from_fn(|side| {
        let copies = std::array::from_fn(|family| {
            known.iter().map(|k| k.footprint.copies[side][family]).sum()
        });
        bounded_distinct(copies, || {
            known
                .iter()
                .filter(|k| k.footprint.named[side])
                .flat_map(move |k| {
                    if side == 0 {
                        k.channel.from.iter()
                    } else {
                        k.channel.to.iter()
                    }
                })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A policy of `n` channels with endpoint sets, in the plain layout.
    fn policy(n: usize) -> String {
        let mut t = String::from("endpoints:\n  web: [198.18.1.0/24, \"2001:db8:1::/64\"]\n  db: [198.18.2.10/32]\nchannels:\n");
        for i in 0..n {
            t.push_str(&format!(
                "  # channel {i}\n  - name: c{i}\n    from: [198.18.{}.{}/32, web]\n    to: db\n    protocol: tcp\n    ports: [{}]\n    limit: {{bandwidth: {}Mbit}}\n",
                10 + i / 256,
                i % 256,
                1000 + i,
                1 + i
            ));
        }
        t
    }

    /// Reads `text` with `reuse` and whole; both must agree. Returns
    /// whether `reuse` reused channels.
    fn agree(reuse: &Reuse, text: &str) -> bool {
        let before = reuse.reused();
        let got = reuse.parse(text.to_string(), "p.yaml");
        let want = Policy::parse(text, "p.yaml");
        match (&got, &want) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "{text}"),
            (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "{text}"),
            _ => panic!("reuse {got:?}, whole {want:?}\n{text}"),
        }
        reuse.settle();
        reuse.reused() > before
    }

    #[test]
    fn a_port_edit_that_shadows_a_channel_is_found_with_the_kept_candidates() {
        let reuse = Reuse::default();
        // `twin` names c0's addresses: c0 is its only candidate, and it
        // stays one while no address changes.
        let base = format!(
            "{}  - name: twin\n    from: [198.18.10.0/32, web]\n    to: db\n    protocol: tcp\n    ports: [2000]\n",
            policy(40)
        );
        assert!(!agree(&reuse, &base), "the first reading is whole");
        let wider = base.replace("ports: [2000]", "ports: [1000, 2000]");
        assert!(agree(&reuse, &wider), "not covered by c0: reused");
        let covered = wider.replace("ports: [1000, 2000]", "ports: [1000]");
        let whole = Policy::parse(&covered, "p.yaml").unwrap();
        assert_eq!(whole.warnings.len(), 1, "{:?}", whole.warnings);
        assert!(!agree(&reuse, &covered), "c0 shadows it: read whole");
    }

    #[test]
    fn edits_of_a_few_channels_reuse_the_others_and_read_as_the_whole_file() {
        let reuse = Reuse::default();
        let base = policy(40);
        assert!(!agree(&reuse, &base), "the first reading is whole");
        // One channel's port, then its limit: reused.
        let port = base.replace("ports: [1007]", "ports: [7007]");
        assert!(agree(&reuse, &port));
        let limit = port.replace("bandwidth: 8Mbit", "bandwidth: 9Mbit");
        assert!(agree(&reuse, &limit));
        // The same text again, a channel removed, one added, two swapped.
        assert!(agree(&reuse, &limit));
        let removed = limit.replace(
            "  - name: c3\n    from: [198.18.10.3/32, web]\n    to: db\n    protocol: tcp\n    ports: [1003]\n    limit: {bandwidth: 4Mbit}\n",
            "",
        );
        assert!(agree(&reuse, &removed));
        let added =
            format!("{removed}  - name: late\n    from: 198.18.9.9\n    limit: {{packets: 100}}\n");
        assert!(agree(&reuse, &added));
        let swapped = added
            .replace("name: c1\n", "name: tmp\n")
            .replace("name: c2\n", "name: c1\n")
            .replace("name: tmp\n", "name: c2\n");
        assert!(agree(&reuse, &swapped));
        // One added second (taking c0's comment line after it, so c0's
        // item changes too): every item after them is one place later
        // than it was, found by its digest once and then at its place.
        let early = swapped.replace(
            "  # channel 1\n",
            "  - name: early\n    from: 198.18.9.8\n    limit: {packets: 10}\n  # channel 1\n",
        );
        let digested = reuse.digested.load(Ordering::Relaxed);
        assert!(agree(&reuse, &early));
        assert_eq!(
            reuse.digested.load(Ordering::Relaxed) - digested,
            3,
            "c0, early, and c1 one place later"
        );
        // An item that spans lines reads alone, and is reused.
        let spans = swapped.replace(
            "from: [198.18.10.5/32, web]",
            "from: [198.18.10.5/32,\n      web]",
        );
        assert!(agree(&reuse, &spans));
    }

    #[test]
    fn edits_that_break_a_rule_across_channels_are_read_whole() {
        let reuse = Reuse::default();
        let base = policy(40);
        agree(&reuse, &base);
        // A duplicate name, a channel that an earlier one shadows: the
        // whole reading's error and warning, with their lines.
        assert!(!agree(&reuse, &base.replace("name: c7\n", "name: c6\n")));
        let shadowed = base.replace("ports: [1009]", "ports: [1008]").replace(
            "198.18.10.9/32, web]\n    to: db\n    protocol: tcp\n    ports: [1008]",
            "198.18.10.8/32, web]\n    to: db\n    protocol: tcp\n    ports: [1008]",
        );
        let p = Policy::parse(&shadowed, "p.yaml").unwrap();
        assert_eq!(p.warnings.len(), 1, "{:?}", p.warnings);
        assert!(!agree(&reuse, &shadowed));
        // An item that leaves a list open into the next one.
        assert!(!agree(
            &reuse,
            &base.replace("from: [198.18.10.4/32, web]", "from: [198.18.10.4/32, web")
        ));
        // A changed endpoint set: every channel is read again.
        assert!(!agree(
            &reuse,
            &base.replace("db: [198.18.2.10/32]", "db: [198.18.2.11/32]")
        ));
        // A list that runs on at column 0 (the parser allows it): the cut
        // ends the items there, the item before reads alone as an open
        // list, and no memo is built from the file: edits of it are whole.
        let open = base.replace(
            "from: [198.18.10.4/32, web]",
            "from: [198.18.10.4/32,\nweb]",
        );
        Policy::parse(&open, "p.yaml").expect("valid");
        assert!(!agree(&reuse, &open));
        assert!(!agree(
            &reuse,
            &open.replace("ports: [1001]", "ports: [2001]")
        ));
        // After a whole reading the next edit reuses again.
        agree(&reuse, &base);
        assert!(agree(
            &reuse,
            &base.replace("ports: [1001]", "ports: [2001]")
        ));
    }

    #[test]
    fn an_edit_past_the_prefix_bound_is_refused_as_the_whole_file_is() {
        // 1,024 channels of 64 distinct IPv4 and 64 IPv6 sources (the
        // benchmark's shape): every source prefix of each family a side
        // may hold, 131,072 copies in all, which the reading does not
        // count. One more IPv4 prefix in one channel is one too many.
        let mut t = String::from("channels:\n");
        for i in 0..1024u32 {
            t.push_str(&format!(
                "  - name: c{i}\n    ports: [{}]\n    protocol: udp\n    from: [",
                1000 + i
            ));
            for j in 0..64u32 {
                let n = i * 64 + j;
                t.push_str(&format!(
                    "198.{}.{}.{}/32,\"2001:db8::{n:x}/128\",",
                    18 + (n >> 16),
                    (n >> 8) & 0xff,
                    n & 0xff
                ));
            }
            t.push_str("]\n");
        }
        let reuse = Reuse::default();
        agree(&reuse, &t);
        assert!(agree(&reuse, &t.replace("ports: [1005]", "ports: [9005]")));
        let over = t.replace(
            "ports: [1005]\n    protocol: udp\n    from: [",
            "ports: [1005]\n    protocol: udp\n    from: [198.19.255.1/32,",
        );
        let e = Policy::parse(&over, "p.yaml").unwrap_err().to_string();
        assert!(e.contains("65537 distinct source IPv4 prefixes"), "{e}");
        assert!(!agree(&reuse, &over));
    }
}
