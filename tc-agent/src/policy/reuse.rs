//! Reading a policy file again after an edit of a few channels: the
//! channels whose text is unchanged are taken from the last reading, and
//! only the others are parsed and checked, with the whole policy then held
//! to every bound and rule that spans channels.
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
//!   key) must be the same as the last reading's, byte for byte;
//! - every item taken from a reading, and every new one, was parsed on its
//!   own (`channels:` and the item) and read as exactly one complete item:
//!   it neither starts nor leaves open a string, a `[...]` or a `{...}`,
//!   so in the file it reads the same, whatever items surround it;
//! - a channel's checks depend only on its own item and the endpoint sets;
//!   what spans channels is checked again on the whole: the number of
//!   channels, unique names, the prefix and port bounds (`fits`, from each
//!   channel's [`Footprint`]), the parser's event bound ([`MAX_EVENTS`]:
//!   each item's events are counted), and shadowing.
//!
//! Anything else (a file this cannot cut, an error, a warning, more new
//! items than [`MAX_NEW`] allows) reads the whole file, which reports
//! every diagnostic with its line, and starts the next reuse from it.

use std::{
    collections::{HashMap, HashSet},
    hash::{BuildHasher, RandomState},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use ipnet::IpNet;
use parking_lot::Mutex;
use tracing::debug;

use super::{
    chunks::{self, Cut},
    diagnostic::PolicyError,
    model::{Channel, Policy},
    shadow,
    validate::{self, over_limits, Footprint, Reading},
    yaml::{self, Lines, MAX_EVENTS},
    MAX_PREFIXES,
};

/// New items, as a share of the file's, up to which only they are read:
/// each is parsed twice (alone, and among the endpoint sets), so past
/// about a third of the file reading it whole is as fast.
const MAX_NEW: usize = 4;

/// Readings of one policy file after another, each reusing the channels
/// of the last one it can. Shared by the applies of one agent (they run
/// one at a time); the memo of a whole reading is built on a thread of
/// its own, off the apply's path.
pub struct Reuse {
    /// The last reading's channels by item, when it could be cut.
    memo: Arc<Mutex<Option<Memo>>>,
    /// Readings started, so that a memo built in the background for an
    /// older reading does not replace a newer one's.
    readings: Arc<AtomicU64>,
    /// Readings that reused channels (the rest were read whole).
    reused: AtomicU64,
    /// The last whole reading, until [`Reuse::remember`] builds its memo.
    pending: Mutex<Option<Pending>>,
    /// The memo being built, for tests to wait on.
    building: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// [`MAX_NEW`]; tests lift it, to reuse whatever they can.
    max_new: usize,
}

impl Default for Reuse {
    fn default() -> Self {
        Self {
            memo: Arc::default(),
            readings: Arc::default(),
            reused: AtomicU64::new(0),
            pending: Mutex::new(None),
            building: Mutex::new(None),
            max_new: MAX_NEW,
        }
    }
}

/// What a reading left for the next one.
struct Memo {
    /// Keys of the digests below (random: no text can be made to collide).
    keys: [RandomState; 2],
    /// Digest of the text before the items.
    head: u128,
    /// Digest of the text after them.
    tail: u128,
    /// Column of the items' `-`.
    indent: usize,
    /// The endpoint sets, as the head and tail define them.
    endpoints: Vec<(String, Vec<IpNet>)>,
    /// Each item's channel, by the digest of its text.
    items: HashMap<u128, Known>,
    /// Parser events of the whole file.
    events: usize,
}

/// A whole reading whose memo is still to be built.
struct Pending {
    /// The file's text.
    text: String,
    /// Its channels, one per item.
    channels: Vec<Channel>,
    /// Its endpoint sets.
    endpoints: Vec<(String, Vec<IpNet>)>,
    /// Each channel's footprint.
    footprints: Vec<Footprint>,
    /// The file's parser events.
    events: usize,
    /// Which reading it was (`Reuse::readings`).
    reading: u64,
}

/// One item of the last reading.
#[derive(Clone)]
struct Known {
    /// Its channel, as validation made it.
    channel: Channel,
    /// What it adds to the policy's counts.
    footprint: Footprint,
    /// Parser events of the item.
    events: usize,
}

impl Memo {
    fn digest(&self, text: &str) -> u128 {
        digest(&self.keys, text)
    }
}

fn digest(keys: &[RandomState; 2], text: &str) -> u128 {
    u128::from(keys[0].hash_one(text)) << 64 | u128::from(keys[1].hash_one(text))
}

impl Reuse {
    /// Reads and validates `text` as [`Policy::parse`] does, reusing the
    /// channels of the last reading whose item text is unchanged.
    pub fn parse(&self, text: &str, file: &str) -> Result<Policy, PolicyError> {
        let reading = self.readings.fetch_add(1, Ordering::SeqCst) + 1;
        if let Some(policy) = self.reuse(text) {
            self.reused.fetch_add(1, Ordering::Relaxed);
            return Ok(policy);
        }
        let r = validate::read(text, file)?;
        if r.policy.warnings.is_empty() {
            self.keep(text, &r, reading);
        }
        Ok(r.policy)
    }

    /// The policy from the memo and the items new to it, or `None` when
    /// the file must be read whole.
    fn reuse(&self, text: &str) -> Option<Policy> {
        let mut slot = self.memo.lock();
        let memo = slot.as_ref()?;
        if text.len() > yaml::MAX_FILE_BYTES {
            return None;
        }
        let cut = chunks::cut(text)?;
        if cut.indent != memo.indent
            || memo.digest(cut.head) != memo.head
            || memo.digest(cut.tail) != memo.tail
        {
            return None;
        }
        let mut digests = Vec::with_capacity(cut.items.len());
        let mut new = Vec::new();
        for (i, item) in cut.items.iter().enumerate() {
            let d = memo.digest(item);
            if !memo.items.contains_key(&d) {
                new.push(i);
                // Too many to gain from: given up at once (a whole new
                // policy costs one pass over a share of its items).
                if new.len() * self.max_new > cut.items.len() {
                    return None;
                }
            }
            digests.push(d);
        }
        let fresh = read_new(&cut, &new)?;
        let mut known: Vec<Known> = Vec::with_capacity(cut.items.len());
        let mut fresh = fresh.into_iter();
        for d in &digests {
            match memo.items.get(d) {
                Some(k) => known.push(k.clone()),
                None => known.push(fresh.next()?),
            }
        }
        let in_file: HashSet<u128> = digests.iter().copied().collect();
        let removed: usize = memo
            .items
            .iter()
            .filter(|(d, _)| !in_file.contains(d))
            .map(|(_, k)| k.events)
            .sum();
        let added: usize = new.iter().map(|&i| known[i].events).sum();
        let events = (memo.events - removed).checked_add(added)?;
        if events > MAX_EVENTS || !holds_together(&known) {
            return None;
        }
        let policy = Policy {
            channels: known.iter().map(|k| k.channel.clone()).collect(),
            endpoints: memo.endpoints.clone(),
            warnings: Vec::new(),
        };
        let next = Memo {
            keys: memo.keys.clone(),
            head: memo.head,
            tail: memo.tail,
            indent: memo.indent,
            endpoints: memo.endpoints.clone(),
            items: digests.into_iter().zip(known).collect(),
            events,
        };
        debug!(
            items = cut.items.len(),
            new = new.len(),
            "policy read reusing unchanged channels"
        );
        *slot = Some(next);
        Some(policy)
    }

    /// Keeps what the memo of a whole reading needs, for [`Reuse::remember`].
    fn keep(&self, text: &str, r: &Reading, reading: u64) {
        *self.pending.lock() = Some(Pending {
            text: text.to_string(),
            channels: r.policy.channels.clone(),
            endpoints: r.policy.endpoints.clone(),
            footprints: r.footprints.clone(),
            events: r.events,
            reading,
        });
    }

    /// Builds the memo of the last whole reading (one short parse per
    /// item) on a thread of its own, at idle priority: called once the
    /// caller is done with the CPU (the agent: once the apply has
    /// answered), so that it never slows the apply it read the file for.
    /// Until the memo is there, readings are whole.
    pub fn remember(&self) {
        let Some(p) = self.pending.lock().take() else {
            return;
        };
        let (memo, readings) = (self.memo.clone(), self.readings.clone());
        let built = std::thread::Builder::new()
            .name("policy-memo".into())
            .spawn(move || {
                idle_priority();
                let m = build(&p.text, p.channels, p.endpoints, p.footprints, p.events);
                let mut slot = memo.lock();
                // A newer reading has started: its memo (or its own
                // reuse of the current one) is the one to keep.
                if readings.load(Ordering::SeqCst) == p.reading {
                    *slot = m;
                }
            });
        match built {
            Ok(handle) => *self.building.lock() = Some(handle),
            Err(e) => {
                debug!(error = %e, "no thread for the policy memo; the next reading is whole")
            }
        }
    }

    /// Readings so far that reused channels of an earlier one.
    pub fn reused(&self) -> u64 {
        self.reused.load(Ordering::Relaxed)
    }

    /// A reuse that reads only the new items however many there are, so
    /// that tests reach it with small files.
    #[cfg(test)]
    pub(crate) fn eager() -> Self {
        Self {
            max_new: 1,
            ..Self::default()
        }
    }

    /// Builds the memo of the last whole reading and waits for it.
    #[cfg(test)]
    pub(crate) fn settle(&self) {
        self.remember();
        if let Some(h) = self.building.lock().take() {
            h.join().expect("the memo's thread");
        }
    }
}

/// Puts the calling thread in the idle scheduling class (`SCHED_IDLE`,
/// Linux 2.6.23): it runs only on a CPU nothing else wants, so building a
/// memo never slows the apply that is writing the same policy into the
/// datapath, nor anything else the node runs. Failing that, it runs as it is.
fn idle_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: changes only this thread's scheduling class (pid 0 is the
    // calling thread); `param` is a valid struct for the call.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if rc != 0 {
        debug!(error = %std::io::Error::last_os_error(), "the policy memo's thread keeps its priority");
    }
}

