//! Batched map operations (`BPF_MAP_*_BATCH`, Linux 5.6): one bpf(2) call
//! writes, lists or removes thousands of entries where the per-entry calls
//! aya 0.14 offers make one each. A policy of 131,072 prefixes is written
//! in a few dozen calls instead of 131,072.

use std::io;

use aya::maps::MapData;
use aya_obj::generated::bpf_cmd;

use super::bpf_call::{map_fd as fd, sys_bpf};

/// Entries per call: large enough that the calls cost nothing next to the
/// kernel's per-entry work, small enough that the buffers stay small.
pub const CHUNK: usize = 4096;

/// `union bpf_attr` as the `BPF_MAP_*_BATCH` commands read it.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    /// Where a listing resumes (`LOOKUP_BATCH`); null at the start.
    in_batch: u64,
    /// Where the kernel writes the resume token of the next call.
    out_batch: u64,
    /// The keys, `count` of them back to back.
    keys: u64,
    /// The values, likewise (not for `DELETE_BATCH`).
    values: u64,
    /// In: entries the buffers hold; out: entries the kernel processed.
    count: u32,
    /// The map.
    map_fd: u32,
    /// Flags per entry (`BPF_ANY` for updates).
    elem_flags: u64,
    /// Flags of the call; none exist yet.
    flags: u64,
}

/// Writes `keys[i] => values[i]` into `map`, [`CHUNK`] entries per call.
/// The caller guarantees that `K` and `V` are the map's key and value
/// types (a typed aya map checked their sizes).
pub fn update<K: aya::Pod, V: aya::Pod>(map: &MapData, keys: &[K], values: &[V]) -> io::Result<()> {
    assert_eq!(keys.len(), values.len());
    for (k, v) in keys.chunks(CHUNK).zip(values.chunks(CHUNK)) {
        let mut attr = BatchAttr {
            keys: k.as_ptr() as u64,
            values: v.as_ptr() as u64,
            count: k.len() as u32,
            map_fd: fd(map),
            ..Default::default()
        };
        // SAFETY: `k` and `v` hold `count` keys and values of the map's
        // types (the caller's guarantee).
        unsafe { sys_bpf(bpf_cmd::BPF_MAP_UPDATE_BATCH, &mut attr) }?;
    }
    Ok(())
}

/// Writes `count` entries into `map` from raw buffers: `keys` holds them
/// back to back at the map's key size, `values` at its value size as the
/// kernel reads it (per-CPU maps: one slot, rounded up to 8 bytes, per
/// possible CPU).
pub fn update_raw(map: &MapData, keys: &[u8], values: &[u8], count: usize) -> io::Result<()> {
    let info = map.info().map_err(io::Error::other)?;
    assert!(keys.len() >= count * info.key_size() as usize);
    assert!(values.len() >= count * info.value_size() as usize);
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: count as u32,
        map_fd: fd(map),
        ..Default::default()
    };
    // SAFETY: the buffers hold `count` keys and values at least of the
    // map's sizes (checked above; per-CPU values the caller sizes).
    unsafe { sys_bpf(bpf_cmd::BPF_MAP_UPDATE_BATCH, &mut attr) }.map(drop)
}

/// Removes `keys` from `map`, [`CHUNK`] per call. Every key must be there
/// (the kernel stops at the first missing one, `ENOENT`).
pub fn delete<K: aya::Pod>(map: &MapData, keys: &[K]) -> io::Result<()> {
    for k in keys.chunks(CHUNK) {
        let mut attr = BatchAttr {
            keys: k.as_ptr() as u64,
            count: k.len() as u32,
            map_fd: fd(map),
            ..Default::default()
        };
        // SAFETY: `k` holds `count` keys of the map's type (the caller's
        // guarantee).
        unsafe { sys_bpf(bpf_cmd::BPF_MAP_DELETE_BATCH, &mut attr) }?;
    }
    Ok(())
}

/// Calls `f` with every entry of the hash map `map`, listed [`CHUNK`] at
/// a time (hash maps list by bucket; the kernel refuses a chunk smaller
/// than a bucket's entries with `ENOSPC`, and the chunk grows then). The
/// caller guarantees that `K` and `V` are the map's key and value types.
pub fn for_each<K: aya::Pod, V: aya::Pod>(
    map: &MapData,
    mut f: impl FnMut(&K, &V),
) -> io::Result<()> {
    let mut chunk = CHUNK;
    // SAFETY (both): plain old data, for which all-zero bytes are a value.
    let mut keys: Vec<K> = vec![unsafe { std::mem::zeroed() }; chunk];
    let mut values: Vec<V> = vec![unsafe { std::mem::zeroed() }; chunk];
    // The resume token: a bucket index for hash maps (a u32).
    let mut token = [0u64; 2];
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { token.as_ptr() as u64 },
            out_batch: token.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: fd(map),
            ..Default::default()
        };
        // SAFETY: `keys` and `values` hold `chunk` entries of the map's
        // types (the caller's guarantee); `token` holds the kernel's resume
        // token (a u32 for hash maps).
        let done = match unsafe { sys_bpf(bpf_cmd::BPF_MAP_LOOKUP_BATCH, &mut attr) } {
            Ok(_) => false,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && attr.count == 0 => {
                chunk *= 2;
                // SAFETY: as above.
                keys.resize(chunk, unsafe { std::mem::zeroed() });
                values.resize(chunk, unsafe { std::mem::zeroed() });
                continue;
            }
            Err(e) => return Err(e),
        };
        let n = (attr.count as usize).min(chunk);
        for (k, v) in keys[..n].iter().zip(&values[..n]) {
            f(k, v);
        }
        if done {
            return Ok(());
        }
        first = false;
    }
}
