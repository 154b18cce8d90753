//! The coordinating flood process: re-executes itself as `--procs` worker
//! processes, talks to them (`go`, `stop`; their progress, phase ends and
//! results), samples the RSS and CPU of the `--pid` processes and the
//! kernel slab, and prints a progress line once a second. The phases of
//! each scenario are driven from [`crate::phases`].

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hdrhistogram::Histogram;

use crate::args::{Common, Latency, Scenario};
use crate::msg::{self, Msg, Progress, Seg, WorkerResult, PHASES};
use crate::procfs;

/// Samples kept at most.
const SAMPLES_MAX: usize = 100_000;
/// Longest line a worker may send (its result), bytes.
const LINE_BYTES_MAX: u64 = 256 << 20;

/// One sample of the targets, the kernel and the run.
#[derive(serde::Serialize, Clone, Debug, Default)]
pub struct Sample {
    pub t_s: f64,
    pub established: u64,
    pub open: u64,
    /// Sum of VmRSS of the --pid processes (null when none is readable).
    pub rss_bytes: Option<u64>,
    /// Sum of their CPU time, clock ticks.
    pub cpu_ticks: Option<u64>,
    pub flood_rss_bytes: u64,
    pub slab_bytes: u64,
    pub sunreclaim_bytes: u64,
    /// Wall clock of the sample, ms since the Unix epoch (to cut a run into
    /// the phases a script drove: bench/run_rooms.sh).
    pub unix_ms: u64,
    /// Pushes received so far, and of them HIGH ones (cumulative).
    pub deliveries: u64,
    pub deliveries_high: u64,
    /// The scenario's latency ([`Latency`]) reported since the previous
    /// sample: median, 99th percentile (ms) and count. Only in samples of
    /// the series (`Coord::samples`) whose interval had any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_p50_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_p99_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_count: Option<u64>,
}

/// What a worker said at the end of a phase.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReadyInfo {
    pub seg: Seg,
    pub established: u64,
    pub failed: u64,
    pub open: u64,
}

/// A measured window (hold, echo, broadcast).
#[derive(serde::Serialize, Clone, Debug, Default)]
pub struct Window {
    pub wall_s: f64,
    pub cpu_ticks: Option<u64>,
    pub pings: u64,
    pub pongs: u64,
    /// Pushes received by all connections (hold --room).
    pub deliveries: u64,
}

impl Window {
    /// CPU of the --pid processes over the window, % of one core.
    pub fn cpu_pct(&self) -> Option<f64> {
        let t = self.cpu_ticks? as f64 / procfs::clk_tck() as f64;
        (self.wall_s > 0.0).then(|| 100.0 * t / self.wall_s)
    }
}

enum Ev {
    Msg(u32, Msg),
    Eof(u32),
}

struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
}

/// The run as the coordinator sees it.
pub struct Coord {
    pub sc: Scenario,
    pub c: Common,
    workers: Vec<Worker>,
    rx: Receiver<Ev>,
    pub progress: Vec<Progress>,
    pub ready: Vec<[Option<ReadyInfo>; PHASES]>,
    pub results: Vec<Option<WorkerResult>>,
    eof: Vec<bool>,
    pub samples: Vec<Sample>,
    pub start: Instant,
    next_sample: Instant,
    next_progress: Instant,
    last_est: u64,
    signalled: &'static AtomicBool,
    pub interrupted: bool,
    pub notes: Vec<String>,
    /// What `live_*` measure.
    pub latency: Latency,
    /// The scenario's latency since the last progress line, since the last
    /// sample, and over the whole run (us).
    live_line: Histogram<u64>,
    live_sample: Histogram<u64>,
    pub live_all: Histogram<u64>,
    /// Counters at the last progress line (for rates), and when it was.
    last_line: (Progress, Instant),
    /// Seconds from the start to the end of `finish` (0 before).
    pub duration_s: f64,
}