/// The memo of a whole reading, if every item of its cut reads alone as
/// one complete item and the cut has one item per channel.
fn build(
    text: &str,
    channels: Vec<Channel>,
    endpoints: Vec<(String, Vec<IpNet>)>,
    footprints: Vec<Footprint>,
    events: usize,
) -> Option<Memo> {
    let cut = chunks::cut(text)?;
    if cut.items.len() != channels.len() || footprints.len() != channels.len() {
        return None;
    }
    // The head reads alone: it leaves nothing open for the items.
    yaml::parse_counted(cut.head, Lines::MapsOnly).ok()?;
    let keys = [RandomState::new(), RandomState::new()];
    let mut items = HashMap::with_capacity(cut.items.len());
    for ((item, channel), footprint) in cut.items.iter().zip(channels).zip(footprints) {
        let events = item_events(item)?;
        let known = Known {
            channel,
            footprint,
            events,
        };
        // Two equal items would be two channels of one name: no valid
        // file has them.
        if items.insert(digest(&keys, item), known).is_some() {
            return None;
        }
    }
    Some(Memo {
        head: digest(&keys, cut.head),
        tail: digest(&keys, cut.tail),
        keys,
        indent: cut.indent,
        endpoints,
        items,
        events,
    })
}

/// Parser events of an item that reads alone as exactly one complete
/// item of `channels`, or `None`.
fn item_events(item: &str) -> Option<usize> {
    /// Events of the frame around the item (`channels:` and the list).
    static FRAME: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let frame = *FRAME.get_or_init(|| {
        yaml::parse_counted("channels: []\n", Lines::MapsOnly).map_or(usize::MAX, |(_, n)| n)
    });
    let (root, events) =
        yaml::parse_counted(&format!("channels:\n{item}"), Lines::MapsOnly).ok()?;
    let yaml::Value::Map(entries) = root?.value else {
        return None;
    };
    match &entries[..] {
        [e] if e.key == "channels"
            && matches!(&e.value.value, yaml::Value::List(l) if l.len() == 1) =>
        {
            events.checked_sub(frame)
        }
        _ => None,
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
                channel,
                footprint,
                events,
            })
            .collect(),
    )
}

