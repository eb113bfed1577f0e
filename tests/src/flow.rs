//! A bulk TCP flow over the kernel's stack between the two hosts of a
//! [`Pair`](crate::netns::Pair), counted at its receiver as bytes arrive:
//! the legitimate traffic beside a flood (`tests/tests/flood.rs`, `bench
//! flood`), whose rate over any window is read exactly when the window
//! ends. Bounded in time; both ends stop on [`TcpFlow::finish`] or drop.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// A legitimate TCP flow from the client (198.18.0.1) to the server
/// (198.18.0.2) port 5201 over the kernel's stack: a sender writing as
/// fast as the path takes, and a receiver counting bytes as they arrive,
/// so the rate over any window is read exactly when the window ends.
pub struct TcpFlow {
    /// Bytes the receiver has read so far.
    received: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Tells both ends to stop.
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// The sending end's thread (in the client's namespace), until joined.
    sender: Option<std::thread::JoinHandle<Result<()>>>,
    /// The receiving end's thread (in the server's namespace), until joined.
    receiver: Option<std::thread::JoinHandle<Result<()>>>,
}

impl TcpFlow {
    /// Starts the flow from `client` to `server` (namespaces); it stops
    /// after `secs` at the latest.
    pub fn start(client: &str, server: &str, secs: f64) -> Result<Self> {
        use std::{
            io::{Read, Write},
            sync::{
                atomic::{AtomicBool, AtomicU64, Ordering},
                Arc,
            },
        };
        let received = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let deadline = Instant::now() + Duration::from_secs_f64(secs);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (count, halt) = (received.clone(), stop.clone());
        let receiver = crate::netns::in_netns(server, move || -> Result<()> {
            let listener = std::net::TcpListener::bind("198.18.0.2:5201")?;
            listener.set_nonblocking(true)?;
            let _ = ready_tx.send(());
            let mut conn = loop {
                match listener.accept() {
                    Ok((c, _)) => break c,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if halt.load(Ordering::Relaxed) || Instant::now() > deadline {
                            bail!("no connection to the flow's receiver");
                        }
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => return Err(e.into()),
                }
            };
            conn.set_nonblocking(false)?;
            conn.set_read_timeout(Some(Duration::from_millis(100)))?;
            let mut buf = vec![0u8; 1 << 16];
            while !halt.load(Ordering::Relaxed) && Instant::now() < deadline {
                match go_on(conn.read(&mut buf), &halt, deadline)? {
                    Some(0) => break,
                    Some(n) => {
                        count.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    None if halt.load(Ordering::Relaxed) => break,
                    None => {}
                }
            }
            Ok(())
        });
        let receiver = std::thread::spawn(move || receiver.join().expect("receiver thread")?);
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .context("the flow's receiver did not listen")?;
        let halt = stop.clone();
        let sender = crate::netns::in_netns(client, move || -> Result<()> {
            let mut conn = std::net::TcpStream::connect("198.18.0.2:5201")?;
            conn.set_write_timeout(Some(Duration::from_millis(100)))?;
            let buf = vec![0x5au8; 1 << 16];
            while !halt.load(Ordering::Relaxed) && Instant::now() < deadline {
                if go_on(conn.write(&buf), &halt, deadline)?.is_none()
                    && halt.load(Ordering::Relaxed)
                {
                    break;
                }
            }
            Ok(())
        });
        let sender = std::thread::spawn(move || sender.join().expect("sender thread")?);
        Ok(Self {
            received,
            stop,
            sender: Some(sender),
            receiver: Some(receiver),
        })
    }

    /// Bytes received so far, and when they were counted.
    pub fn received(&self) -> (u64, Instant) {
        (
            self.received.load(std::sync::atomic::Ordering::Relaxed),
            Instant::now(),
        )
    }

    /// Stops both ends and reports either's error: the receiver's first,
    /// since a receiver that fails closes its end and the sender's write
    /// then fails too (a broken pipe that would hide the cause).
    pub fn finish(mut self) -> Result<()> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let join = |h: Option<std::thread::JoinHandle<Result<()>>>| {
            h.map_or(Ok(()), |h| h.join().expect("flow thread"))
        };
        let sent = join(self.sender.take());
        join(self.receiver.take()).context("the flow's receiver")?;
        sent.context("the flow's sender")
    }
}

impl Drop for TcpFlow {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for h in [self.sender.take(), self.receiver.take()]
            .into_iter()
            .flatten()
        {
            let _ = h.join();
        }
    }
}

/// One read or write of the flow: `Some(bytes)`, or `None` when it timed
/// out, was interrupted by a signal, or failed once the flow was over
/// (`halt` raised, or its `deadline` passed: the other end may have
/// stopped first and reset the connection); any other failure is the
/// flow's error.
fn go_on(
    r: std::io::Result<usize>,
    halt: &std::sync::atomic::AtomicBool,
    deadline: Instant,
) -> Result<Option<usize>> {
    match r {
        Ok(n) => Ok(Some(n)),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock
                    | std::io::ErrorKind::TimedOut
                    // A signal during a call with a socket timeout
                    // (`SO_RCVTIMEO`, `SO_SNDTIMEO`) fails it whatever
                    // `SA_RESTART` says: call again. Defensive (the tests
                    // install no handler); not the broken pipe's cause.
                    | std::io::ErrorKind::Interrupted
            ) =>
        {
            Ok(None)
        }
        Err(_) if halt.load(std::sync::atomic::Ordering::Relaxed) || Instant::now() >= deadline => {
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}
