//! The thread that builds the memo of each whole reading, off the apply's
//! path: one for all of a [`Reuse`](super::Reuse)'s readings, so that
//! back-to-back applies on a busy node queue texts, not threads, and only
//! the latest text is read.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    mpsc, Arc,
};

use parking_lot::Mutex;
use tracing::debug;

use super::memo::{build, Memo, Pending};

/// Work for the builder.
pub(super) enum Job {
    /// Build the memo of whole reading number `.1`.
    Build(Pending, u64),
    /// Answer once every job sent before it is done (tests).
    #[cfg(test)]
    Sync(mpsc::Sender<()>),
}

/// Starts the builder: it puts each memo it builds into `memo`, unless
/// `readings` has moved past the reading it is for.
pub(super) fn spawn(
    memo: Arc<Mutex<Option<Memo>>>,
    readings: Arc<AtomicU64>,
) -> std::io::Result<mpsc::Sender<Job>> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("policy-memo".into())
        .spawn(move || run(&rx, &memo, &readings))?;
    Ok(tx)
}

fn run(rx: &mpsc::Receiver<Job>, memo: &Mutex<Option<Memo>>, readings: &AtomicU64) {
    background_priority();
    // Ends when the `Reuse` is dropped (its sender with it).
    while let Ok(first) = rx.recv() {
        // Of the builds waiting, only the latest is worth doing.
        let mut latest = None;
        #[cfg(test)]
        let mut syncs = Vec::new();
        for job in std::iter::once(first).chain(rx.try_iter()) {
            match job {
                Job::Build(p, reading) => latest = Some((p, reading)),
                #[cfg(test)]
                Job::Sync(done) => syncs.push(done),
            }
        }
        if let Some((p, reading)) = latest {
            let stale = || readings.load(Ordering::SeqCst) != reading;
            if let Some(m) = build(p, stale) {
                let old = {
                    let mut slot = memo.lock();
                    // Checked under the lock: a reading that started since
                    // reuses or replaces the memo itself.
                    (!stale()).then(|| slot.replace(m))
                };
                // Outside the lock: the old memo may hold the last
                // references to large prefix lists.
                drop(old);
            }
        }
        #[cfg(test)]
        for done in syncs {
            let _ = done.send(());
        }
    }
}

/// Gives the calling thread the lowest nice value (19): a building memo
/// takes what CPU the node leaves, yet is never starved outright, so that a
/// lock it holds (the memo's, an allocator arena's) is never held for long
/// on a busy node, as it could be in the idle class (`SCHED_IDLE`). Failing
/// that, it runs as it is.
fn background_priority() {
    // SAFETY: gettid has no preconditions; setpriority changes only this
    // thread's nice value (Linux keeps it per thread).
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, 19) };
    if rc != 0 {
        debug!(error = %std::io::Error::last_os_error(), "the policy memo's thread keeps its priority");
    }
}
