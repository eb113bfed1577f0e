//! The control socket: one JSON request per connection, one JSON response.
//!
//! Every local client is assumed hostile or broken:
//! - the peer's credentials (`SO_PEERCRED`, `SO_PEERGROUPS`) are checked
//!   before a byte is read: root may do everything, members of
//!   `--socket-group` may only read (`status`, `channels`), anyone else is
//!   refused;
//! - a request is one line of at most [`MAX_REQUEST`] bytes (a read-only
//!   peer's at most [`SMALL_REQUEST`]), and must arrive whole within
//!   [`REQUEST_DEADLINE`]; at most [`BIG_REQUESTS`] requests larger than
//!   [`SMALL_REQUEST`] are buffered at once, so memory stays bounded;
//! - at most [`MAX_CONNECTIONS`] connections are open; a new one past the
//!   cap is accepted and sheds the oldest connection that has not sent its
//!   request yet (one whose request is already waiting in its socket is
//!   still served), so idle connections cannot lock out `tc-agent status`;
//!   with every slot busy handling a request, the new one gets a `busy`
//!   error at once;
//! - out of file descriptors (EMFILE, ENFILE), accepting sheds every idle
//!   connection and retries once they are closed, or, with none to shed,
//!   backs off for [`ACCEPT_BACKOFF`] instead of spinning;
//! - `status` and `channels` never wait behind an apply (see
//!   [`Snapshot`]); a panic while handling a request becomes an error
//!   response, and the agent lock, which cannot be poisoned, stays usable.

use std::{
    collections::BTreeMap,
    io,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::Path,
};

use bytes::{Bytes, BytesMut};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWriteExt},
    sync::{oneshot, OwnedSemaphorePermit, Semaphore},
    time::timeout_at,
};
use tracing::debug;

use super::{snapshot::Snapshot, *};

/// Largest request: a policy at the parser's own limit (16 MiB, see
/// [`crate::policy::MAX_FILE_BYTES`]) plus a quarter for JSON escaping
/// (`\n` and `\"` take two bytes). A 1,024-channel, 65,536-prefix policy
/// is about 3.1 MiB as a request; see the tests.
pub const MAX_REQUEST: usize = 20 << 20;
/// Requests up to this size are buffered freely; `status` and `channels`
/// take a few dozen bytes. It is also the cap for read-only peers, who have
/// no use for more.
pub const SMALL_REQUEST: usize = 64 << 10;
/// Requests larger than [`SMALL_REQUEST`] buffered at once (applies run
/// one at a time anyway): bounds the memory hostile clients can pin to
/// about 2 × 32 MiB of buffers.
pub const BIG_REQUESTS: usize = 2;
/// Open connections at most.
pub const MAX_CONNECTIONS: usize = 64;
/// Time from accept to the end of the request line; a client still
/// sending after it is closed. A 20 MiB request takes milliseconds over a
/// Unix socket.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// Time to write the response; a client that does not read it is closed.
pub const WRITE_DEADLINE: Duration = Duration::from_secs(10);
/// Pause after accept fails for want of file descriptors or memory.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Pause after accept fails for want of file descriptors and idle
/// connections were shed to free some: time for them to close.
const SHED_PAUSE: Duration = Duration::from_millis(10);
/// How long `channels` waits for the agent lock to read live counters
/// before it answers from the last sample instead: long enough for a
/// sample (milliseconds), much shorter than an apply.
const CHANNELS_LOCK_WAIT: Duration = Duration::from_millis(50);
/// Bytes read from a socket at a time.
const READ_CHUNK: usize = 64 << 10;
/// The error a read-only peer gets for an apply.
pub const APPLY_NEEDS_ROOT: &str =
    "permission denied: apply needs root (uid 0); members of --socket-group may only read";

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
struct Peer {
    /// What it may do.
    access: Access,
    /// Its uid at `connect`, for logs.
    uid: u32,
    /// Its gid at `connect`, for logs.
    gid: u32,
}

/// What a peer may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Access {
    /// Root: every request.
    Full,
    /// A member of `--socket-group`: `status` and `channels`.
    ReadOnly,
}

