//! A loaded datapath made as new: every map back to what a fresh load
//! leaves, the verified programs kept.
//!
//! Verifying the programs is the dearest part of a load (seconds in an
//! emulated guest), and a test suite that runs dozens of small policies
//! needs fresh maps for each, not fresh programs.

use std::io;

use aya::maps::{Map, MapData};
use aya_obj::generated::bpf_cmd;

use super::{
    batch,
    bpf_call::{map_fd, sys_bpf},
    elem::ElemAttr,
    held, Datapath, DatapathError,
};

/// How a map of the object is emptied.
enum Clear {
    /// Every index written with zeros; `per_cpu`: one value per possible CPU.
    Zero { per_cpu: bool },
    /// Every key removed.
    Delete,
}

impl Datapath {
    /// Returns every map to the state [`load`](Self::load) leaves it in
    /// (no policy, no counters, no cached flows, connections or
    /// interactions), keeping the loaded programs and the accounting
    /// programs' tail-call tables.
    ///
    /// It removes the live policy: never call it on a datapath whose
    /// programs are attached. It is for test suites that share one load,
    /// and refuses pinned maps (which an attached datapath may read).
    pub fn clear_maps(&mut self) -> Result<(), DatapathError> {
        if let Some(dir) = &self.pin_dir {
            return Err(DatapathError::Setup(format!(
                "refusing to clear maps pinned under {}: programs attached elsewhere may be enforcing them",
                dir.display()
            )));
        }
        let ncpus = aya::util::nr_cpus()
            .map_err(|(_, e)| DatapathError::Setup(format!("cannot count CPUs: {e}")))?;
        for (name, map) in self.ebpf.maps() {
            if name.starts_with(".rodata") {
                // The program's constants: frozen at load, never written.
                continue;
            }
            if name.starts_with('.') {
                // `.data` and `.bss`: the programs keep no globals there.
                return Err(DatapathError::Setup(format!(
                    "map {name}: the programs' global variables cannot be reset"
                )));
            }
            let (data, how) = match map {
                Map::Array(d) => (d, Clear::Zero { per_cpu: false }),
                Map::PerCpuArray(d) => (d, Clear::Zero { per_cpu: true }),
                Map::HashMap(d) | Map::LruHashMap(d) | Map::LpmTrie(d) => (d, Clear::Delete),
                // The tail calls into the accounting programs, set at load.
                Map::ProgramArray(_) => continue,
                other => {
                    return Err(DatapathError::Setup(format!(
                        "map {name}: cannot clear a map of this kind ({other:?})"
                    )))
                }
            };
            let cleared = match how {
                Clear::Zero { per_cpu } => zero(data, if per_cpu { ncpus } else { 0 }),
                Clear::Delete => delete_all(data),
            };
            cleared.map_err(|e| DatapathError::Setup(format!("clearing map {name}: {e}")))?;
        }
        // As a fresh load: nothing known of either generation (so the next
        // applies take the same paths as after a load).
        self.gens = [held::Generation::unknown(), held::Generation::unknown()];
        self.flow_bits_since = None;
        self.init_slots()
    }
}

/// Writes zeros at every index of the array `map`; `ncpus` per-CPU slots
/// per value, or 0 for a plain array.
fn zero(map: &MapData, ncpus: usize) -> io::Result<()> {
    let info = map.info().map_err(io::Error::other)?;
    let n = info.max_entries() as usize;
    let value = match ncpus {
        0 => info.value_size() as usize,
        // The kernel's per-CPU value: one slot, rounded up to 8 bytes, per
        // possible CPU.
        _ => (info.value_size() as usize).next_multiple_of(8) * ncpus,
    };
    let keys: Vec<u8> = (0..n as u32).flat_map(u32::to_ne_bytes).collect();
    let zeros = vec![0u8; value * batch::CHUNK];
    for keys in keys.chunks(4 * batch::CHUNK) {
        let count = keys.len() / 4;
        batch::update_raw(map, keys, &zeros[..value * count], count)?;
    }
    Ok(())
}

/// Removes every key of the hash map, LRU hash map or trie `map`: lists
/// them, then removes them one at a time (one call each, for any key
/// type; the suites that share a load hold a few hundred).
fn delete_all(map: &MapData) -> io::Result<()> {
    let info = map.info().map_err(io::Error::other)?;
    let size = info.key_size() as usize;
    let fd = map_fd(map);
    let mut keys: Vec<u8> = Vec::new();
    let mut next = vec![0u8; size];
    loop {
        // The key after the last one listed; null asks for the first.
        let prev = match keys.len() {
            0 => 0,
            n => keys[n - size..].as_ptr() as u64,
        };
        let mut attr = ElemAttr {
            map_fd: fd,
            key: prev,
            value_or_next_key: next.as_mut_ptr() as u64,
            ..Default::default()
        };
        // SAFETY: `prev` is null or points to a key of the map's size in
        // `keys`, which the kernel reads; `next` holds the map's key size,
        // where it writes the following key.
        match unsafe { sys_bpf(bpf_cmd::BPF_MAP_GET_NEXT_KEY, &mut attr) } {
            Ok(_) => keys.extend_from_slice(&next),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => break,
            Err(e) => return Err(e),
        }
    }
    for key in keys.chunks(size) {
        let mut attr = ElemAttr {
            map_fd: fd,
            key: key.as_ptr() as u64,
            ..Default::default()
        };
        // SAFETY: `key` holds a key of the map's size, which the kernel reads.
        unsafe { sys_bpf(bpf_cmd::BPF_MAP_DELETE_ELEM, &mut attr) }?;
    }
    Ok(())
}
