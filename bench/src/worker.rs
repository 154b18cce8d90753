//! A flood worker process: runs its share of the connections on its glommio
//! executors, reports progress and phase ends as JSON lines on stdout, and
//! takes `go` / `stop` lines on stdin (end of input counts as stop, so a
//! worker never outlives its coordinator).

use std::io::{BufRead, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use glommio::{LocalExecutorBuilder, Placement};

use crate::args::{Scenario, Share};
use crate::conn::{Settings, Shared};
use crate::exec::{executor_main, ExecOut};
use crate::msg::{self, hist_to_b64, Msg, Progress, RoundOut, Seg, WorkerResult, PHASES};
use crate::net::mono_ns;
use crate::procfs;
use crate::proto::Codec;
use crate::transport::Transport;

static SIGNALLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    SIGNALLED.store(true, Relaxed);
}

/// Installs SIGINT and SIGTERM handlers that set a flag; returns the flag.
pub fn catch_signals() -> &'static AtomicBool {
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        for s in [libc::SIGINT, libc::SIGTERM] {
            libc::signal(
                s,
                on_signal as extern "C" fn(libc::c_int) as *const () as libc::sighandler_t,
            );
        }
    }
    &SIGNALLED
}

/// The token key: --secret, or the gateway's public demo key.
pub fn key(c: &crate::args::Common) -> (Vec<u8>, Option<String>) {
    match &c.secret {
        Some(s) => (s.as_bytes().to_vec(), c.kid.clone()),
        None => (
            gateway::config::DEMO_SECRET.as_bytes().to_vec(),
            Some(
                c.kid
                    .clone()
                    .unwrap_or_else(|| gateway::config::DEMO_KID.into()),
            ),
        ),
    }
}

/// The counters now (`live_us` left empty).
fn counters(sh: &Shared) -> Progress {
    Progress {
        live_us: String::new(),
        established: sh.established.load(Relaxed),
        failed: sh.failed.load(Relaxed),
        open: sh.open.load(Relaxed),
        pings: sh.pings.load(Relaxed),
        pongs: sh.pongs.load(Relaxed),
        deliveries: sh.deliveries.load(Relaxed),
        deliveries_high: sh.deliveries_high.load(Relaxed),
        replies: sh.replies.load(Relaxed),
        flood_rss_bytes: procfs::self_rss_bytes().unwrap_or(0),
    }
}

/// A progress message: the counters now, and the latency recorded since
/// the last progress message (taken: only these carry it).
fn progress(sh: &Shared) -> Progress {
    let live = sh.take_live();
    Progress {
        live_us: if live.is_empty() {
            String::new()
        } else {
            hist_to_b64(&live)
        },
        ..counters(sh)
    }
}

fn emit(out: &mut impl Write, m: &Msg) -> bool {
    let Ok(line) = serde_json::to_string(m) else {
        return false;
    };
    writeln!(out, "{line}").and_then(|_| out.flush()).is_ok()
}

/// Reads the coordinator's commands until `stop` or end of input.
fn control(shared: Arc<Shared>, action_go: u32) {
    let stdin = std::io::stdin();
    let mut line = String::new();
    loop {
        line.clear();
        let mut lock = stdin.lock();
        let n = (&mut lock).take(4096).read_line(&mut line).unwrap_or(0);
        if n == 0 || line.trim() == "stop" {
            break;
        }
        if line.trim() == "go" {
            let g = shared.go.fetch_add(1, Relaxed) + 1;
            if g == action_go {
                shared.measure_start_ns.store(mono_ns(), Relaxed);
                shared.measuring.store(true, Relaxed);
            }
        }
    }
    shared.measure_end_ns.store(mono_ns(), Relaxed);
    shared.measuring.store(false, Relaxed);
    shared
        .fds_at_stop
        .store(procfs::self_fd_count() as u64, Relaxed);
    shared.stop.store(true, Relaxed);
}

