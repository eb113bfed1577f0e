//! What the agent found in the traffic: events and the policies that answer
//! them. The JSON field names are a contract for scripts (see `tc-agent
//! events --help`, `suggest --help`).

use serde::{Deserialize, Serialize};

use crate::{detect::Event, policy::Mode};

/// `tc-agent events`: the events the agent's detectors opened (and ended),
/// and the cursor to ask for what changes next.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EventsReport {
    /// Without `since`: every event the agent keeps (the last 1,000), in the
    /// order they started. With `since`: each event that started or ended
    /// after that cursor, as it is now, in the order of those changes.
    pub events: Vec<Event>,
    /// The agent's change count now: ask `since` it to get only what
    /// changes after this answer.
    pub cursor: u64,
    /// Which run of the agent answered (its process id and start time):
    /// ids and cursors are per run, so a follower that sees this change
    /// knows the agent restarted, even when the new run's cursor has
    /// already passed the old one. `default`: an older agent sends none.
    #[serde(default)]
    pub run: String,
}

/// `tc-agent suggest`: a complete policy file that answers one event.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SuggestReport {
    /// The event answered.
    pub id: String,
    /// The mode of the suggested channel: `monitor` counts what it would
    /// drop without dropping it, for a dry run first.
    pub mode: Mode,
    /// The policy file's text: the live policy plus the suggested endpoint
    /// set and channel; `tc-agent apply` takes it unchanged.
    pub policy: String,
    /// The event as the agent holds it now (it may have ended since).
    pub event: Event,
}
