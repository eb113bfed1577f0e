//! Batched map operations (`BPF_MAP_*_BATCH`, Linux 5.6): one bpf(2) call
//! writes, lists or removes thousands of entries where the per-entry calls
//! aya 0.14 offers make one each. A policy of 131,072 prefixes is written
//! in a few dozen calls instead of 131,072.

use std::io;

use aya::maps::{MapData, MapType};
use aya_obj::generated::bpf_cmd;

use super::bpf_call::{map_fd as fd, sys_bpf};

/// Entries per call: large enough that the calls cost nothing next to the
/// kernel's per-entry work, small enough that the buffers stay small (for
/// arrays of per-CPU values, [`RANGE_BYTES`] bounds them too).
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

/// How the kernel lays out one value of an array map in a batch: `V`,
/// or for a per-CPU array one `V` per possible CPU, each in a slot
/// rounded up to 8 bytes.
#[derive(Clone, Copy)]
pub struct Layout {
    /// Possible CPUs, for a per-CPU array; `None` for a plain one.
    pub ncpus: Option<usize>,
}

impl Layout {
    /// Bytes from one `V` to the next (one CPU's to the next CPU's).
    fn slot<V>(self) -> usize {
        match self.ncpus {
            None => std::mem::size_of::<V>(),
            Some(_) => std::mem::size_of::<V>().next_multiple_of(8),
        }
    }

    /// `V`s per entry.
    fn per_entry(self) -> usize {
        self.ncpus.unwrap_or(1)
    }

    /// Bytes per entry.
    fn stride<V>(self) -> usize {
        self.slot::<V>() * self.per_entry()
    }

    /// Whether `map` is an array of `V` of this kind, per-CPU over the
    /// possible CPUs: the kernel writes what its map holds into buffers
    /// sized by this layout, so a wrong one would overrun them.
    fn check<V>(self, map: &MapData) -> io::Result<()> {
        let info = map.info().map_err(io::Error::other)?;
        let kind = info.map_type().map_err(io::Error::other)?;
        let want = match self.ncpus {
            None => MapType::Array,
            Some(_) => MapType::PerCpuArray,
        };
        if kind != want || info.value_size() as usize != std::mem::size_of::<V>() {
            return Err(io::Error::other(format!(
                "a {kind:?} of {}-byte values where a {want:?} of {}-byte values was expected",
                info.value_size(),
                std::mem::size_of::<V>()
            )));
        }
        if let Some(n) = self.ncpus {
            // The kernel writes one value per possible CPU.
            let possible = aya::util::nr_cpus().map_err(|(_, e)| e)?;
            if n != possible {
                return Err(io::Error::other(format!(
                    "values for {n} CPUs where the kernel has {possible} possible CPUs"
                )));
            }
        }
        Ok(())
    }

    /// Entries per call: at most [`CHUNK`], and at most [`RANGE_BYTES`] of
    /// values, so that a host with many possible CPUs does not allocate
    /// megabytes per call.
    fn entries_per_call<V>(self) -> usize {
        (RANGE_BYTES / self.stride::<V>().max(1)).clamp(1, CHUNK)
    }
}

/// The largest buffer of values [`lookup_range`] and [`update_range`]
/// pass the kernel at once.
const RANGE_BYTES: usize = 256 * 1024;

/// Calls `f(i, v)` with each value `v` of entries `first + i` for `i` in
/// `0..count` of the array `map` (`LOOKUP_BATCH` on an array, Linux 5.6),
/// in order, CPU by CPU for a per-CPU array. Refuses a map that is not
/// an array of `V` of `layout`'s kind.
pub fn lookup_range<V: aya::Pod>(
    map: &MapData,
    first: u32,
    count: usize,
    layout: Layout,
    mut f: impl FnMut(usize, V),
) -> io::Result<()> {
    layout.check::<V>(map)?;
    let (slot, stride) = (layout.slot::<V>(), layout.stride::<V>());
    let per_call = layout.entries_per_call::<V>().min(count.max(1));
    let mut raw = vec![0u8; stride * per_call];
    let mut keys = vec![0u32; per_call];
    let mut done = 0;
    while done < count {
        let n = (count - done).min(per_call);
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
        // values as the kernel writes them (`stride` bytes each: the map
        // is an array of `V` of `layout`'s kind, checked above); `prev`
        // and `token` hold one key each.
        match unsafe { sys_bpf(bpf_cmd::BPF_MAP_LOOKUP_BATCH, &mut attr) } {
            Ok(_) => {}
            // The end of the array, once `count` said how far it read.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e),
        }
        if attr.count as usize != n || keys[0] != start {
            return Err(io::Error::other(format!(
                "read {} entries where {n} from index {start} were asked for",
                attr.count
            )));
        }
        for e in 0..n {
            for c in 0..layout.per_entry() {
                let at = e * stride + c * slot;
                // SAFETY: `at + size_of::<V>()` is within the `n * stride`
                // bytes the kernel wrote, and any bytes are a `V` (Pod).
                f(done + e, unsafe {
                    std::ptr::read_unaligned(raw[at..].as_ptr().cast::<V>())
                });
            }
        }
        done += n;
    }
    Ok(())
}

/// Writes `value(i)` at entry `first + i` for `i` in `0..count` of the
/// array `map` (`UPDATE_BATCH`), for every CPU of a per-CPU array.
/// Refuses a map that is not an array of `V` of `layout`'s kind.
pub fn update_range<V: aya::Pod>(
    map: &MapData,
    first: u32,
    count: usize,
    layout: Layout,
    value: impl Fn(usize) -> V,
) -> io::Result<()> {
    layout.check::<V>(map)?;
    let (slot, stride) = (layout.slot::<V>(), layout.stride::<V>());
    let per_call = layout.entries_per_call::<V>().min(count.max(1));
    let mut raw = vec![0u8; stride * per_call];
    let mut keys = Vec::with_capacity(per_call);
    let mut done = 0;
    while done < count {
        let n = (count - done).min(per_call);
        let start = first
            .checked_add(done as u32)
            .ok_or_else(|| io::Error::other("index past u32"))?;
        let end = start
            .checked_add(n as u32)
            .ok_or_else(|| io::Error::other("index past u32"))?;
        keys.clear();
        keys.extend(start..end);
        for e in 0..n {
            let v = value(done + e);
            for c in 0..layout.per_entry() {
                let at = e * stride + c * slot;
                // SAFETY: `at + size_of::<V>()` is within `raw`, and a `V`
                // is plain bytes (Pod).
                unsafe { std::ptr::write_unaligned(raw[at..].as_mut_ptr().cast::<V>(), v) };
            }
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

/// A batched call's error, as the datapath reports errors of map `name`.
pub(super) fn batch_err(name: &'static str) -> impl FnOnce(io::Error) -> super::DatapathError {
    move |e| super::DatapathError::Setup(format!("eBPF map `{name}`: batch operation: {e}"))
}
