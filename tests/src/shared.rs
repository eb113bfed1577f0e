//! One loaded datapath per test process, its maps made as new for each
//! test that takes it: loading verifies the programs again, which takes
//! seconds in an emulated guest, while a test needs only fresh maps.

use std::{
    ops::{Deref, DerefMut},
    sync::{Mutex, MutexGuard, PoisonError},
};

use tc_agent::datapath::Datapath;

/// The connection table's size in the shared datapath (it is fixed at load).
pub const CONN_TABLE: u32 = 4096;

/// The process's datapath, loaded by the first test that asks for it.
static LOADED: Mutex<Option<Datapath>> = Mutex::new(None);

/// A loaded datapath a test holds.
pub enum Loaded {
    /// The process's, held by one test at a time.
    Shared(MutexGuard<'static, Option<Datapath>>),
    /// The test's own: a connection table of another size, or tables too
    /// large to clear entry by entry for the next test.
    Own(Box<Datapath>),
}

/// Takes the process's datapath (waiting while another test holds it), its
/// maps as a fresh load leaves them.
pub fn datapath() -> Loaded {
    // A test that failed while holding it left maps that are cleared here.
    let mut loaded = LOADED.lock().unwrap_or_else(PoisonError::into_inner);
    match loaded.as_mut() {
        Some(dp) => dp.clear_maps().expect("the shared datapath's maps clear"),
        None => *loaded = Some(load(CONN_TABLE)),
    }
    Loaded::Shared(loaded)
}

/// A datapath of the caller's own, with a connection table of `conns`.
pub fn own(conns: u32) -> Loaded {
    Loaded::Own(Box::new(load(conns)))
}

/// A datapath of the caller's own, with an interaction table of
/// `interactions` entries (a small one fills with a few frames).
pub fn own_interactions(interactions: u32) -> Loaded {
    Loaded::Own(Box::new(
        Datapath::load_sized(
            None,
            tc_agent::datapath::TableSizes {
                conns: CONN_TABLE,
                interactions,
            },
        )
        .expect("eBPF object loads and passes the verifier"),
    ))
}

fn load(conns: u32) -> Datapath {
    Datapath::load(None, conns).expect("eBPF object loads and passes the verifier")
}

impl Deref for Loaded {
    type Target = Datapath;

    fn deref(&self) -> &Datapath {
        match self {
            Loaded::Shared(g) => g.as_ref().expect("loaded when taken"),
            Loaded::Own(dp) => dp,
        }
    }
}

impl DerefMut for Loaded {
    fn deref_mut(&mut self) -> &mut Datapath {
        match self {
            Loaded::Shared(g) => g.as_mut().expect("loaded when taken"),
            Loaded::Own(dp) => dp,
        }
    }
}
