//! Who may talk to the agent: peer credentials, `--socket-group`, and
//! the socket file's and state directory's permissions.

use super::*;

/// `--socket-group`: the group whose members may run read-only requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketGroup {
    /// The name the operator gave, for logs and errors.
    pub name: String,
    /// Its gid: the socket file's group, and what peers are matched against.
    pub gid: u32,
}

impl SocketGroup {
    /// Looks `name` up in the system's group database (or takes a numeric gid).
    pub fn resolve(name: &str) -> Result<Self> {
        if let Ok(gid) = name.parse::<u32>() {
            return Ok(Self {
                name: name.to_string(),
                gid,
            });
        }
        match nix::unistd::Group::from_name(name) {
            Ok(Some(g)) => Ok(Self {
                name: name.to_string(),
                gid: g.gid.as_raw(),
            }),
            Ok(None) => {
                bail!("--socket-group {name}: no such group (see /etc/group, `getent group`)")
            }
            Err(e) => bail!("--socket-group {name}: looking the group up failed: {e}"),
        }
    }
}

/// A connected client, as the kernel vouches for it.
#[derive(Debug, Clone, Copy)]
pub(in crate::agent) struct Peer {
    /// What it may do.
    pub(in crate::agent) access: Access,
    /// Its uid at `connect`, for logs.
    pub(in crate::agent) uid: u32,
    /// Its gid at `connect`, for logs.
    pub(in crate::agent) gid: u32,
}

/// What a peer may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::agent) enum Access {
    /// Root: every request.
    Full,
    /// A member of `--socket-group`: the read-only requests (`status`,
    /// `channels`, `map`, `top-talkers`, `history`).
    ReadOnly,
}

/// Root may do everything; a peer whose gid or one of whose supplementary
/// groups is the socket group may read; anyone else nothing.
pub(in crate::agent) fn authorize(
    uid: u32,
    gid: u32,
    groups: &[u32],
    group: Option<&SocketGroup>,
) -> Option<Access> {
    if uid == 0 {
        return Some(Access::Full);
    }
    let g = group?.gid;
    (gid == g || groups.contains(&g)).then_some(Access::ReadOnly)
}

/// The peer's supplementary groups as of its `connect` (`SO_PEERGROUPS`,
/// Linux 4.13+). Raw `getsockopt`: neither nix nor rustix wraps
/// `SO_PEERGROUPS` (a variable-length answer with an `ERANGE` retry).
pub(in crate::agent) fn peer_groups(stream: &UnixStream) -> io::Result<Vec<u32>> {
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    for _ in 0..2 {
        let mut len = (groups.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: the buffer is `len` bytes long and the kernel writes at
        // most that many; the fd is open for the call's duration.
        let r = unsafe {
            libc::getsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let n = len as usize / std::mem::size_of::<libc::gid_t>();
        if r == 0 {
            groups.truncate(n);
            return Ok(groups);
        }
        let e = io::Error::last_os_error();
        // Too small: `len` now says how much is needed (at most NGROUPS_MAX).
        if e.raw_os_error().map(Errno::from_raw) != Some(Errno::ERANGE)
            || n <= groups.len()
            || n > 65_536
        {
            return Err(e);
        }
        groups.resize(n, 0);
    }
    Err(io::Error::other("the peer's groups kept changing"))
}

/// Binds the control socket: mode 0600 (root only), or 0660 owned by
/// `--socket-group`. When the socket lives in the state directory (the
/// default layout), the directory becomes 0710 with that group, so members
/// can reach the socket and nothing else; every other file there is made
/// 0600 (a member able to open `agent.lock` could flock it and keep the
/// next agent from starting). A socket elsewhere keeps its directory, which
/// must then let the group through; a warning says when it does not.
pub(in crate::agent) fn bind_socket(config: &AgentConfig) -> Result<UnixListener> {
    let path = config.socket.as_path();
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(dir) = dir {
        std::fs::create_dir_all(dir)?;
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        bail!(
            "another tc-agent is already serving {}; stop it or use --socket",
            path.display()
        );
    }
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path)
        .with_context(|| format!("binding control socket {}", path.display()))?;
    let Some(group) = &config.socket_group else {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        return Ok(l);
    };
    std::os::unix::fs::chown(path, Some(0), Some(group.gid))
        .with_context(|| format!("giving {} to group {}", path.display(), group.name))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    if let Some(dir) = dir {
        open_dir_to_group(dir, path, &config.state_dir, group)?;
    }
    info!(socket = %path.display(), group = %group.name, gid = group.gid, "members of the socket group may run status and channels");
    Ok(l)
}

/// Lets `group` reach the socket in `dir`: see [`bind_socket`].
pub(in crate::agent) fn open_dir_to_group(
    dir: &Path,
    socket: &Path,
    state_dir: &Path,
    group: &SocketGroup,
) -> Result<()> {
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if same(dir, state_dir) {
        for entry in std::fs::read_dir(dir)? {
            let p = entry?.path();
            if p != socket && !p.is_dir() {
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))?;
            }
        }
        std::os::unix::fs::chown(dir, Some(0), Some(group.gid))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o710))?;
        return Ok(());
    }
    let m = std::fs::metadata(dir)?;
    let mode = m.mode();
    if mode & 0o001 == 0 && !(mode & 0o010 != 0 && m.gid() == group.gid) {
        warn!(
            dir = %dir.display(),
            mode = format!("{:o}", mode & 0o7777),
            group = %group.name,
            "members of the socket group cannot reach the socket: the directory is not searchable by them"
        );
    }
    Ok(())
}
