//! The policy file: the operator's contract.
//!
//! [`Policy::parse`] validates a whole file before anything is applied and
//! reports every problem with file, line and field; [`compile`] turns a valid
//! policy into the datapath's lookup tables.
//!
//! One job per file:
//! - `yaml`: text to a node tree with lines, every parser resource bounded
//!   (`yaml/events`: the plain reader a large policy's YAML takes);
//! - `chunks`: the text cut at its channel items by its lines alone;
//! - [`reuse`]: reading an edited file again, parsing only its new items;
//! - `raw`: the tree read into the file's shape (keys, lists, maps);
//! - `validate`: the shape to a [`Policy`], every rule and limit;
//! - `cover`: for each prefix, the channels containing it (compile, shadow),
//!   each set once in an `interner`;
//! - `shadow`: channels an earlier channel matches entirely;
//! - `model`: the validated types; `diagnostic`: errors and warnings;
//! - `prefix_text`: prefixes written out for the saved state;
//! - [`compile`]: the datapath's tables (`compile/addresses`: the address
//!   tables a compile leaves for the next); [`units`]: rates, sizes,
//!   durations.

mod chunks;
pub mod compile;
pub(crate) mod cover;
mod diagnostic;
mod interner;
mod model;
mod prefix_text;
mod raw;
pub mod render;
pub mod reuse;
mod shadow;
pub mod units;
mod validate;
mod yaml;

pub use self::{
    diagnostic::{Diagnostic, PolicyError},
    model::{Action, Channel, ConnAction, Direction, Limit, Mode, Policy, Protocol, Sides},
    reuse::Reuse,
    validate::{
        DEFAULT_BURST_MS, DEFAULT_HORIZON, DEFAULT_MIN_BURST_BYTES,
        DEFAULT_MIN_NEW_CONNECTION_BURST, DEFAULT_PACKET_BURST_MS, MAX_BURST_BYTES,
        MAX_CONNECTIONS, MAX_ERRORS, MAX_HORIZON_NS, MAX_NEW_CONNECTIONS, MAX_NEW_CONNECTION_BURST,
        MAX_PACKETS, MAX_PORT_RANGES, MAX_PREFIXES, MAX_PREFIX_COPIES, MIN_BURST_BYTES,
        MIN_HORIZON_NS, MIN_PACKET_BURST,
    },
    yaml::{MAX_ALIAS_EVENTS, MAX_DEPTH, MAX_EVENTS, MAX_FILE_BYTES},
};

#[cfg(test)]
pub(crate) mod fuzz;
#[cfg(test)]
pub(crate) mod sim;
#[cfg(test)]
mod tests;
