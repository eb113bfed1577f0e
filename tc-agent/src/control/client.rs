//! The client's side of the control socket: one request, the text of an
//! `apply-raw` after it, and the response.

use std::{
    io::{BufRead, BufReader, Read, Write},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use anyhow::{bail, Context, Result};

use super::{Request, Response};

/// Sends one request and returns the response's data, or its error.
pub fn request(socket: &Path, req: &Request) -> Result<serde_json::Value> {
    exchange(socket, req, None)
}

/// [`request`], with `body` sent right after the request line (the text
/// of a [`Request::ApplyRaw`]), then the end of what this side sends.
pub fn request_with_body(
    socket: &Path,
    req: &Request,
    body: Body<'_>,
) -> Result<serde_json::Value> {
    exchange(socket, req, Some(body))
}

/// What follows a request line: `len` bytes from `from`.
pub struct Body<'a> {
    /// Where the bytes come from: a policy file, read a piece at a time
    /// so that its text is never held whole (a 2.9 MB file read into
    /// fresh memory costs the CLI some 700 page faults, a third of its
    /// CPU time), or a text in memory.
    pub from: &'a mut dyn Read,
    /// Bytes announced in the request line: `from` must hold exactly
    /// these, or the agent is left with a text cut short, which it
    /// refuses.
    pub len: usize,
    /// Whether `from` is still what `len` was taken from (a file not
    /// written to since): asked once all of it is read, before its last
    /// piece is written, so that a file rewritten at the same size while
    /// it was sent is not sent as a mix of two texts.
    pub unchanged: &'a dyn Fn() -> bool,
}

/// Why a [`Body`] was not sent whole. The agent then has a text cut
/// short, which it refuses: nothing was applied.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Its source held fewer bytes than announced (a file that got shorter
    /// while it was sent).
    #[error("the policy file got shorter while it was sent: nothing was applied")]
    Shrank,
    /// Its source held more (a file that grew).
    #[error("the policy file grew while it was sent: nothing was applied")]
    Grew,
    /// Its source was written to while it was read (a file rewritten at
    /// the same size).
    #[error("the policy file was written to while it was sent: nothing was applied")]
    Rewritten,
    /// Its source could not be read.
    #[error("cannot read the policy file while sending it: {0}; nothing was applied")]
    Read(std::io::Error),
}

/// The largest piece of a [`Body`] read and written at once: a few
/// writes, each waking the agent once, from a buffer whose pages stay
/// few.
const BODY_PIECE: usize = 512 * 1024;

/// Writes `body` to `stream`: `Err` if the body could not be read as
/// announced (then before its last piece is written, so the agent sees a
/// text cut short), else how writing to the stream went.
fn send_body(stream: &mut UnixStream, body: Body<'_>) -> Result<std::io::Result<()>, BodyError> {
    let mut buf = vec![0u8; body.len.min(BODY_PIECE)];
    let mut left = body.len;
    if left == 0 {
        return match at_end(body.from).map_err(BodyError::Read)? {
            true => Ok(Ok(())),
            false => Err(BodyError::Grew),
        };
    }
    while left > 0 {
        let piece = left.min(buf.len());
        body.from
            .read_exact(&mut buf[..piece])
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => BodyError::Shrank,
                _ => BodyError::Read(e),
            })?;
        left -= piece;
        if left == 0 {
            if !at_end(body.from).map_err(BodyError::Read)? {
                return Err(BodyError::Grew);
            }
            if !(body.unchanged)() {
                return Err(BodyError::Rewritten);
            }
        }
        if let Err(e) = stream.write_all(&buf[..piece]) {
            return Ok(Err(e));
        }
    }
    Ok(Ok(()))
}

