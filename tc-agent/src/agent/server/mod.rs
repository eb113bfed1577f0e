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
//!   [`SMALL_REQUEST`] are buffered at once, so memory stays bounded; an
//!   `apply-raw` line is followed by the policy text it announces, at most
//!   [`MAX_FILE_BYTES`](crate::policy::MAX_FILE_BYTES), under the same
//!   deadline and permit, exactly as long as announced and then the end of
//!   the client's sending side;
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
use nix::errno::Errno;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWriteExt},
    sync::{oneshot, OwnedSemaphorePermit, Semaphore},
    time::timeout_at,
};
use tracing::debug;

mod apply;
mod framing;
mod peer;
#[cfg(test)]
mod tests;

pub(in crate::agent) use self::peer::bind_socket;
pub use self::peer::SocketGroup;
use self::{framing::*, peer::*};
use super::{snapshot::Snapshot, *};
use crate::datapath::steps::Steps;

/// Largest request: a policy at the parser's own limit (6 MiB, see
/// [`crate::policy::MAX_FILE_BYTES`]) plus a quarter for JSON escaping
/// (`\n` and `\"` take two bytes). The largest policy the datapath holds
/// (1,024 channels, 65,536 prefixes per side and family) is about 3.1 MiB
/// as a request; see the tests.
pub const MAX_REQUEST: usize = (6 << 20) + (6 << 20) / 4;
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
/// Time from accept to the end of the request (the line, and an
/// `apply-raw`'s text and the end of its stream); a client still sending
/// after it is closed. A 20 MiB request takes milliseconds over a
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

/// The control socket's server: admission, framing, dispatch.
pub(super) struct Server {
    /// The agent, for applies and for live counters when it is free.
    agent: Arc<Mutex<Agent>>,
    /// The latest reports: reads answer from here without the agent lock.
    snapshot: Arc<Snapshot>,
    /// Interactions, top talkers and history: `map`, `top-talkers` and
    /// `history` answer from here without the agent lock.
    observer: Arc<Mutex<crate::observe::Observer>>,
    /// Who besides root may read; None: root only.
    group: Option<SocketGroup>,
    /// Open connections, for the cap and for shedding idle ones.
    slots: Mutex<Slots>,
    /// Permits to buffer a request larger than [`SMALL_REQUEST`].
    big: Arc<Semaphore>,
    /// Held by an apply from its reading of the policy to its answer:
    /// applies run one at a time, in the order their texts arrived (tokio's
    /// mutex is fair), and never parse several large files at once.
    applying: tokio::sync::Mutex<()>,
    /// The last policy file read, for the next apply to parse only the
    /// channels an edit changed.
    reuse: Arc<crate::policy::Reuse>,
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
        let observer = agent.lock().observer();
        Arc::new(Self {
            agent,
            snapshot,
            observer,
            group,
            slots: Mutex::new(Slots {
                open: 0,
                next_id: 0,
                reading: BTreeMap::new(),
            }),
            big: Arc::new(Semaphore::new(BIG_REQUESTS)),
            applying: tokio::sync::Mutex::new(()),
            reuse: Arc::default(),
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
                        e.raw_os_error().map(Errno::from_raw),
                        Some(Errno::EMFILE | Errno::ENFILE | Errno::ENOBUFS | Errno::ENOMEM)
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
        // An `apply-raw`'s steps, from the accept (logged at debug level).
        let mut steps = Steps::new("apply request");
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
        let (request, mut big_permit) = match read {
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
        let resp = match serde_json::from_slice::<Request>(&request) {
            Err(e) => failure(format!("bad request: {e}")),
            Ok(Request::ApplyRaw { file, bytes }) if peer.access == Access::Full => {
                drop(request);
                steps.step("line");
                let text = self
                    .read_text(&mut stream, buf, bytes, &mut big_permit, deadline)
                    .await;
                steps.step("text");
                let resp = match text {
                    Ok(text) => self.handle(Request::Apply { file, text }, peer).await,
                    Err(Some(refused)) => refused,
                    Err(None) => return,
                };
                steps.step("apply");
                steps.log();
                resp
            }
            Ok(req) => {
                drop((request, buf));
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
            Request::Map => {
                serde_json::to_value(super::observe::map(&self.observer)).map_err(Into::into)
            }
            Request::TopTalkers { to, from, n } => {
                super::observe::top_talkers(&self.observer, to.as_deref(), from.as_deref(), n)
                    .and_then(|r| serde_json::to_value(r).map_err(Into::into))
            }
            Request::History { name, since_s } => {
                super::observe::history(&self.observer, &name, since_s)
                    .and_then(|r| serde_json::to_value(r).map_err(Into::into))
            }
            Request::Events { since } => super::detect::events(&self.observer, since)
                .and_then(|r| serde_json::to_value(r).map_err(Into::into)),
            // Writing a policy out may take milliseconds for a large one:
            // off the runtime's threads.
            Request::Suggest { id, mode } => {
                let observer = self.observer.clone();
                tokio::task::spawn_blocking(move || {
                    super::detect::suggest(&observer, &id, mode)
                        .and_then(|r| serde_json::to_value(r).map_err(Into::into))
                })
                .await
                .unwrap_or_else(|e| Err(anyhow::anyhow!("internal error: {e}")))
            }
            Request::Apply { .. } | Request::ApplyRaw { .. } if peer.access != Access::Full => {
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
            Request::Apply { file, text } => return self.apply(file, text).await,
            // `connection` reads its text and hands it on as an `Apply`.
            Request::ApplyRaw { .. } => {
                return failure("internal error: an apply-raw request without its text".into())
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
/// `f` becomes an error response (`Err`); the lock (parking_lot's, which
/// has no poisoning) is released as the panic unwinds, so the next request
/// is served as usual.
pub(super) async fn locked<T: Send + 'static, R: Send + 'static>(
    agent: Arc<Mutex<T>>,
    f: impl FnOnce(&mut T) -> R + Send + 'static,
) -> Result<R, Response> {
    tokio::task::spawn_blocking(move || f(&mut agent.lock()))
        .await
        .map_err(|e| {
            error!(error = %e, "a request failed inside the agent");
            failure(format!("internal error: {e}"))
        })
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