impl Coord {
    /// Starts the worker processes.
    pub fn spawn(sc: Scenario, signalled: &'static AtomicBool) -> anyhow::Result<Coord> {
        let c = sc.common().clone();
        let exe = std::env::current_exe().context("locating the flood binary")?;
        let (tx, rx) = mpsc::channel();
        let mut workers = Vec::with_capacity(c.procs as usize);
        for k in 0..c.procs {
            let mut child = Command::new(&exe)
                .args(std::env::args_os().skip(1))
                .arg("--worker")
                .arg(k.to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .with_context(|| format!("starting worker {k}"))?;
            let stdout = child.stdout.take().context("worker stdout")?;
            let tx = tx.clone();
            std::thread::Builder::new()
                .name(format!("worker-{k}"))
                .spawn(move || {
                    let mut r = BufReader::new(stdout);
                    let mut line = String::new();
                    loop {
                        line.clear();
                        match (&mut r).take(LINE_BYTES_MAX).read_line(&mut line) {
                            Ok(0) | Err(_) => break,
                            Ok(_) => {}
                        }
                        if let Ok(m) = serde_json::from_str::<Msg>(&line) {
                            if tx.send(Ev::Msg(k, m)).is_err() {
                                return;
                            }
                        }
                    }
                    let _ = tx.send(Ev::Eof(k));
                })
                .context("starting a reader thread")?;
            let stdin = child.stdin.take();
            workers.push(Worker { child, stdin });
        }
        let n = c.procs as usize;
        let now = Instant::now();
        let sc_latency = sc.latency();
        Ok(Coord {
            sc,
            c,
            workers,
            rx,
            progress: vec![Progress::default(); n],
            ready: vec![[None; PHASES]; n],
            results: vec![None; n],
            eof: vec![false; n],
            samples: Vec::new(),
            start: now,
            next_sample: now,
            next_progress: now + Duration::from_secs(1),
            last_est: 0,
            signalled,
            interrupted: false,
            notes: Vec::new(),
            latency: sc_latency,
            live_line: msg::live_histogram(),
            live_sample: msg::live_histogram(),
            live_all: msg::live_histogram(),
            last_line: (Progress::default(), now),
            duration_s: 0.0,
        })
    }

    /// Sends a line to every worker still listening.
    pub fn tell(&mut self, line: &str) {
        for w in &mut self.workers {
            if let Some(s) = w.stdin.as_mut() {
                if writeln!(s, "{line}").and_then(|_| s.flush()).is_err() {
                    w.stdin = None;
                }
            }
        }
    }

    /// Sum of the workers' latest progress.
    pub fn total(&self) -> Progress {
        let mut t = Progress::default();
        for p in &self.progress {
            t.established += p.established;
            t.failed += p.failed;
            t.open += p.open;
            t.pings += p.pings;
            t.pongs += p.pongs;
            t.deliveries += p.deliveries;
            t.deliveries_high += p.deliveries_high;
            t.replies += p.replies;
            t.flood_rss_bytes += p.flood_rss_bytes;
        }
        t
    }

    /// Reads the --pid processes and the kernel now.
    pub fn sample(&self) -> Sample {
        let rss: Vec<u64> = self
            .c
            .pids
            .iter()
            .filter_map(|&p| procfs::rss_bytes(p))
            .collect();
        let cpu: Vec<u64> = self
            .c
            .pids
            .iter()
            .filter_map(|&p| procfs::cpu_ticks(p))
            .collect();
        let slab = procfs::slab();
        let t = self.total();
        Sample {
            t_s: self.start.elapsed().as_secs_f64(),
            established: t.established,
            open: t.open,
            rss_bytes: (!rss.is_empty()).then(|| rss.iter().sum()),
            cpu_ticks: (!cpu.is_empty()).then(|| cpu.iter().sum()),
            flood_rss_bytes: t.flood_rss_bytes,
            slab_bytes: slab.slab_bytes,
            sunreclaim_bytes: slab.sunreclaim_bytes,
            unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            deliveries: t.deliveries,
            deliveries_high: t.deliveries_high,
            ..Sample::default()
        }
    }

    /// Every worker has reported `phase` done (or is gone).
    pub fn all_ready(&self, phase: usize) -> bool {
        (0..self.workers.len()).all(|k| self.ready[k][phase].is_some() || self.eof[k])
    }

    pub fn all_results(&self) -> bool {
        (0..self.workers.len()).all(|k| self.results[k].is_some() || self.eof[k])
    }

    /// Sum of what the workers said at the end of `phase`.
    pub fn ready_sum(&self, phase: usize) -> ReadyInfo {
        let mut s = ReadyInfo {
            seg: Seg {
                start_ns: u64::MAX,
                ..Seg::default()
            },
            ..ReadyInfo::default()
        };
        for r in self.ready.iter().filter_map(|r| r[phase]) {
            s.seg.start_ns = s.seg.start_ns.min(r.seg.start_ns);
            s.seg.last_ns = s.seg.last_ns.max(r.seg.last_ns);
            s.seg.established += r.seg.established;
            s.established += r.established;
            s.failed += r.failed;
            s.open += r.open;
        }
        s
    }

    fn on_event(&mut self, ev: Ev) {
        match ev {
            Ev::Msg(k, Msg::Progress(mut p)) => {
                if let Some(h) = msg::from_b64(&p.live_us) {
                    for into in [
                        &mut self.live_line,
                        &mut self.live_sample,
                        &mut self.live_all,
                    ] {
                        let _ = into.add(&h);
                    }
                }
                p.live_us = String::new();
                self.progress[k as usize] = p;
            }
            Ev::Msg(
                k,
                Msg::Ready {
                    phase,
                    seg,
                    established,
                    failed,
                    open,
                },
            ) => {
                if phase < PHASES {
                    self.ready[k as usize][phase] = Some(ReadyInfo {
                        seg,
                        established,
                        failed,
                        open,
                    });
                }
            }
            Ev::Msg(k, Msg::Result(r)) => self.results[k as usize] = Some(*r),
            Ev::Eof(k) => {
                if self.results[k as usize].is_none() {
                    self.notes
                        .push(format!("worker {k} ended without a result"));
                }
                self.eof[k as usize] = true;
            }
        }
    }

    fn tick(&mut self) {
        let now = Instant::now();
        if now >= self.next_sample {
            if self.samples.len() < SAMPLES_MAX {
                let mut s = self.sample();
                let h = std::mem::replace(&mut self.live_sample, msg::live_histogram());
                if !h.is_empty() {
                    s.latency_p50_ms = Some(h.value_at_quantile(0.5) as f64 / 1000.0);
                    s.latency_p99_ms = Some(h.value_at_quantile(0.99) as f64 / 1000.0);
                    s.latency_count = Some(h.len());
                }
                self.samples.push(s);
            }
            self.next_sample += Duration::from_millis(self.c.sample_ms);
            if self.next_sample < now {
                self.next_sample = now + Duration::from_millis(self.c.sample_ms);
            }
        }
        if now >= self.next_progress {
            let t = self.total();
            let s = self.sample();
            let (last, at) = &self.last_line;
            let secs = now.duration_since(*at).as_secs_f64().max(1e-3);
            let per_s = |n: u64, was: u64| n.saturating_sub(was) as f64 / secs;
            let h = std::mem::replace(&mut self.live_line, msg::live_histogram());
            let lat = if h.is_empty() {
                format!("{} -", self.latency.short())
            } else {
                format!(
                    "{} p50 {:.2} p99 {:.2} ms",
                    self.latency.short(),
                    h.value_at_quantile(0.5) as f64 / 1000.0,
                    h.value_at_quantile(0.99) as f64 / 1000.0
                )
            };
            // What the scenario does, at what rate, and its latency over
            // the last interval.
            let doing = match self.sc {
                Scenario::Echo(_) => format!(
                    "echoes {:.0}/s (replies {}) {lat}",
                    per_s(t.replies, last.replies),
                    t.replies
                ),
                Scenario::Chat(_) => format!(
                    "pushes {:.0}/s (received {}) {lat}",
                    per_s(t.deliveries, last.deliveries),
                    t.deliveries
                ),
                Scenario::Broadcast(_) => format!(
                    "deliveries {} ({:.0}/s) {lat}",
                    t.deliveries,
                    per_s(t.deliveries, last.deliveries)
                ),
                Scenario::Hold(_) | Scenario::Storm(_) => format!(
                    "pings {} pongs {} ({:.0}/s) {lat} deliveries {}",
                    t.pings,
                    t.pongs,
                    per_s(t.pongs, last.pongs),
                    t.deliveries
                ),
            };
            println!(
                "[{:6.1}s] established {}/{} (+{}/s) failed {} open {} {doing} rss {} flood {}",
                s.t_s,
                t.established,
                self.c.conns,
                t.established.saturating_sub(self.last_est),
                t.failed,
                t.open,
                mib(s.rss_bytes),
                mib(Some(t.flood_rss_bytes))
            );
            self.last_line = (t.clone(), now);
            self.last_est = t.established;
            self.next_progress += Duration::from_secs(1);
            if self.next_progress < now {
                self.next_progress = now + Duration::from_secs(1);
            }
        }
    }

    /// Handles events, samples and progress until `done` holds, `until`
    /// passes, or a signal arrives; returns whether `done` held.
    pub fn pump(&mut self, until: Instant, done: &dyn Fn(&Coord) -> bool) -> bool {
        loop {
            if done(self) {
                return true;
            }
            if self.signalled.load(Relaxed) {
                self.interrupted = true;
                return false;
            }
            let now = Instant::now();
            if now >= until {
                return false;
            }
            let wait = until
                .min(self.next_sample)
                .min(self.next_progress)
                .saturating_duration_since(now)
                .min(Duration::from_millis(20));
            match self.rx.recv_timeout(wait) {
                Ok(ev) => self.on_event(ev),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return done(self),
            }
            self.tick();
        }
    }

    /// Waits `d`, still sampling and reporting progress.
    pub fn wait(&mut self, d: Duration) {
        self.pump(Instant::now() + d, &|_| false);
    }

    /// Tells the workers to stop, collects their results, reaps them.
    pub fn finish(&mut self) {
        self.tell("stop");
        for w in &mut self.workers {
            w.stdin = None; // end of input: stop, even if the line was lost
        }
        let grace = Duration::from_millis(self.c.timeout_ms) + Duration::from_secs(30);
        let deadline = Instant::now() + grace;
        // A second signal here should not cut the collection short.
        self.signalled.store(false, Relaxed);
        self.pump(deadline, &|c| c.all_results());
        for (k, w) in self.workers.iter_mut().enumerate() {
            let end = Instant::now() + Duration::from_secs(5);
            loop {
                match w.child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() < end => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    Ok(None) => {
                        self.notes.push(format!("worker {k} killed at the end"));
                        let _ = w.child.kill();
                        let _ = w.child.wait();
                        break;
                    }
                }
            }
        }
        self.duration_s = self.start.elapsed().as_secs_f64();
    }
}

pub fn mib(b: Option<u64>) -> String {
    b.map_or("-".into(), |b| {
        format!("{:.1} MiB", b as f64 / (1 << 20) as f64)
    })
}
