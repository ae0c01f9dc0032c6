//! The driver: N connections kept busy until a request count or a deadline, whichever comes
//! first; one [`Row`] of results per run.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::client::Conn;

pub struct Row {
    pub scenario: String,
    /// Completed operations (requests, events, batches: the scenario's name says which).
    pub requests: u64,
    pub errors: u64,
    pub seconds: f64,
    pub latencies_us: Vec<u64>,
    /// Resident memory of the server process after the run (`None` when it is not ours to read).
    pub rss_mb: Option<f64>,
    /// CPU time (user + system) per operation: the server's and the load generator's.
    pub server_cpu_us: Option<f64>,
    pub generator_cpu_us: Option<f64>,
}

impl Row {
    /// A row of `ops` operations over `seconds`, no errors, the rest to be filled in.
    pub fn new(scenario: String, ops: u64, seconds: f64, latencies_us: Vec<u64>) -> Row {
        Row {
            scenario,
            requests: ops,
            errors: 0,
            seconds,
            latencies_us,
            rss_mb: None,
            server_cpu_us: None,
            generator_cpu_us: None,
        }
    }

    pub fn rate(&self) -> f64 {
        self.requests as f64 / self.seconds.max(1e-9)
    }

    /// The latency at percentile `p` (0..=1), by nearest rank.
    pub fn percentile_us(&self, p: f64) -> u64 {
        let mut l = self.latencies_us.clone();
        l.sort_unstable();
        percentile(&l, p)
    }
}

pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

pub fn fmt_us(us: u64) -> String {
    if us >= 10_000 {
        format!("{:.1} ms", us as f64 / 1000.0)
    } else {
        format!("{us} µs")
    }
}

pub fn print_table(rows: &[Row]) {
    println!(
        "| scenario | ops | errors | ops/s | p50 | p90 | p99 | max | server CPU/op | generator CPU/op | server RSS |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for r in rows {
        let mut l = r.latencies_us.clone();
        l.sort_unstable();
        let lat = |p| if l.is_empty() { "-".to_string() } else { fmt_us(percentile(&l, p)) };
        println!(
            "| {} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} |",
            r.scenario,
            r.requests,
            r.errors,
            r.rate(),
            lat(0.5),
            lat(0.9),
            lat(0.99),
            lat(1.0),
            r.server_cpu_us.map(|c| format!("{c:.0} µs")).unwrap_or_else(|| "-".into()),
            r.generator_cpu_us.map(|c| format!("{c:.0} µs")).unwrap_or_else(|| "-".into()),
            r.rss_mb.map(|m| format!("{m:.0} MB")).unwrap_or_else(|| "-".into()),
        );
    }
}

/// Runs `op(conn, i)` for i in 0..requests on `connections` workers, each with its own
/// connection (a fresh copy of `conn`), until `requests` ran or `limit` passed. `op` hands the
/// connection back with whether the request succeeded.
pub async fn drive<F, Fut>(name: &str, conn: &Conn, connections: usize, requests: u64, limit: Duration, op: F) -> Row
where
    F: Fn(Conn, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = (Conn, bool)> + Send,
{
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + limit;
    let op = Arc::new(op);
    let mut workers = Vec::new();
    for _ in 0..connections {
        let (next, errors, op) = (next.clone(), errors.clone(), op.clone());
        let mut conn = conn.try_clone();
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests || Instant::now() > deadline {
                    break;
                }
                let t = Instant::now();
                let (back, ok) = op(conn, i).await;
                conn = back;
                if !ok {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                latencies.push(t.elapsed().as_micros() as u64);
            }
            latencies
        }));
    }
    let mut latencies_us = Vec::new();
    for w in workers {
        latencies_us.extend(w.await.unwrap_or_default());
    }
    let mut row = Row::new(name.to_string(), latencies_us.len() as u64, started.elapsed().as_secs_f64(), latencies_us);
    row.errors = errors.load(Ordering::Relaxed);
    row
}

/// The CPU time a process spends from now on (`None` when there is no process to read).
pub struct CpuClock {
    pid: Option<u32>,
    start: Option<Duration>,
}

impl CpuClock {
    pub fn start(pid: Option<u32>) -> CpuClock {
        CpuClock { pid, start: pid.and_then(cpu_time) }
    }

    /// Microseconds of CPU per operation since `start`.
    pub fn per_op_us(&self, ops: u64) -> Option<f64> {
        let spent = self.pid.and_then(cpu_time)? - self.start?;
        Some(spent.as_secs_f64() * 1e6 / ops.max(1) as f64)
    }
}

/// CPU time a process has used so far (user + system, all threads), from /proc.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): state is the 3rd field, utime 14th.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let ticks: u64 = fields.next()?.parse::<u64>().ok()? + fields.next()?.parse::<u64>().ok()?;
    // Linux reports in USER_HZ, 100 on every architecture Rust supports here.
    Some(Duration::from_millis(ticks * 10))
}

/// Resident set size of a process, from /proc.
pub fn rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// The highest resident set of a process since it started or since [`reset_peak_rss`], in MiB.
pub fn peak_rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Sets a process's peak resident set back to what it holds now (Linux: `5` into
/// `clear_refs`), so that [`peak_rss_mb`] then measures one phase.
pub fn reset_peak_rss(pid: u32) -> std::io::Result<()> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
}

/// Bytes under a directory (the data dir's size on disk).
pub fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}
