//! Raw bpf(2), for the commands aya 0.14 does not offer (batched map
//! operations, listing a map's keys, opening a link by id) and for
//! writing a map through a shared handle (`elem`): aya keeps its
//! wrapper private, and neither nix nor rustix wraps the syscall. Each
//! caller lays out its own `union bpf_attr` member.

use std::{
    io,
    os::fd::{AsFd, AsRawFd},
};

use aya::maps::MapData;
use aya_obj::generated::bpf_cmd;

/// bpf(2) `cmd` with `attr`: the kernel's return, an fd for the commands
/// that open one, else 0.
///
/// # Safety
/// `A` is laid out as `cmd` reads `union bpf_attr`, and every buffer
/// `attr` points to is live and as large as `cmd` reads or writes for the
/// object it names (keys and values of a map's sizes, `count` of them for
/// the batch commands).
pub(super) unsafe fn sys_bpf<A>(cmd: bpf_cmd, attr: &mut A) -> io::Result<i64> {
    // SAFETY: the caller's contract; the kernel writes only into the
    // buffers `cmd` names and into `attr` itself (within its size).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_int,
            (attr as *mut A).cast::<libc::c_void>(),
            std::mem::size_of::<A>() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// The descriptor bpf(2) names `map` by.
pub(super) fn map_fd(map: &MapData) -> u32 {
    map.fd().as_fd().as_raw_fd() as u32
}
