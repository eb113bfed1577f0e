//! What a reading leaves for the next one: each channel item, known by a
//! digest of its text, with its validated channel; and how the memo of a
//! whole reading is built.

use std::collections::HashMap;

use ipnet::IpNet;
use tc_common::ChannelSet;

use super::super::{
    chunks,
    model::{Channel, Sides},
    shadow,
    validate::Footprint,
    yaml::{self, Lines},
};

/// A text's BLAKE3 digest: a cryptographic hash, so that two texts that
/// differ are never taken for each other (32 bytes kept per item, not the
/// item's text: the 2.9 MB of a 1,024-channel file stay out of the
/// agent's memory at rest).
pub(super) fn digest(text: &str) -> blake3::Hash {
    blake3::hash(text.as_bytes())
}

/// What a reading left for the next one.
pub(super) struct Memo {
    /// Digest of the text before the items.
    pub head: blake3::Hash,
    /// Digest of the text after them.
    pub tail: blake3::Hash,
    /// Column of the items' `-`.
    pub indent: usize,
    /// The endpoint sets, as the head and tail define them.
    pub endpoints: Vec<(String, Vec<IpNet>)>,
    /// Each item's channel, by the digest of the item's text.
    pub items: HashMap<blake3::Hash, Known>,
    /// Parser events of the whole file.
    pub events: usize,
    /// The shadowing check's candidates of its channels.
    pub candidates: Candidates,
}

/// What a reading's channels' addresses decide of shadowing
/// ([`shadow::candidates`]), with the addresses it was found from: a
/// reading whose channels name the same addresses in the same places (an
/// edit of ports, protocol or limits) takes it as it is. Finding it is
/// most of a reading that reuses every channel but one: 10 of 24 ms for
/// the benchmark's 1,024 channels and 131,072 prefixes.
#[derive(Clone)]
pub(super) struct Candidates {
    /// Each channel's sources and destinations, in order.
    sides: Sides,
    /// Each channel's candidates.
    pub sets: Vec<ChannelSet>,
}

impl Candidates {
    /// The candidates of `channels`.
    pub fn of(channels: &[Channel]) -> Self {
        Self {
            sides: Sides::of(channels),
            sets: shadow::candidates(channels),
        }
    }

    /// Whether these are the candidates of `channels`.
    pub fn fit(&self, channels: &[Channel]) -> bool {
        self.sides.named_by(channels)
    }
}

/// One item of a reading.
#[derive(Clone)]
pub(super) struct Known {
    /// Its channel, as validation made it.
    pub channel: Channel,
    /// What it adds to the policy's counts.
    pub footprint: Footprint,
    /// Parser events of the item.
    pub events: usize,
}

/// A whole reading whose memo is still to be built.
pub(super) struct Pending {
    /// The file's text.
    pub text: String,
    /// Its channels, one per item.
    pub channels: Vec<Channel>,
    /// Its endpoint sets.
    pub endpoints: Vec<(String, Vec<IpNet>)>,
    /// Each channel's footprint.
    pub footprints: Vec<Footprint>,
    /// The file's parser events.
    pub events: usize,
}

/// Items parsed between two looks at whether the memo being built is
/// still wanted.
const STALE_CHECK_EVERY: usize = 16;

/// The memo of a whole reading, if every item of its cut reads alone as
/// one complete item and the cut has one item per channel; `None` too as
/// soon as `stale` says a newer reading made it useless.
pub(super) fn build(p: Pending, stale: impl Fn() -> bool) -> Option<Memo> {
    if stale() {
        return None;
    }
    let cut = chunks::cut(&p.text)?;
    if cut.items.len() != p.channels.len() || p.footprints.len() != p.channels.len() {
        return None;
    }
    // The head reads alone: it leaves nothing open for the items.
    yaml::parse_counted(cut.head, Lines::MapsOnly).ok()?;
    let candidates = Candidates::of(&p.channels);
    let mut items = HashMap::with_capacity(cut.items.len());
    for (i, ((item, channel), footprint)) in cut
        .items
        .iter()
        .zip(p.channels)
        .zip(p.footprints)
        .enumerate()
    {
        if i % STALE_CHECK_EVERY == 0 && stale() {
            return None;
        }
        let events = item_events(item)?;
        let known = Known {
            channel,
            footprint,
            events,
        };
        // Two equal items would be two channels of one name: no valid
        // file has them.
        if items.insert(digest(item), known).is_some() {
            return None;
        }
    }
    Some(Memo {
        head: digest(cut.head),
        tail: digest(cut.tail),
        indent: cut.indent,
        endpoints: p.endpoints,
        items,
        events: p.events,
        candidates,
    })
}

/// Parser events of an item that reads alone as exactly one complete
/// item of `channels`, or `None`.
pub(super) fn item_events(item: &str) -> Option<usize> {
    /// Events of the frame around the item (`channels:` and the list).
    static FRAME: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    let frame = (*FRAME.get_or_init(|| {
        yaml::parse_counted("channels: []\n", Lines::MapsOnly)
            .ok()
            .map(|(_, n)| n)
    }))?;
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
