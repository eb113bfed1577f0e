//! A small blocking rtnetlink client: one request, its replies, the
//! kernel's answer. The qdisc code runs in synchronous code (an apply holds
//! the agent's lock, sometimes inside the runtime's own thread), so a
//! blocking socket fits better than an async client and its runtime.

use std::{fmt, io};

use netlink_packet_core::{
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NlasIterator, NLM_F_ACK,
    NLM_F_ACK_TLVS, NLM_F_CAPPED, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// `NLMSGERR_ATTR_MSG`: the extended ACK's human-readable reason.
const NLMSGERR_ATTR_MSG: u16 = 1;
/// Size of `struct nlmsghdr`, which a capped error echoes.
const NLMSG_HDR_LEN: usize = 16;
/// Times a dump the kernel marks inconsistent (`NLM_F_DUMP_INTR`, the list
/// changed while it was read) is taken again before giving up.
const DUMP_TRIES: usize = 3;

/// What went wrong talking to the kernel over rtnetlink.
#[derive(Debug, thiserror::Error)]
pub enum RtnlError {
    /// The kernel refused the request.
    #[error("{0}")]
    Refused(Refusal),
    /// The socket itself failed (opening, sending, receiving).
    #[error("rtnetlink socket: {0}")]
    Io(#[from] io::Error),
    /// The kernel's answer could not be parsed.
    #[error("unreadable rtnetlink message: {0}")]
    Decode(String),
    /// A dump kept changing while it was read.
    #[error("the kernel's list kept changing while it was read ({DUMP_TRIES} tries)")]
    Interrupted,
}

/// A request the kernel answered with an error.
#[derive(Debug)]
pub struct Refusal {
    /// The errno, which callers match on (`ENOENT`, `EEXIST`, …).
    pub errno: i32,
    /// The kernel's extended ACK message, when it gave one (what `tc`
    /// prints after `Error:`), e.g. "Specified qdisc kind is unknown.".
    pub message: Option<String>,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // "ENOENT: No such file or directory": the name to search for, and words.
        let errno = nix::errno::Errno::from_raw(self.errno);
        match &self.message {
            Some(m) => write!(f, "{} ({errno})", m.trim_end_matches('.')),
            None => write!(f, "{errno}"),
        }
    }
}

/// A route netlink socket in the calling thread's network namespace.
pub struct Rtnl {
    /// The bound `NETLINK_ROUTE` socket, blocking.
    socket: Socket,
    /// Sequence number of the last request, to match replies to it.
    seq: u32,
}

impl Rtnl {
    /// Opens a socket that asks for extended ACKs (the kernel's reason in
    /// words) and capped errors (no echo of the whole request).
    pub fn open() -> Result<Self, RtnlError> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        // Both are best-effort: older kernels answer without them.
        let _ = socket.set_ext_ack(true);
        let _ = socket.set_cap_ack(true);
        Ok(Self { socket, seq: 0 })
    }

    /// Sends `msg` with `flags` (besides `NLM_F_REQUEST | NLM_F_ACK`) and
    /// waits for the kernel's ACK. Returns the messages that came before
    /// it (a `GET` of one object answers with that object).
    pub fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, RtnlError> {
        self.exchange(msg, NLM_F_REQUEST | NLM_F_ACK | flags)
            .map(|(replies, _)| replies)
    }

    /// Dumps every object of `msg`'s kind (`NLM_F_DUMP`), again if the
    /// kernel says the list changed while it was read.
    pub fn dump(
        &mut self,
        msg: RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>, RtnlError> {
        for _ in 0..DUMP_TRIES {
            let (replies, interrupted) = self.exchange(msg.clone(), NLM_F_REQUEST | NLM_F_DUMP)?;
            if !interrupted {
                return Ok(replies);
            }
        }
        Err(RtnlError::Interrupted)
    }

    /// One request and every reply up to the final ACK, error or
    /// `NLMSG_DONE`; also whether any reply said the dump was interrupted.
    fn exchange(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<(Vec<RouteNetlinkMessage>, bool), RtnlError> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.seq;
        let mut req = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        req.finalize();
        let mut buf = vec![0; req.buffer_len()];
        req.serialize(&mut buf);
        self.socket.send_to(&buf, &SocketAddr::new(0, 0), 0)?;

        let mut replies = Vec::new();
        let mut interrupted = false;
        loop {
            let (data, _) = self.socket.recv_from_full()?;
            let mut rest = &data[..];
            while !rest.is_empty() {
                let len = NetlinkBuffer::new_checked(rest)
                    .map_err(|e| RtnlError::Decode(e.to_string()))?
                    .length() as usize;
                // Messages are 4-byte aligned within a datagram.
                let (one, next) = rest.split_at(len);
                rest = next
                    .get(len.next_multiple_of(4) - len..)
                    .unwrap_or_default();
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(one)
                    .map_err(|e| RtnlError::Decode(e.to_string()))?;
                if reply.header.sequence_number != self.seq {
                    continue;
                }
                interrupted |= reply.header.flags & NLM_F_DUMP_INTR != 0;
                match reply.payload {
                    NetlinkPayload::InnerMessage(m) => replies.push(m),
                    NetlinkPayload::Done(d) if d.code < 0 => {
                        return Err(RtnlError::Refused(Refusal {
                            errno: -d.code,
                            message: None,
                        }))
                    }
                    NetlinkPayload::Done(_) => return Ok((replies, interrupted)),
                    NetlinkPayload::Error(e) => match e.code {
                        None => return Ok((replies, interrupted)),
                        Some(code) => {
                            return Err(RtnlError::Refused(Refusal {
                                errno: -code.get(),
                                message: extack_message(reply.header.flags, &e.header),
                            }))
                        }
                    },
                    _ => {}
                }
            }
        }
    }
}

/// The reason in words from an error's extended ACK: after the echoed
/// request (only its header when capped) come attributes, if the kernel
/// set `NLM_F_ACK_TLVS`.
fn extack_message(flags: u16, echoed: &[u8]) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    let skip = if flags & NLM_F_CAPPED != 0 {
        NLMSG_HDR_LEN
    } else {
        NetlinkBuffer::new_checked(echoed).ok()?.length() as usize
    };
    NlasIterator::new(echoed.get(skip..)?)
        .filter_map(Result::ok)
        .find(|nla| nla.kind() == NLMSGERR_ATTR_MSG)
        .map(|nla| {
            String::from_utf8_lossy(nla.value())
                .trim_end_matches('\0')
                .to_string()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error the way the kernel sends it with `NETLINK_EXT_ACK` and
    /// `NETLINK_CAP_ACK`: the request's header, then `NLMSGERR_ATTR_MSG`.
    fn echoed_with(message: &[u8]) -> Vec<u8> {
        let mut echoed = vec![0u8; NLMSG_HDR_LEN];
        echoed[..4].copy_from_slice(&(NLMSG_HDR_LEN as u32).to_ne_bytes());
        let len = 4 + message.len();
        echoed.extend_from_slice(&(len as u16).to_ne_bytes());
        echoed.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        echoed.extend_from_slice(message);
        echoed.resize(echoed.len().next_multiple_of(4), 0);
        echoed
    }

    #[test]
    fn the_kernels_reason_is_read_from_the_extended_ack() {
        let echoed = echoed_with(b"Specified qdisc kind is unknown.\0");
        let flags = NLM_F_ACK_TLVS | NLM_F_CAPPED;
        let message = extack_message(flags, &echoed);
        assert_eq!(message.as_deref(), Some("Specified qdisc kind is unknown."));
        let shown = Refusal { errno: 2, message }.to_string();
        assert_eq!(
            shown,
            "Specified qdisc kind is unknown (ENOENT: No such file or directory)"
        );
    }

    #[test]
    fn without_tlvs_only_the_errno_is_shown() {
        let echoed = echoed_with(b"ignored\0");
        assert_eq!(extack_message(NLM_F_CAPPED, &echoed), None);
        let shown = Refusal {
            errno: 1,
            message: None,
        }
        .to_string();
        assert_eq!(shown, "EPERM: Operation not permitted");
    }
}