/// Whether `from` has nothing more to read.
fn at_end(from: &mut dyn Read) -> std::io::Result<bool> {
    loop {
        match from.read(&mut [0u8; 1]) {
            Ok(n) => return Ok(n == 0),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn exchange(socket: &Path, req: &Request, body: Option<Body<'_>>) -> Result<serde_json::Value> {
    let mut stream = UnixStream::connect(socket).with_context(|| {
        format!(
            "cannot reach the agent at {}; is `tc-agent run` running (and are you root)? Use --socket for another agent",
            socket.display()
        )
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    if let Some(body) = &body {
        // Root may queue the whole text at once (`SO_SNDBUFFORCE`): the
        // agent then reads it in a few large reads, not one per 200 KiB
        // of the default buffer. Without it the text goes as it can.
        let _ = nix::sys::socket::setsockopt(
            &stream,
            nix::sys::socket::sockopt::SndBufForce,
            &(line.len() + body.len),
        );
    }
    // The agent may answer before it reads (a refused peer, a request too
    // large) and close: the write then fails with a broken pipe while the
    // agent's reason waits in our receive queue. Read it rather than report
    // the pipe.
    let mut written = stream.write_all(&line);
    if let (Ok(()), Some(body)) = (&written, body) {
        // A body not sent whole drops the connection, its text short.
        written = send_body(&mut stream, body)?
            // Nothing follows: the agent refuses a text longer than announced.
            .and_then(|()| stream.shutdown(std::net::Shutdown::Write));
    }
    let sent = match written {
        Ok(()) => true,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ) =>
        {
            false
        }
        Err(e) => return Err(e.into()),
    };
    // Once the request is sent, a lost reply says nothing about the
    // outcome: an apply may be live or not. Say so rather than guess.
    let unknown = || {
        if sent {
            format!(
                "no reply from the agent at {}: the outcome is unknown (`tc-agent status` shows the live policy version)",
                socket.display()
            )
        } else {
            // The agent acts on a whole request only, and it closed
            // before this one was written.
            format!(
                "the agent at {} closed the connection before the request was sent, and gave no reason: nothing was done",
                socket.display()
            )
        }
    };
    let mut reply = String::new();
    BufReader::new(&stream)
        .read_line(&mut reply)
        .with_context(unknown)?;
    let resp: Response = serde_json::from_str(&reply).with_context(unknown)?;
    if !resp.ok {
        bail!(
            "{}",
            resp.error
                .unwrap_or_else(|| "the agent reported an error".into())
        );
    }
    Ok(resp.data)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `send_body` wrote of `source` announced as `len` bytes, with
    /// `unchanged` its stamp's answer, and its error.
    fn sent_as(source: &[u8], len: usize, unchanged: bool) -> (usize, Option<String>) {
        let (mut tx, mut rx) = UnixStream::pair().unwrap();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            rx.read_to_end(&mut got).unwrap();
            got.len()
        });
        let r = send_body(
            &mut tx,
            Body {
                from: &mut &source[..],
                len,
                unchanged: &|| unchanged,
            },
        );
        drop(tx);
        let e = match r {
            Ok(written) => {
                written.expect("the reader reads all");
                None
            }
            Err(e) => Some(e.to_string()),
        };
        (reader.join().unwrap(), e)
    }

    /// [`sent_as`] of a source not written to.
    fn sent(source: &[u8], len: usize) -> (usize, Option<String>) {
        sent_as(source, len, true)
    }

    #[test]
    fn a_source_of_other_than_the_announced_length_leaves_the_text_short() {
        let big = vec![b'x'; BODY_PIECE + 10];
        assert_eq!(sent(&big, big.len()), (big.len(), None));
        assert_eq!(sent(b"abc", 3), (3, None));
        // Shorter: nothing of the last piece is written.
        let (n, e) = sent(&big[..BODY_PIECE + 5], big.len());
        assert_eq!(n, BODY_PIECE);
        assert!(e.unwrap().contains("got shorter"));
        let (n, e) = sent(b"ab", 3);
        assert_eq!(n, 0);
        assert!(e.unwrap().contains("got shorter"));
        // Longer: likewise, so the agent never takes a prefix of it.
        let (n, e) = sent(&big, BODY_PIECE + 5);
        assert_eq!(n, BODY_PIECE);
        assert!(e.unwrap().contains("grew"));
        let (n, e) = sent(b"abcd", 3);
        assert_eq!(n, 0);
        assert!(e.unwrap().contains("grew"));
        let (n, e) = sent(b"a", 0);
        assert_eq!(n, 0);
        assert!(e.unwrap().contains("grew"));
        assert_eq!(sent(b"", 0), (0, None));
    }

    #[test]
    fn a_source_written_to_while_sent_leaves_the_text_short() {
        let big = vec![b'x'; BODY_PIECE + 10];
        let (n, e) = sent_as(&big, big.len(), false);
        assert_eq!(n, BODY_PIECE);
        assert!(e.unwrap().contains("written to"));
        let (n, e) = sent_as(b"abc", 3, false);
        assert_eq!(n, 0);
        assert!(e.unwrap().contains("written to"));
    }
}