/// Runs worker `k` of the scenario.
pub fn run(sc: Scenario, k: u32) -> anyhow::Result<()> {
    let signalled = catch_signals();
    let c = sc.common().clone();
    let share = Share::of(&c, k);
    let (secret, kid) = key(&c);
    let (room, rounds) = match &sc {
        Scenario::Broadcast(b) => (Some(b.room.clone()), b.rounds),
        Scenario::Hold(h) => (h.room.clone(), 0),
        _ => (None, 0),
    };
    let tick = match sc.echo_interval_s() {
        Some(s) => Duration::from_secs_f64(s),
        None => Duration::from_millis(c.heartbeat_ms as u64),
    };
    let action_go = 1 + u32::from(share.mark.is_some());
    let transport = Transport::new(&c.transport, c.target)?;
    let codec = Codec {
        proto: c.protocol,
        ws: transport.ws(),
    };
    let set = Arc::new(Settings {
        transport,
        codec,
        echo: matches!(sc, Scenario::Echo(_)),
        chat: matches!(sc, Scenario::Chat(_)),
        latency: sc.latency(),
        sc,
        c: c.clone(),
        share,
        secret,
        kid,
        tick,
        room,
        rounds,
    });
    let shared = Arc::new(Shared::default());
    {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("control".into())
            .spawn(move || control(shared, action_go))
            .context("starting the control thread")?;
    }
    let mut handles = Vec::with_capacity(c.cores);
    for e in 0..c.cores {
        let (set, sh) = (set.clone(), shared.clone());
        let h = LocalExecutorBuilder::new(Placement::Unbound)
            .name(&format!("flood-{k}-{e}"))
            .io_memory(512 * 1024)
            .spawn(move || async move {
                let out = executor_main(set, sh.clone(), e as u64).await;
                sh.done.fetch_add(1, Relaxed);
                out
            })
            .map_err(|err| {
                anyhow::anyhow!("starting executor {e}: {err} (io_uring / locked memory)")
            })?;
        handles.push(h);
    }

    let mut stdout = std::io::stdout().lock();
    let cores = c.cores as u32;
    let mut sent = [false; PHASES];
    let mut next_progress = Instant::now();
    while shared.done.load(Relaxed) < cores {
        if signalled.load(Relaxed) {
            shared.stop.store(true, Relaxed);
        }
        let mut ok = true;
        if Instant::now() >= next_progress {
            ok &= emit(&mut stdout, &Msg::Progress(progress(&shared)));
            next_progress += Duration::from_secs(1);
        }
        for (phase, done) in sent.iter_mut().enumerate() {
            if !*done && shared.ready[phase].load(Relaxed) >= cores {
                *done = true;
                let p = counters(&shared);
                let seg = Seg {
                    start_ns: shared.seg_start[phase].load(Relaxed),
                    last_ns: shared.seg_last[phase].load(Relaxed),
                    established: shared.seg_est[phase].load(Relaxed),
                };
                ok &= emit(
                    &mut stdout,
                    &Msg::Ready {
                        phase,
                        seg,
                        established: p.established,
                        failed: p.failed,
                        open: p.open,
                    },
                );
            }
        }
        if !ok {
            shared.stop.store(true, Relaxed); // the coordinator is gone
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let fds_at_end = shared.fds_at_stop.load(Relaxed) as usize;
    let mut outs = Vec::with_capacity(handles.len());
    for h in handles {
        outs.push(
            h.join()
                .map_err(|e| anyhow::anyhow!("an executor failed: {e}"))?,
        );
    }
    // The last second's latency, then the result.
    emit(&mut stdout, &Msg::Progress(progress(&shared)));
    let r = merge(k, &set, &shared, outs, fds_at_end);
    emit(&mut stdout, &Msg::Result(Box::new(r)));
    Ok(())
}

fn merge(k: u32, set: &Settings, sh: &Shared, outs: Vec<ExecOut>, fds: usize) -> WorkerResult {
    let mut connect = msg::histogram();
    let mut transport = msg::histogram();
    let mut ready = msg::histogram();
    let mut join = msg::histogram();
    let mut reconnect = msg::histogram();
    let mut rtt = msg::histogram();
    let mut rounds: Vec<(u64, hdrhistogram::Histogram<u64>, u64)> = (0..set.rounds)
        .map(|_| (0, msg::round_histogram(), 0))
        .collect();
    let mut r = WorkerResult {
        worker: k,
        conns: set.share.conns,
        ..Default::default()
    };
    for o in outs {
        let _ = connect.add(&o.connect_us);
        let _ = transport.add(&o.transport_us);
        let _ = ready.add(&o.ready_us);
        let _ = join.add(&o.join_us);
        let _ = reconnect.add(&o.reconnect_us);
        let _ = rtt.add(&o.echo_rtt_us);
        msg::add_counts(&mut r.failed, &o.failed);
        msg::add_counts(&mut r.retried, &o.retried);
        msg::add_counts(&mut r.dropped, &o.dropped);
        msg::add_counts(&mut r.tls_sessions, &o.tls_sessions);
        msg::add_counts(&mut r.echo_status, &o.echo_status);
        msg::add_counts(&mut r.sender_replies, &o.sender_replies);
        r.echo_sent += o.echo_sent;
        for (acc, into) in o.rounds.iter().zip(rounds.iter_mut()) {
            into.0 += acc.count;
            if let Some(h) = &acc.lat_us {
                let _ = into.1.add(h);
            }
            into.2 = into.2.max(acc.last_ns);
        }
        r.sends_ns.extend(o.sends_ns);
        r.sender_error = r.sender_error.or(o.sender_error);
        r.held_future_bytes = o.held_future_bytes;
    }
    r.established = sh.established.load(Relaxed);
    r.open_at_end = sh.open.load(Relaxed);
    r.pings = sh.pings.load(Relaxed);
    r.pongs = sh.pongs.load(Relaxed);
    r.other_frames = sh.other_frames.load(Relaxed);
    r.connect_us = hist_to_b64(&connect);
    r.transport_us = hist_to_b64(&transport);
    r.ready_us = hist_to_b64(&ready);
    r.join_us = hist_to_b64(&join);
    r.reconnect_us = hist_to_b64(&reconnect);
    r.echo_rtt_us = hist_to_b64(&rtt);
    r.echo_window_ns = (
        sh.measure_start_ns.load(Relaxed),
        sh.measure_end_ns.load(Relaxed),
    );
    for p in 0..PHASES {
        r.segs[p] = Seg {
            start_ns: sh.seg_start[p].load(Relaxed),
            last_ns: sh.seg_last[p].load(Relaxed),
            established: sh.seg_est[p].load(Relaxed),
        };
    }
    r.rounds = rounds
        .into_iter()
        .enumerate()
        .map(|(i, (count, h, last_ns))| RoundOut {
            round: i as u32,
            count,
            lat_us: hist_to_b64(&h),
            last_ns,
        })
        .collect();
    r.fds_at_end = fds;
    r.flood_rss_bytes = procfs::self_rss_bytes().unwrap_or(0);
    r
}