/// Whether channels each valid alone make a valid policy without
/// warnings: what validation checks across channels.
fn holds_together(known: &[Known]) -> bool {
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
    let channels: Vec<Channel> = known.iter().map(|k| k.channel.clone()).collect();
    shadow::shadowed(&channels).is_empty()
}

/// Distinct prefixes per side and family, over the sides the file names
/// (as `fits` counts them: a channel's prefixes are its sets' and its
/// own). A side whose copies cannot exceed [`MAX_PREFIXES`] is not
/// counted: its copies bound its distinct prefixes.
fn distinct(known: &[Known]) -> [[usize; 2]; 2] {
    std::array::from_fn(|side| {
        let copies: usize = known.iter().map(|k| k.footprint.copies[side]).sum();
        if copies <= MAX_PREFIXES {
            return [copies; 2];
        }
        let mut by_family: [Vec<&IpNet>; 2] = Default::default();
        for k in known.iter().filter(|k| k.footprint.named[side]) {
            let nets = if side == 0 {
                &k.channel.from
            } else {
                &k.channel.to
            };
            for n in nets.iter() {
                by_family[usize::from(matches!(n, IpNet::V6(_)))].push(n);
            }
        }
        by_family.map(|mut d| {
            d.sort_unstable();
            d.dedup();
            d.len()
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
        let got = reuse.parse(text, "p.yaml");
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
        // After a whole reading the next edit reuses again.
        agree(&reuse, &base);
        assert!(agree(
            &reuse,
            &base.replace("ports: [1001]", "ports: [2001]")
        ));
    }

    #[test]
    fn an_edit_past_the_prefix_bound_is_refused_as_the_whole_file_is() {
        // 1,024 channels of 64 distinct sources: every IPv4 source prefix
        // a side may hold. One more in one channel is one too many.
        let mut t = String::from("channels:\n");
        for i in 0..1024u32 {
            t.push_str(&format!(
                "  - name: c{i}\n    ports: [{}]\n    protocol: udp\n    from: [",
                1000 + i
            ));
            for j in 0..64u32 {
                let n = i * 64 + j;
                t.push_str(&format!(
                    "198.{}.{}.{}/32,",
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
