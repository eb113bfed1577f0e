//! Single-entry writes and removals by a map's descriptor, for the tries:
//! aya 0.14's typed maps need the map mutably, and the two address
//! families' tables are written at once from two threads (`sync`), each
//! holding the maps it writes shared.

use std::io;

use aya::maps::MapData;
use aya_obj::generated::bpf_cmd;

use super::bpf_call::{map_fd, sys_bpf};

/// `union bpf_attr` as the element commands (`BPF_MAP_*_ELEM`,
/// `BPF_MAP_GET_NEXT_KEY`) read it.
#[repr(C)]
#[derive(Default)]
pub(super) struct ElemAttr {
    /// The map.
    pub map_fd: u32,
    /// Explicit padding: `key` is 8-byte aligned.
    pub _pad: u32,
    /// The key; for `GET_NEXT_KEY` the one before, null for the first.
    pub key: u64,
    /// The value (`UPDATE_ELEM`), or where `GET_NEXT_KEY` writes the
    /// following key; unused by `DELETE_ELEM`.
    pub value_or_next_key: u64,
    /// `BPF_ANY` and friends; none for the other commands.
    pub flags: u64,
}

/// Writes `key => value` into `map` (`BPF_ANY`). The caller guarantees
/// that `K` and `V` are the map's key and value types (a typed aya map
/// checked their sizes).
pub fn update<K: aya::Pod, V: aya::Pod>(map: &MapData, key: &K, value: &V) -> io::Result<()> {
    let mut attr = ElemAttr {
        map_fd: map_fd(map),
        key: (key as *const K) as u64,
        value_or_next_key: (value as *const V) as u64,
        ..Default::default()
    };
    // SAFETY: `key` and `value` are live values of the map's key and value
    // types (the caller's guarantee); the kernel only reads them.
    unsafe { sys_bpf(bpf_cmd::BPF_MAP_UPDATE_ELEM, &mut attr) }.map(drop)
}

/// Removes `key` from `map`; `ENOENT` if it is not there. The caller
/// guarantees that `K` is the map's key type.
pub fn delete<K: aya::Pod>(map: &MapData, key: &K) -> io::Result<()> {
    let mut attr = ElemAttr {
        map_fd: map_fd(map),
        key: (key as *const K) as u64,
        ..Default::default()
    };
    // SAFETY: `key` is a live value of the map's key type (the caller's
    // guarantee); the kernel only reads it.
    unsafe { sys_bpf(bpf_cmd::BPF_MAP_DELETE_ELEM, &mut attr) }.map(drop)
}
