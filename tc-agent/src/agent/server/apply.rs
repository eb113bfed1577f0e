//! An apply request: its policy text (`apply-raw`), and the apply, one at
//! a time, with what it leaves for after its answer (the switch's fold,
//! which saves the state).

use super::*;

impl Server {
    /// An apply: the policy read (before the agent lock is taken, so
    /// samples, reports and the previous switch's fold are not held up by
    /// it), then written and switched to.
    pub(super) async fn apply(&self, file: String, text: String) -> Response {
        let mut steps = Steps::new("apply");
        let _one_at_a_time = self.applying.lock().await;
        steps.step("wait");
        let reuse = self.reuse.clone();
        let parsed = tokio::task::spawn_blocking(move || {
            let parsed = crate::agent::apply::parse(&reuse, text, &file);
            (parsed, file)
        })
        .await;
        let (parsed, file) = match parsed {
            Ok(p) => p,
            Err(e) => {
                error!(error = %e, "reading a policy failed inside the agent");
                return failure(format!("internal error: {e}"));
            }
        };
        steps.step("read");
        let snapshot = self.snapshot.clone();
        let done = locked(self.agent.clone(), move |agent| {
            let applied = agent.apply_parsed(parsed, &file);
            let live = applied.is_ok();
            steps.step("apply");
            agent.publish(&snapshot);
            steps.step("publish");
            steps.log();
            (applied.and_then(|r| Ok(serde_json::to_value(r)?)), live)
        })
        .await;
        let (response, live) = match done {
            Ok((r, live)) => (to_response(r), live),
            // It may have gone live before it failed: folded and saved as
            // the agent has it.
            Err(failed) => (failed, true),
        };
        // The file read whole is remembered for the next apply now that
        // this one is done with the CPU.
        self.reuse.remember();
        // The switch's fold (reading the old generation once its grace
        // period has passed) runs once that period is over, off this
        // request's path, rather than at the start of the next apply or in
        // the next sample, and saves the state: a large policy's takes
        // about 15 ms to write out, which the client need not wait for.
        // Until then an agent killed finds the kernel a version ahead of
        // its state and leaves the live channels unnamed (still enforced)
        // until the next apply. After the save, still under the agent
        // lock, the old generation is pruned (`Datapath::prune_standby`),
        // so that the next apply need not remove its stale entries.
        if live {
            let agent = self.agent.clone();
            tokio::spawn(async move {
                tokio::time::sleep(super::SWITCH_GRACE).await;
                let fold = tokio::task::spawn_blocking(move || agent.lock().settle_in_background());
                if let Err(e) = fold.await {
                    error!(error = %e, "the fold after an apply failed inside the agent");
                }
            });
        }
        response
    }

    /// The text an `apply-raw` request announced: the `bytes` bytes after
    /// its line, of which `rest` holds those read with the line. Read under
    /// the request's deadline and a big request's permit, as a line is.
    /// `Err(Some(answer))` refuses a text too large, cut short, longer than
    /// announced, not UTF-8, or whose sending side stays open; `Err(None)`
    /// closes the connection (too slow, or a failed socket).
    pub(super) async fn read_text(
        &self,
        stream: &mut UnixStream,
        mut rest: BytesMut,
        bytes: usize,
        permit: &mut Option<OwnedSemaphorePermit>,
        deadline: tokio::time::Instant,
    ) -> Result<String, Option<Response>> {
        let max = crate::policy::MAX_FILE_BYTES;
        if bytes > max {
            return Err(Some(failure(format!(
                "policy not applied: the file is larger than {max} bytes ({} MiB), the most a policy file may hold ({bytes} bytes announced)",
                max >> 20
            ))));
        }
        // The line's newline, unless the stream ended the line.
        if rest.first() == Some(&b'\n') {
            let _ = rest.split_to(1);
        }
        if bytes > SMALL_REQUEST && permit.is_none() {
            // Under the request's deadline, as a line's permit is (the text
            // is read after the connection stops counting as idle: only
            // root gets here, at most `BIG_REQUESTS` texts over
            // `SMALL_REQUEST` are buffered at once, and the deadline bounds
            // each).
            let big = self.big.clone().acquire_owned();
            match timeout_at(deadline, big).await {
                Ok(Ok(p)) => *permit = Some(p),
                Ok(Err(_)) => return Err(None),
                Err(_) => {
                    debug!("closing an apply that waited past its deadline for a buffer");
                    return Err(None);
                }
            }
        }
        // What came with the line is at most a read's worth (`READ_CHUNK`).
        let mut body = Vec::with_capacity(bytes.max(rest.len()));
        body.extend_from_slice(&rest);
        drop(rest);
        match timeout_at(deadline, read_body(stream, &mut body, bytes)).await {
            Ok(Ok(())) => {}
            // Every byte came, but not the end of the stream: a client
            // that never closed its sending side is told so.
            Err(_) if body.len() == bytes => {
                return Err(Some(failure(format!(
                    "bad request: the {bytes} bytes announced arrived, but the client did not close its sending side (shutdown SHUT_WR) after them within {} s of connecting",
                    REQUEST_DEADLINE.as_secs()
                ))))
            }
            Err(_) => {
                if let Some(held) = self.slow_log.pass() {
                    warn!(
                        received = body.len(),
                        announced = bytes,
                        timeout_s = REQUEST_DEADLINE.as_secs(),
                        held_back = held,
                        "closing a connection that did not send its policy text in time"
                    );
                }
                return Err(None);
            }
            Ok(Err(ReadError::TooLarge)) => {
                return Err(Some(failure(format!(
                    "bad request: more than the {bytes} bytes announced follow the request line (a client closes its sending side after them)"
                ))))
            }
            Ok(Err(ReadError::Closed)) => {
                return Err(Some(failure(format!(
                    "bad request: the policy text ended after {} of the {bytes} bytes announced",
                    body.len()
                ))))
            }
            Ok(Err(ReadError::Io(e))) => {
                debug!(error = %e, "reading a policy text failed");
                return Err(None);
            }
        };
        String::from_utf8(body).map_err(|e| {
            Some(failure(format!(
                "policy not applied: the file is not UTF-8 ({e})"
            )))
        })
    }
}
