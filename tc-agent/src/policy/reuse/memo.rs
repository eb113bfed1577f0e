//! What a reading leaves for the next one: its text, and each channel
//! item, where it is in it and by the digest of its text, with its
//! validated channel; and how the memo of a whole reading is built.

use std::{collections::HashMap, ops::Range, sync::Arc};

use ipnet::IpNet;
use tc_common::ChannelSet;

use super::super::{
    chunks::{self, span},
    model::{Channel, Sides},
    shadow,
    validate::Footprint,
    yaml::{self, Lines},
};

/// A text's BLAKE3 digest: a cryptographic hash, so that two texts that
/// differ are never taken for each other. A memo's builder digests every
/// item; a reading that uses the memo digests only the items that are not
/// the text at their place in the last reading (moved, new or edited).
pub(super) fn digest(text: &str) -> blake3::Hash {
    blake3::hash(text.as_bytes())
}

/// What a reading left for the next one.
pub(super) struct Memo {
    /// The text read: the next text's parts are compared with its parts
    /// where they are, byte for byte (2.9 MB kept at rest for the
    /// benchmark's 1,024 channels; comparing took 0.4-1.5 ms where
    /// digesting every item took 1.7).
    pub text: String,
    /// Where the text before the items is in `text`.
    pub head: Range<usize>,
    /// Where the text after them is.
    pub tail: Range<usize>,
    /// Column of the items' `-`.
    pub indent: usize,
    /// The endpoint sets, as the head and tail define them.
    pub endpoints: Vec<(String, Vec<IpNet>)>,
    /// Each item in the order of `text`.
    pub items: Vec<Item>,
    /// Each item's place in `items`, by its text's digest: for items that
    /// moved.
    pub by_digest: HashMap<blake3::Hash, usize>,
    /// Parser events of the whole file.
    pub events: usize,
    /// The shadowing check's candidates of its channels.
    pub candidates: Candidates,
}

impl Memo {
    /// The text of item `i`, if there is one.
    pub fn item_text(&self, i: usize) -> Option<&str> {
        self.items.get(i).map(|it| &self.text[it.span.clone()])
    }
}

/// A memo read from a text still borrowed: [`NextMemo::with_text`] gives
/// it the text once the reading is done with it.
pub(super) struct NextMemo {
    /// [`Memo::head`] of the memo it becomes.
    pub head: Range<usize>,
    /// [`Memo::tail`] of the memo it becomes.
    pub tail: Range<usize>,
    /// [`Memo::indent`] of the memo it becomes.
    pub indent: usize,
    /// [`Memo::endpoints`] of the memo it becomes.
    pub endpoints: Vec<(String, Vec<IpNet>)>,
    /// [`Memo::items`] of the memo it becomes.
    pub items: Vec<Item>,
    /// [`Memo::events`] of the memo it becomes.
    pub events: usize,
    /// [`Memo::candidates`] of the memo it becomes.
    pub candidates: Candidates,
}

impl NextMemo {
    /// The memo, of `text`: the text it was read from.
    pub fn with_text(self, text: String) -> Memo {
        let by_digest = self
            .items
            .iter()
            .enumerate()
            .map(|(i, it)| (it.digest, i))
            .collect();
        Memo {
            text,
            head: self.head,
            tail: self.tail,
            indent: self.indent,
            endpoints: self.endpoints,
            items: self.items,
            by_digest,
            events: self.events,
            candidates: self.candidates,
        }
    }
}

/// One item of a reading, where it was.
pub(super) struct Item {
    /// Where its text is in [`Memo::text`].
    pub span: Range<usize>,
    /// Its text's digest.
    pub digest: blake3::Hash,
    /// What it read as.
    pub known: Known,
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

/// What one item read as: kept for a reading that finds its text again.
#[derive(Clone)]
pub(super) struct Known {
    /// Its channel, as validation made it: shared, so that a reading that
    /// keeps it copies a pointer (the policy it gives has its own copy).
    pub channel: Arc<Channel>,
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
    let mut items = Vec::with_capacity(cut.items.len());
    let mut by_digest = HashMap::with_capacity(cut.items.len());
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
        let digest = digest(item);
        // Two equal items would be two channels of one name: no valid
        // file has them.
        if by_digest.insert(digest, i).is_some() {
            return None;
        }
        items.push(Item {
            span: span(&p.text, item),
            digest,
            known: Known {
                channel: Arc::new(channel),
                footprint,
                events,
            },
        });
    }
    let (head, tail, indent) = (span(&p.text, cut.head), span(&p.text, cut.tail), cut.indent);
    Some(Memo {
        text: p.text,
        head,
        tail,
        indent,
        endpoints: p.endpoints,
        items,
        by_digest,
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
