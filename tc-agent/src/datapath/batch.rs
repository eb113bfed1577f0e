//! Batched map operations (`BPF_MAP_*_BATCH`, Linux 5.6): one bpf(2) call
//! writes, lists or removes thousands of entries where the per-entry calls
//! aya 0.14 offers make one each. A policy of 131,072 prefixes is written
//! in a few dozen calls instead of 131,072.

use std::{
    io,
    os::fd::{AsFd, AsRawFd},
};

use aya::maps::MapData;
use aya_obj::generated::bpf_cmd;

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

/// Raw bpf(2): aya 0.14 keeps its wrapper private and has no batch calls.
fn sys_bpf(cmd: bpf_cmd, attr: &mut BatchAttr) -> io::Result<()> {
    // SAFETY: `attr` is a live `BatchAttr`, laid out as the batch commands
    // read `union bpf_attr`; the buffers it points to are live and hold
    // `count` keys (and values) of the map's sizes, which the callers
    // check; the kernel writes only into `out_batch`, `keys` and `values`
    // (within `count` entries) and `count`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_int,
            (attr as *mut BatchAttr).cast::<libc::c_void>(),
            std::mem::size_of::<BatchAttr>() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn fd(map: &MapData) -> u32 {
    map.fd().as_fd().as_raw_fd() as u32
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
        sys_bpf(bpf_cmd::BPF_MAP_UPDATE_BATCH, &mut attr)?;
    }
    Ok(())
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
        sys_bpf(bpf_cmd::BPF_MAP_DELETE_BATCH, &mut attr)?;
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
        let done = match sys_bpf(bpf_cmd::BPF_MAP_LOOKUP_BATCH, &mut attr) {
            Ok(()) => false,
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
