//! The demo's data-access service and its clients, run inside the demo's
//! namespaces as `xtask demo-pool serve|load` (hidden subcommands): a
//! service with a fixed pool of workers, one per open connection, and a
//! load generator that runs sessions of queries and reports their latency.

use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use clap::Subcommand;

/// Workers of the service: the connection pool that runs dry.
pub const WORKERS: usize = 16;
/// Time a worker spends on one request (the "query").
const WORK_MS: u64 = 2;

#[derive(Subcommand)]
pub enum PoolRole {
    /// The service: WORKERS threads, each serving one connection at a time.
    Serve {
        #[arg(long)]
        addr: SocketAddr,
    },
    /// A client: THREADS sessions of REQUESTS requests each, for SECS,
    /// printing a JSON summary.
    Load {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long)]
        threads: usize,
        #[arg(long)]
        requests: u32,
        #[arg(long)]
        secs: u64,
    },
}

pub fn role(r: PoolRole) -> Result<()> {
    match r {
        PoolRole::Serve { addr } => serve(addr),
        PoolRole::Load {
            addr,
            threads,
            requests,
            secs,
        } => load(addr, threads, requests, secs),
    }
}

fn serve(addr: SocketAddr) -> Result<()> {
    let listener = TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
    for _ in 0..WORKERS {
        let l = listener.try_clone()?;
        thread::spawn(move || loop {
            if let Ok((s, _)) = l.accept() {
                let _ = serve_conn(s);
            }
        });
    }
    // Bounded: the demo kills the service when it is done.
    thread::sleep(Duration::from_secs(600));
    Ok(())
}

/// One connection holds its worker until the client closes it.
fn serve_conn(s: TcpStream) -> Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut w = s.try_clone()?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(WORK_MS));
        w.write_all(b"ok\n")?;
    }
}

fn load(addr: SocketAddr, threads: usize, requests: u32, secs: u64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let done = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let timeouts = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (done, refused, timeouts, latencies) = (
                done.clone(),
                refused.clone(),
                timeouts.clone(),
                latencies.clone(),
            );
            thread::spawn(move || {
                while Instant::now() < deadline {
                    let t0 = Instant::now();
                    let s = match TcpStream::connect_timeout(&addr, Duration::from_secs(3)) {
                        Ok(s) => s,
                        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                            refused.fetch_add(1, Ordering::Relaxed);
                            // A refused session backs off, as a pool would.
                            thread::sleep(Duration::from_millis(100));
                            continue;
                        }
                        Err(_) => {
                            timeouts.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                    };
                    let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
                    let mut w = match s.try_clone() {
                        Ok(w) => w,
                        Err(_) => continue,
                    };
                    let mut r = BufReader::new(s);
                    let mut line = String::new();
                    for i in 0..requests {
                        let t = if i == 0 { t0 } else { Instant::now() };
                        line.clear();
                        if w.write_all(b"q\n").is_err() || r.read_line(&mut line).unwrap_or(0) == 0
                        {
                            timeouts.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        done.fetch_add(1, Ordering::Relaxed);
                        latencies
                            .lock()
                            .expect("latency list")
                            .push(t.elapsed().as_secs_f64() * 1e3);
                        if Instant::now() >= deadline {
                            break;
                        }
                    }
                }
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
    let mut l = latencies.lock().expect("latency list").clone();
    l.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        if l.is_empty() {
            None
        } else {
            Some(l[((l.len() - 1) as f64 * p) as usize])
        }
    };
    println!(
        "{}",
        serde_json::json!({
            "requests": done.load(Ordering::Relaxed),
            "refused": refused.load(Ordering::Relaxed),
            "timeouts": timeouts.load(Ordering::Relaxed),
            "p50_ms": pct(0.5),
            "p99_ms": pct(0.99),
        })
    );
    Ok(())
}
