//! tc-agent: the node agent and CLI of a kernel-level traffic controller.
//!
//! - [`policy`]: the policy file, its validation and its compilation into tables;
//! - [`datapath`]: the eBPF programs and maps: load, pin, attach, apply, read;
//! - [`detect`]: spikes, upstream collapse and floods found in what was observed, and the policy that answers each;
//! - [`agent`]: the daemon: owns the datapath, serves the control socket, keeps history;
//! - [`control`]: the control-socket protocol and its client;
//! - [`metrics`]: the Prometheus exposition and its HTTP server (`run --metrics-addr`);
//! - [`cli`]: one module per subcommand;
//! - [`clock`]: Unix-time stamps;
//! - `families`: the IPv4 and IPv6 halves of an apply's work on two threads.

pub mod agent;
pub mod cli;
pub mod clock;
pub mod control;
pub mod datapath;
pub mod detect;
mod families;
pub mod metrics;
pub mod observe;
pub mod policy;