/// Root may do everything; a peer whose gid or one of whose supplementary
/// groups is the socket group may read; anyone else nothing.
pub(super) fn authorize(
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
/// Linux 4.13+).
fn peer_groups(stream: &UnixStream) -> io::Result<Vec<u32>> {
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
        if e.raw_os_error() != Some(libc::ERANGE) || n <= groups.len() || n > 65_536 {
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
pub(super) fn bind_socket(config: &AgentConfig) -> Result<UnixListener> {
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
fn open_dir_to_group(
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

/// A warning that can be triggered by clients: logged at most once a
/// second, with how many were held back since.
struct Throttle {
    /// When the next line may be logged, and how many were held back.
    state: Mutex<(Instant, u64)>,
}

impl Throttle {
    fn new() -> Self {
        Self {
            state: Mutex::new((Instant::now(), 0)),
        }
    }

    /// Some(lines held back since the last one) if this one may be logged.
    fn pass(&self) -> Option<u64> {
        let mut s = self.state.lock();
        let now = Instant::now();
        if now < s.0 {
            s.1 += 1;
            return None;
        }
        let held = s.1;
        *s = (now + Duration::from_secs(1), 0);
        Some(held)
    }
}

/// Connections open now, and which of them may be shed.
struct Slots {
    /// Open connections (reading, being handled, or answering).
    open: usize,
    /// The next connection's id; ids only grow, so the first entry of
    /// `reading` is the oldest connection.
    next_id: u64,
    /// Connections still waiting for their request, by id. Dropping the
    /// sender sheds that connection.
    reading: BTreeMap<u64, oneshot::Sender<()>>,
}

/// One connection's place in [`Slots`]; freed on drop.
struct Slot {
    /// The server, whose slots this is one of.
    server: Arc<Server>,
    /// Key in `reading`.
    id: u64,
}

impl Slot {
    /// The request has been read: this connection is no longer sheddable.
    fn done_reading(&self) {
        self.server.slots.lock().reading.remove(&self.id);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = self.server.slots.lock();
        s.open -= 1;
        s.reading.remove(&self.id);
    }
}

/// Why reading a request stopped short.
#[derive(Debug)]
pub(super) enum ReadError {
    /// More than the cap without a newline.
    TooLarge,
    /// The peer closed before sending anything.
    Closed,
    /// The socket failed.
    Io(io::Error),
}

/// The control socket's server: admission, framing, dispatch.
pub(super) struct Server {
    /// The agent, for applies and for live counters when it is free.
    agent: Arc<Mutex<Agent>>,
    /// The latest reports: reads answer from here without the agent lock.
    snapshot: Arc<Snapshot>,
    /// Who besides root may read; None: root only.
    group: Option<SocketGroup>,
    /// Open connections, for the cap and for shedding idle ones.
    slots: Mutex<Slots>,
    /// Permits to buffer a request larger than [`SMALL_REQUEST`].
    big: Arc<Semaphore>,
    /// Refused peers (wrong uid and group).
    refused_log: Throttle,
    /// Oversized requests.
    oversize_log: Throttle,
    /// Clients that started a request and did not finish it in time.
    slow_log: Throttle,
    /// Connections shed or refused at the cap.
    shed_log: Throttle,
    /// Failed accepts.
    accept_log: Throttle,
}

impl Server {
    pub(super) fn new(
        agent: Arc<Mutex<Agent>>,
        snapshot: Arc<Snapshot>,
        group: Option<SocketGroup>,
    ) -> Arc<Self> {
        Arc::new(Self {
            agent,
            snapshot,
            group,
            slots: Mutex::new(Slots {
                open: 0,
                next_id: 0,
                reading: BTreeMap::new(),
            }),
            big: Arc::new(Semaphore::new(BIG_REQUESTS)),
            refused_log: Throttle::new(),
            oversize_log: Throttle::new(),
            slow_log: Throttle::new(),
            shed_log: Throttle::new(),
            accept_log: Throttle::new(),
        })
    }

    /// Accepts connections until the future is dropped (at shutdown).
    pub(super) async fn serve(self: Arc<Self>, listener: UnixListener) -> std::convert::Infallible {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => match self.admit() {
                    Some((slot, shed)) => {
                        tokio::spawn(self.clone().connection(stream, slot, shed));
                    }
                    None => {
                        if let Some(held) = self.shed_log.pass() {
                            warn!(
                                max = MAX_CONNECTIONS,
                                held_back = held,
                                "connection refused: every slot is busy with a request"
                            );
                        }
                        // A fresh socket's buffer is empty: this cannot block.
                        let _ = stream.try_write(&line(&failure(format!(
                            "busy: {MAX_CONNECTIONS} requests in progress; try again"
                        ))));
                    }
                },
                Err(e) => {
                    let exhausted = matches!(
                        e.raw_os_error(),
                        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                    );
                    if let Some(held) = self.accept_log.pass() {
                        warn!(error = %e, held_back = held, "accept failed");
                    }
                    if exhausted {
                        // Idle connections may be what holds the
                        // descriptors: shed them all, and retry as soon as
                        // they are closed; with none to shed, back off.
                        let shed = std::mem::take(&mut self.slots.lock().reading).len();
                        tokio::time::sleep(if shed > 0 { SHED_PAUSE } else { ACCEPT_BACKOFF })
                            .await;
                    } else {
                        tokio::task::yield_now().await;
                    }
                }
            }
        }
    }

    /// Gives a new connection a slot, shedding the oldest connection that
    /// is still waiting for its request if all are taken. None if every
    /// slot is busy with a request already read.
    fn admit(self: &Arc<Self>) -> Option<(Slot, oneshot::Receiver<()>)> {
        let mut s = self.slots.lock();
        if s.open >= MAX_CONNECTIONS {
            // The shed connection frees its slot when its task next runs;
            // until then `open` may exceed the cap by the connections shed
            // and not yet closed.
            let (_, shed) = s.reading.pop_first()?;
            drop(shed);
            if let Some(held) = self.shed_log.pass() {
                warn!(
                    max = MAX_CONNECTIONS,
                    held_back = held,
                    "too many connections: closing the oldest idle one"
                );
            }
        }
        let id = s.next_id;
        s.next_id += 1;
        s.open += 1;
        let (tx, rx) = oneshot::channel();
        s.reading.insert(id, tx);
        Some((
            Slot {
                server: self.clone(),
                id,
            },
            rx,
        ))
    }

    /// One connection: check the peer, read one request, answer it.
    async fn connection(
        self: Arc<Self>,
        mut stream: UnixStream,
        slot: Slot,
        mut shed: oneshot::Receiver<()>,
    ) {
        let deadline = tokio::time::Instant::now() + REQUEST_DEADLINE;
        let Some(peer) = self.check_peer(&stream) else {
            let msg = match &self.group {
                None => "permission denied: only root may use the agent socket".to_string(),
                Some(g) => format!(
                    "permission denied: only root and members of --socket-group {} may use the agent socket",
                    g.name
                ),
            };
            reply(&mut stream, &failure(msg)).await;
            return;
        };
        let max = match peer.access {
            Access::Full => MAX_REQUEST,
            Access::ReadOnly => SMALL_REQUEST,
        };
        let mut buf = BytesMut::new();
        // Biased: a connection told to go that has its request waiting in
        // the socket (a client connects and writes at once) is still served;
        // only one that would have to wait for more is closed.
        let read = tokio::select! {
            biased;
            r = timeout_at(deadline, read_request(&mut stream, &mut buf, max, &self.big)) => r,
            _ = &mut shed => {
                debug!("closing an idle connection: too many connections");
                return;
            }
        };
        slot.done_reading();
        let (request, _big_permit) = match read {
            Ok(Ok(r)) => r,
            Err(_) if buf.is_empty() => {
                debug!(
                    timeout_s = REQUEST_DEADLINE.as_secs(),
                    "closing an idle connection"
                );
                return;
            }
            Err(_) => {
                if let Some(held) = self.slow_log.pass() {
                    warn!(
                        received = buf.len(),
                        timeout_s = REQUEST_DEADLINE.as_secs(),
                        held_back = held,
                        "closing a connection that did not finish its request in time"
                    );
                }
                return;
            }
            Ok(Err(ReadError::TooLarge)) => {
                if let Some(held) = self.oversize_log.pass() {
                    warn!(
                        uid = peer.uid,
                        gid = peer.gid,
                        max,
                        held_back = held,
                        "refused an oversized request"
                    );
                }
                let mut msg = format!("request too large (max {max} bytes)");
                if peer.access == Access::ReadOnly {
                    msg.push_str(": only root may apply a policy");
                }
                drop(buf);
                reply(&mut stream, &failure(msg)).await;
                return;
            }
            Ok(Err(ReadError::Closed)) => return,
            Ok(Err(ReadError::Io(e))) => {
                debug!(error = %e, "reading a request failed");
                return;
            }
        };
        drop(buf);
        let resp = match serde_json::from_slice::<Request>(&request) {
            Err(e) => failure(format!("bad request: {e}")),
            Ok(req) => {
                drop(request);
                self.handle(req, peer).await
            }
        };
        reply(&mut stream, &resp).await;
    }

    /// The peer, or None (logged) if it may do nothing.
    fn check_peer(&self, stream: &UnixStream) -> Option<Peer> {
        let cred = match stream.peer_cred() {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "cannot read the peer's credentials; refusing it");
                return None;
            }
        };
        let (uid, gid) = (cred.uid(), cred.gid());
        // Supplementary groups only matter for a non-root peer, with a group set.
        let groups = match (&self.group, uid) {
            (Some(_), 1..) => peer_groups(stream).unwrap_or_else(|e| {
                debug!(error = %e, "cannot read the peer's groups; using its gid alone");
                vec![]
            }),
            _ => vec![],
        };
        let access = authorize(uid, gid, &groups, self.group.as_ref());
        if access.is_none() {
            if let Some(held) = self.refused_log.pass() {
                warn!(
                    uid,
                    gid,
                    pid = cred.pid(),
                    held_back = held,
                    "refused a peer that is neither root nor in --socket-group"
                );
            }
        }
        Some(Peer {
            access: access?,
            uid,
            gid,
        })
    }

    async fn handle(&self, req: Request, peer: Peer) -> Response {
        let data = match req {
            Request::Status => serde_json::to_value(self.snapshot.status()).map_err(Into::into),
            Request::Channels => self.channels().await,
            Request::Apply { .. } if peer.access != Access::Full => {
                if let Some(held) = self.refused_log.pass() {
                    warn!(
                        uid = peer.uid,
                        gid = peer.gid,
                        held_back = held,
                        "refused an apply from a read-only peer"
                    );
                }
                return failure(APPLY_NEEDS_ROOT.to_string());
            }
            req @ Request::Apply { .. } => {
                let snapshot = self.snapshot.clone();
                return locked(self.agent.clone(), move |agent| {
                    let r = agent.handle(req);
                    agent.publish(&snapshot);
                    r
                })
                .await;
            }
        };
        to_response(data)
    }

    /// `channels`: live counters if the agent lock is free within
    /// [`CHANNELS_LOCK_WAIT`] (so counts are exact right after traffic),
    /// else the last sample's report, without waiting behind an apply.
    async fn channels(&self) -> Result<serde_json::Value> {
        let (agent, snapshot) = (self.agent.clone(), self.snapshot.clone());
        let fresh = tokio::task::spawn_blocking(move || {
            let Some(mut agent) = agent.try_lock_for(CHANNELS_LOCK_WAIT) else {
                return Ok(None);
            };
            let report = agent.channels()?;
            let value = serde_json::to_value(&report)?;
            snapshot.set_channels(report);
            anyhow::Ok(Some(value))
        })
        .await
        .map_err(|e| anyhow::anyhow!("internal error: {e}"))??;
        match fresh {
            Some(v) => Ok(v),
            None => Ok(serde_json::to_value(&*self.snapshot.channels())?),
        }
    }
}

/// Runs `f` on the agent under its lock on a blocking thread. A panic in
/// `f` becomes an error response; the lock (parking_lot's, which has no
/// poisoning) is released as the panic unwinds, so the next request is
/// served as usual.
pub(super) async fn locked<T: Send + 'static>(
    agent: Arc<Mutex<T>>,
    f: impl FnOnce(&mut T) -> Result<serde_json::Value> + Send + 'static,
) -> Response {
    match tokio::task::spawn_blocking(move || f(&mut agent.lock())).await {
        Ok(r) => to_response(r),
        Err(e) => {
            error!(error = %e, "a request failed inside the agent");
            failure(format!("internal error: {e}"))
        }
    }
}

