//! What entries gone from the kernel table (removed to make room, idle, or
//! a new table) counted in the window: `top-talkers` goes on counting it
//! until it leaves the window. Without it, a table shedding half its
//! entries would shrink the window's total, and every remaining source's
//! share would jump.

use std::collections::{HashMap, VecDeque};

use tc_common::IxKey;

use super::WINDOW;

/// Per client and server (ports and protocols merged: `top-talkers` does
/// not tell them apart), bounded.
#[derive(Debug)]
pub(super) struct Departed {
    /// The windows, by key with port and protocol zeroed.
    windows: HashMap<IxKey, Window>,
    /// Keys with a client held at most (the kernel table's size): past it,
    /// a departed entry counts under its server with the client untracked
    /// (one more key per server), so a flood of short-lived sources cannot
    /// grow the agent.
    cap: usize,
}

/// What departed entries of one key counted.
#[derive(Debug, Default)]
struct Window {
    /// Their deltas, aligned with the kept entries' (newest last: the last
    /// sample): request bytes and packets, response bytes and packets.
    recent: VecDeque<[u64; 4]>,
    /// What they counted after their last read: the next sample's delta.
    next: [u64; 4],
}

impl Departed {
    /// Empty, holding at most `cap` keys.
    pub fn new(cap: usize) -> Self {
        Self {
            windows: HashMap::new(),
            cap,
        }
    }

    /// A new sample: every window moves on by one delta (what its entries
    /// counted after their last read), and windows without traffic go.
    pub fn advance(&mut self) {
        self.windows.retain(|_, w| {
            w.recent.push_back(std::mem::take(&mut w.next));
            while w.recent.len() > WINDOW {
                w.recent.pop_front();
            }
            w.recent.iter().any(|d| *d != [0; 4])
        });
    }

    /// Keeps what a departed entry counted: `recent`, whose newest delta is
    /// `lag` samples older than the last sample, and `next`, counted after
    /// its last read.
    pub fn add(&mut self, key: IxKey, recent: &VecDeque<[u64; 4]>, lag: usize, next: [u64; 4]) {
        if next == [0; 4] && recent.iter().all(|d| *d == [0; 4]) {
            return;
        }
        let mut key = IxKey {
            port: 0,
            proto: 0,
            _pad: [0; 5],
            ..key
        };
        if self.windows.len() >= self.cap && !self.windows.contains_key(&key) {
            key.client = [0; 16];
        }
        let w = self.windows.entry(key).or_default();
        // Newest with newest, `lag` samples back.
        let len = recent.len().min(WINDOW.saturating_sub(lag));
        while w.recent.len() < len + lag {
            w.recent.push_front([0; 4]);
        }
        let end = w.recent.len() - lag;
        let from = recent.iter().skip(recent.len() - len);
        for (slot, d) in w.recent.range_mut(end - len..end).zip(from) {
            add4(slot, d);
        }
        add4(&mut w.next, &next);
    }

    /// Each key's deltas in the window, newest last.
    pub fn windows(&self) -> impl Iterator<Item = (&IxKey, &VecDeque<[u64; 4]>)> {
        self.windows.iter().map(|(k, w)| (k, &w.recent))
    }

    /// Keys held.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.windows.len()
    }
}

/// Adds four counters (bytes and packets both ways) into `to`.
pub(super) fn add4(to: &mut [u64; 4], d: &[u64; 4]) {
    for (t, x) in to.iter_mut().zip(d) {
        *t += x;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(client: u8, port: u16) -> IxKey {
        let mut k = IxKey {
            client: [0; 16],
            server: [9; 16],
            port,
            proto: 17,
            _pad: [0; 5],
        };
        k.client[15] = client;
        k
    }

    fn windows(d: &Departed) -> Vec<(u8, Vec<u64>)> {
        let mut v: Vec<(u8, Vec<u64>)> = d
            .windows()
            .map(|(k, w)| (k.client[15], w.iter().map(|x| x[0]).collect()))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn windows_align_newest_with_newest_and_age_out() {
        let mut d = Departed::new(16);
        let recent: VecDeque<[u64; 4]> = [[1, 0, 0, 0], [2, 0, 0, 0]].into();
        // Removed after the last sample (lag 0), 3 more counted since.
        d.add(key(1, 53), &recent, 0, [3, 0, 0, 0]);
        // Gone from this sample's read (lag 1): its newest is one older.
        d.advance();
        d.add(key(1, 80), &recent, 1, [0; 4]);
        // Both ports of one client are one key; the second entry's newest
        // delta is the first one's second-newest sample.
        assert_eq!(windows(&d), [(1, vec![2, 4, 3])]);
        for _ in 0..WINDOW - 1 {
            d.advance();
        }
        assert_eq!(windows(&d), [(1, vec![3, 0, 0, 0, 0])]);
        d.advance();
        assert!(windows(&d).is_empty(), "out of the window");
    }

    #[test]
    fn past_its_cap_a_departed_client_counts_untracked() {
        let mut d = Departed::new(2);
        let recent: VecDeque<[u64; 4]> = [[1, 0, 0, 0]].into();
        for c in 1..=4 {
            d.add(key(c, 53), &recent, 0, [0; 4]);
        }
        assert_eq!(d.len(), 3);
        assert_eq!(windows(&d), [(0, vec![2]), (1, vec![1]), (2, vec![1])]);
    }
}
