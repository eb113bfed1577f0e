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

/// Bytes the kernel reads or writes per value of `map` in a batch: its
/// value size, or for a per-CPU map one slot per possible CPU (`ncpus`),
/// each rounded up to 8 bytes.
fn value_stride<V>(ncpus: Option<usize>) -> usize {
    match ncpus {
        None => std::mem::size_of::<V>(),
        Some(n) => std::mem::size_of::<V>().next_multiple_of(8) * n,
    }
}

/// Entries `first..first + count` of the array `map` (`LOOKUP_BATCH` on
/// an array, Linux 5.6, [`CHUNK`] per call): one `V` per entry, or per
/// entry and CPU, CPU by CPU, when `ncpus` says the map is per-CPU over
/// that many possible CPUs. The caller guarantees that `V` is the map's
/// value type.
pub fn lookup_range<V: aya::Pod>(
    map: &MapData,
    first: u32,
    count: usize,
    ncpus: Option<usize>,
) -> io::Result<Vec<V>> {
    let stride = value_stride::<V>(ncpus);
    let per_entry = ncpus.unwrap_or(1);
    let mut raw = vec![0u8; stride * count.min(CHUNK)];
    let mut keys = vec![0u32; count.min(CHUNK)];
    let mut out = Vec::with_capacity(count * per_entry);
    let mut done = 0;
    while done < count {
        let n = (count - done).min(CHUNK);
        let start = first
            .checked_add(done as u32)
            .ok_or_else(|| io::Error::other("index past u32"))?;
        // The kernel resumes after the key `in_batch` names; none for 0.
        let prev = start.wrapping_sub(1);
        let mut token = 0u32;
        let mut attr = BatchAttr {
            in_batch: if start == 0 {
                0
            } else {
                &prev as *const u32 as u64
            },
            out_batch: &mut token as *mut u32 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: raw.as_mut_ptr() as u64,
            count: n as u32,
            map_fd: fd(map),
            ..Default::default()
        };
        // SAFETY: `keys` holds `n` u32 keys (an array's), `raw` `n`
        // values as the kernel writes them (`stride` bytes each, from the
        // map's value type, the caller's guarantee); `prev` and `token`
        // hold one key each.
        match unsafe { sys_bpf(bpf_cmd::BPF_MAP_LOOKUP_BATCH, &mut attr) } {
            Ok(_) => {}
            // The end of the array, once `count` said how far it read.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e),
        }
        if attr.count as usize != n || keys[0] != start {
            return Err(io::Error::other(format!(
                "read {} entries from index {} where {n} from {start} were asked for",
                attr.count, keys[0]
            )));
        }
        let slot = std::mem::size_of::<V>().next_multiple_of(if ncpus.is_some() { 8 } else { 1 });
        for e in 0..n {
            for c in 0..per_entry {
                let at = e * stride + c * slot;
                // SAFETY: `at + size_of::<V>()` is within the `n * stride`
                // bytes the kernel wrote, and any bytes are a `V` (Pod).
                out.push(unsafe { std::ptr::read_unaligned(raw[at..].as_ptr().cast::<V>()) });
            }
        }
        done += n;
    }
    Ok(out)
}

/// Writes `values` at entries `first..` of the array `map` ([`CHUNK`] per
/// call): one per entry, or per entry and CPU, CPU by CPU, when `ncpus`
/// says the map is per-CPU over that many possible CPUs. The caller
/// guarantees that `V` is the map's value type.
pub fn update_range<V: aya::Pod>(
    map: &MapData,
    first: u32,
    values: &[V],
    ncpus: Option<usize>,
) -> io::Result<()> {
    let per_entry = ncpus.unwrap_or(1);
    assert_eq!(values.len() % per_entry, 0);
    let stride = value_stride::<V>(ncpus);
    let slot = std::mem::size_of::<V>().next_multiple_of(if ncpus.is_some() { 8 } else { 1 });
    let count = values.len() / per_entry;
    let mut done = 0;
    while done < count {
        let n = (count - done).min(CHUNK);
        let start = first
            .checked_add(done as u32)
            .ok_or_else(|| io::Error::other("index past u32"))?;
        let keys: Vec<u32> = (start..start + n as u32).collect();
        let mut raw = vec![0u8; stride * n];
        for (i, v) in values[done * per_entry..(done + n) * per_entry]
            .iter()
            .enumerate()
        {
            let at = (i / per_entry) * stride + (i % per_entry) * slot;
            // SAFETY: `at + size_of::<V>()` is within `raw`, a `V` is
            // plain bytes (Pod).
            unsafe { std::ptr::write_unaligned(raw[at..].as_mut_ptr().cast::<V>(), *v) };
        }
        update_raw(map, as_bytes(&keys), &raw, n)?;
        done += n;
    }
    Ok(())
}

/// A slice of keys as the kernel reads them.
fn as_bytes(keys: &[u32]) -> &[u8] {
    // SAFETY: u32 has no padding; the bytes are the slice's own.
    unsafe { std::slice::from_raw_parts(keys.as_ptr().cast::<u8>(), std::mem::size_of_val(keys)) }
}