fn to_response(r: Result<serde_json::Value>) -> Response {
    match r {
        Ok(data) => Response {
            ok: true,
            error: None,
            data,
        },
        Err(e) => failure(format!("{e:#}")),
    }
}

fn failure(error: String) -> Response {
    Response {
        ok: false,
        error: Some(error),
        data: serde_json::Value::Null,
    }
}

/// A response as one JSON line.
fn line(resp: &Response) -> Vec<u8> {
    let mut out = serde_json::to_vec(resp).unwrap_or_default();
    out.push(b'\n');
    out
}

/// Writes `resp`, giving up after [`WRITE_DEADLINE`].
async fn reply(stream: &mut UnixStream, resp: &Response) {
    let out = line(resp);
    match tokio::time::timeout(WRITE_DEADLINE, stream.write_all(&out)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!(error = %e, "writing a response failed"),
        Err(_) => debug!(
            timeout_s = WRITE_DEADLINE.as_secs(),
            "closing a connection that did not read its response"
        ),
    }
}

/// Reads one request line into `buf`: up to the first newline, or to the
/// end of the stream, of at most `max` bytes. Never holds more than
/// `max + 1` bytes; past [`SMALL_REQUEST`] it first takes a permit from
/// `big`, kept with the request until it is handled.
pub(super) async fn read_request<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    max: usize,
    big: &Arc<Semaphore>,
) -> Result<(Bytes, Option<OwnedSemaphorePermit>), ReadError> {
    let mut permit = None;
    // Bytes already searched for a newline: each byte is looked at once.
    let mut scanned = 0;
    loop {
        if let Some(i) = buf[scanned..].iter().position(|&b| b == b'\n') {
            return Ok((buf.split_to(scanned + i).freeze(), permit));
        }
        scanned = buf.len();
        if buf.len() > max {
            return Err(ReadError::TooLarge);
        }
        if buf.len() >= SMALL_REQUEST && permit.is_none() {
            permit = Some(
                big.clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| ReadError::Closed)?,
            );
        }
        let room = (max + 1 - buf.len()).min(READ_CHUNK);
        buf.reserve(room);
        let n = (&mut *r)
            .take(room as u64)
            .read_buf(buf)
            .await
            .map_err(ReadError::Io)?;
        if n == 0 {
            // The end of the stream ends a request too (as `read_line` did).
            return if buf.is_empty() {
                Err(ReadError::Closed)
            } else {
                Ok((buf.split().freeze(), permit))
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn big() -> Arc<Semaphore> {
        Arc::new(Semaphore::new(BIG_REQUESTS))
    }

    async fn read(mut input: &[u8], max: usize) -> (Result<Bytes, ReadError>, usize) {
        let mut buf = BytesMut::new();
        let r = read_request(&mut input, &mut buf, max, &big()).await;
        (r.map(|(b, _)| b), input.len())
    }

    #[tokio::test]
    async fn a_request_ends_at_its_newline_or_at_the_end_of_the_stream() {
        let (r, rest) = read(b"{\"cmd\":\"status\"}\nmore", 100).await;
        assert_eq!(&r.unwrap()[..], b"{\"cmd\":\"status\"}");
        assert_eq!(rest, 0, "what follows the line may have been read");
        let (r, _) = read(b"{\"cmd\":\"status\"}", 100).await;
        assert_eq!(&r.unwrap()[..], b"{\"cmd\":\"status\"}");
        assert!(matches!(read(b"", 100).await.0, Err(ReadError::Closed)));
    }

    #[tokio::test]
    async fn a_request_of_the_cap_fits_and_one_byte_more_does_not() {
        let mut exact = vec![b'x'; 1000];
        exact.push(b'\n');
        assert_eq!(read(&exact, 1000).await.0.unwrap().len(), 1000);
        let over = vec![b'x'; 1001];
        assert!(matches!(
            read(&over, 1000).await.0,
            Err(ReadError::TooLarge)
        ));
    }

    #[tokio::test]
    async fn sixty_four_mib_without_a_newline_is_refused_after_the_cap() {
        let input = vec![b'a'; 64 << 20];
        let (r, rest) = read(&input, MAX_REQUEST).await;
        assert!(matches!(r, Err(ReadError::TooLarge)));
        // It stopped reading one byte past the cap.
        assert_eq!(input.len() - rest, MAX_REQUEST + 1);
    }

    #[tokio::test]
    async fn big_requests_wait_for_a_permit() {
        let big = big();
        let held: Vec<_> = (0..BIG_REQUESTS)
            .map(|_| big.clone().try_acquire_owned().unwrap())
            .collect();
        let input = vec![b'x'; SMALL_REQUEST * 2];
        let mut r = &input[..];
        let mut buf = BytesMut::new();
        let waited = tokio::time::timeout(
            Duration::from_millis(100),
            read_request(&mut r, &mut buf, MAX_REQUEST, &big),
        )
        .await;
        assert!(waited.is_err(), "read past the small size without a permit");
        assert_eq!(
            buf.len(),
            SMALL_REQUEST,
            "buffered more than the small size"
        );
        drop(held);
        let (req, permit) = read_request(&mut r, &mut buf, MAX_REQUEST, &big)
            .await
            .unwrap();
        assert_eq!(req.len(), SMALL_REQUEST * 2);
        assert!(permit.is_some());
        drop(permit);
        assert_eq!(big.available_permits(), BIG_REQUESTS);
    }

    /// The apply request of a 1,024-channel policy with 65,536 distinct
    /// IPv4 and 65,536 IPv6 source prefixes (quoted, as IPv6 often is).
    fn big_apply() -> String {
        let mut text = String::from("channels:\n");
        for i in 0..1024u32 {
            text.push_str(&format!("  - name: channel-{i:04}\n    from: ["));
            for j in 0..64u32 {
                let n = i * 64 + j;
                text.push_str(&format!(
                    "\"198.{}.{}.{}/32\", \"2001:db8:{:x}:{:x}::/64\", ",
                    18 + (n >> 16),
                    (n >> 8) & 0xff,
                    n & 0xff,
                    n >> 16,
                    n & 0xffff
                ));
            }
            text.push_str(&format!(
                "]\n    protocol: udp\n    ports: [{}]\n    limit: {{bandwidth: 100Mbit, burst: 1MiB}}\n",
                1000 + i
            ));
        }
        let p = crate::policy::Policy::parse(&text, "big.yaml").unwrap();
        assert_eq!(p.channels.len(), 1024);
        serde_json::to_string(&Request::Apply {
            file: "big.yaml".into(),
            text,
        })
        .unwrap()
    }

    #[test]
    fn the_cap_fits_the_largest_policies_with_room_to_spare() {
        let req = big_apply();
        eprintln!(
            "1,024 channels, 65,536 + 65,536 prefixes: {} bytes as a request",
            req.len()
        );
        assert!(req.len() < MAX_REQUEST / 4, "{}", req.len());
        // A policy at the parser's own limit, with a newline every 66
        // bytes and quotes, still fits as a request.
        let line = "# \"padding\" padding padding padding padding padding padding pad\n";
        let text = line.repeat(crate::policy::MAX_FILE_BYTES / line.len());
        assert!(text.len() <= crate::policy::MAX_FILE_BYTES);
        let req = serde_json::to_string(&Request::Apply {
            file: "p.yaml".into(),
            text,
        })
        .unwrap();
        eprintln!("a 16 MiB policy: {} bytes as a request", req.len());
        assert!(req.len() < MAX_REQUEST, "{}", req.len());
    }

    #[test]
    fn root_does_everything_the_group_reads_others_nothing() {
        let g = SocketGroup {
            name: "tc".into(),
            gid: 500,
        };
        assert_eq!(authorize(0, 0, &[], None), Some(Access::Full));
        assert_eq!(authorize(0, 7, &[], Some(&g)), Some(Access::Full));
        assert_eq!(authorize(1000, 500, &[], Some(&g)), Some(Access::ReadOnly));
        assert_eq!(
            authorize(1000, 1000, &[4, 500], Some(&g)),
            Some(Access::ReadOnly)
        );
        assert_eq!(authorize(1000, 1000, &[4], Some(&g)), None);
        assert_eq!(authorize(1000, 500, &[500], None), None);
    }

    #[test]
    fn socket_groups_resolve_by_name_or_number() {
        assert_eq!(SocketGroup::resolve("0").unwrap().gid, 0);
        assert_eq!(SocketGroup::resolve("root").unwrap().gid, 0);
        let e = SocketGroup::resolve("no-such-group-here").unwrap_err();
        assert!(e.to_string().contains("no such group"), "{e}");
    }

    #[tokio::test]
    async fn peer_groups_are_the_peers_supplementary_groups() {
        let (a, _b) = UnixStream::pair().unwrap();
        let mut ours = nix::unistd::getgroups()
            .unwrap()
            .into_iter()
            .map(|g| g.as_raw())
            .collect::<Vec<_>>();
        let mut theirs = peer_groups(&a).unwrap();
        ours.sort_unstable();
        theirs.sort_unstable();
        assert_eq!(ours, theirs);
    }

    #[tokio::test]
    async fn a_panicking_request_leaves_the_lock_usable() {
        let state = Arc::new(Mutex::new(1u32));
        let r = locked(state.clone(), |n: &mut u32| {
            *n += 1;
            panic!("boom in a request")
        })
        .await;
        assert!(!r.ok);
        assert!(
            r.error.as_deref().unwrap().starts_with("internal error:"),
            "{r:?}"
        );
        let r = locked(state.clone(), |n: &mut u32| Ok((*n).into())).await;
        assert!(r.ok, "{r:?}");
        assert_eq!(r.data, 2);
    }

    fn config(state_dir: &Path, socket: PathBuf, group: Option<SocketGroup>) -> AgentConfig {
        AgentConfig {
            ifaces: vec![],
            xdp: vec![],
            policy: None,
            pin_dir: PathBuf::new(),
            state_dir: state_dir.to_path_buf(),
            socket,
            sample_every: Duration::from_secs(1),
            socket_group: group,
            detach_on_exit: false,
        }
    }

    fn mode(p: &Path) -> (u32, u32) {
        let m = std::fs::metadata(p).unwrap();
        (m.mode() & 0o7777, m.gid())
    }

    #[tokio::test]
    async fn the_socket_group_reaches_the_socket_and_nothing_else() {
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: chown needs root");
            return;
        }
        let dir = std::env::temp_dir().join(format!("tc-agent-sock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::write(dir.join("agent.lock"), "").unwrap();
        std::fs::set_permissions(
            dir.join("agent.lock"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let group = SocketGroup::resolve("65534").unwrap();

        // Root only: the socket is 0600 and the directory stays as it was.
        let socket = dir.join("agent.sock");
        drop(bind_socket(&config(&dir, socket.clone(), None)).unwrap());
        assert_eq!(mode(&socket).0, 0o600);
        assert_eq!(mode(&dir).0, 0o700);

        // With a group, in the state directory: socket 0660 and directory
        // 0710 with the group, the lock private.
        drop(bind_socket(&config(&dir, socket.clone(), Some(group.clone()))).unwrap());
        assert_eq!(mode(&socket), (0o660, 65534));
        assert_eq!(mode(&dir), (0o710, 65534));
        assert_eq!(mode(&dir.join("agent.lock")).0, 0o600);

        // Elsewhere, the directory is not the agent's to change.
        let other = dir.join("elsewhere");
        std::fs::create_dir(&other).unwrap();
        std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o755)).unwrap();
        let socket = other.join("agent.sock");
        drop(bind_socket(&config(&dir, socket.clone(), Some(group))).unwrap());
        assert_eq!(mode(&socket), (0o660, 65534));
        assert_eq!(mode(&other).0, 0o755);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn throttled_warnings_count_what_they_held_back() {
        let t = Throttle::new();
        assert_eq!(t.pass(), Some(0));
        assert_eq!(t.pass(), None);
        assert_eq!(t.pass(), None);
        t.state.lock().0 = Instant::now();
        assert_eq!(t.pass(), Some(2));
    }
}
