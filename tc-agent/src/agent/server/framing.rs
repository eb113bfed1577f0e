//! Bounded request framing and one-line JSON replies.

use super::*;

/// Why reading a request stopped short.
#[derive(Debug)]
pub(in crate::agent) enum ReadError {
    /// More than the cap without a newline, or a body longer than the
    /// line announced.
    TooLarge,
    /// The peer closed before sending anything, or before a body was whole.
    Closed,
    /// The socket failed.
    Io(io::Error),
}

/// A response as one JSON line.
pub(in crate::agent) fn line(resp: &Response) -> Vec<u8> {
    let mut out = serde_json::to_vec(resp).unwrap_or_default();
    out.push(b'\n');
    out
}

/// Writes `resp`, giving up after [`WRITE_DEADLINE`].
pub(in crate::agent) async fn reply(stream: &mut UnixStream, resp: &Response) {
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
pub(in crate::agent) async fn read_request<R: AsyncRead + Unpin>(
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
        // Only a request that may grow past the small cap holds a permit:
        // a read-only peer (capped at SMALL_REQUEST) never takes one, so
        // it cannot keep root's big requests waiting.
        if max > SMALL_REQUEST && buf.len() >= SMALL_REQUEST && permit.is_none() {
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

/// Reads the body that follows a request line into `body` (which holds
/// what was read past the line), until it has exactly `len` bytes, then
/// the end of the stream: the client closes its sending side after the
/// body, so a body longer than announced is refused rather than applied
/// cut short. More than `len` is [`ReadError::TooLarge`]; the stream
/// ending first is [`ReadError::Closed`]. A `Vec`, not a `BytesMut`: the
/// text becomes a `String` without a copy (a 2.9 MB policy's copy cost
/// milliseconds in page faults alone).
pub(in crate::agent) async fn read_body<R: AsyncRead + Unpin>(
    r: &mut R,
    body: &mut Vec<u8>,
    len: usize,
) -> Result<(), ReadError> {
    if body.len() > len {
        return Err(ReadError::TooLarge);
    }
    body.reserve_exact(len - body.len());
    while body.len() < len {
        let n = (&mut *r)
            .take((len - body.len()) as u64)
            .read_buf(body)
            .await
            .map_err(ReadError::Io)?;
        if n == 0 {
            return Err(ReadError::Closed);
        }
    }
    let mut past = [0u8; 1];
    match r.read(&mut past).await.map_err(ReadError::Io)? {
        0 => Ok(()),
        _ => Err(ReadError::TooLarge),
    }
}
