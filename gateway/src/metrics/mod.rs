//! Per-core metrics: plain `Cell` counters owned by one core (no atomics on
//! the hot path). The control plane asks each core for a [`Snapshot`] over
//! its inbox and sums them when /metrics or /stats is scraped.

pub mod histogram;
pub mod process;

use std::cell::Cell;
use std::time::{Duration, Instant};

use gw_proto::CloseReason;
use serde::Serialize;

pub use histogram::{Hist, Histogram};

/// Number of `CloseReason` values (index = enum value).
pub const CLOSE_REASONS: usize = 20;

macro_rules! counters {
    ($($name:ident : $help:literal),* $(,)?) => {
        /// Counters of one core.
        #[derive(Default)]
        pub struct CoreMetrics {
            $(pub $name: Cell<u64>,)*
            pub closes: [Cell<u64>; CLOSE_REASONS],
            pub rejections: [Cell<u64>; REJECT_REASONS],
            /// Room pushes dropped, by reason and priority (`core::rooms::drop_cell`).
            pub room_drops: [Cell<u64>; crate::core::rooms::DROP_CELLS],
            pub hist: CoreHistograms,
        }

        /// A copy of one core's counters (or their sum), sendable across threads.
        #[derive(Debug, Default, Clone, Serialize, PartialEq)]
        pub struct Counters {
            $(pub $name: u64,)*
            /// Refusals by overload control and limits, by reason.
            pub rejections: Rejections,
            /// Room pushes dropped, by reason and priority.
            pub room_drops: [u64; crate::core::rooms::DROP_CELLS],
        }

        /// At most one log line per second from one place (accept errors, a full
/// queue, ...): `if limit.allow() { tracing::warn!(..) }`.
#[derive(Default)]
pub struct LogLimit(Cell<Option<Instant>>);

impl LogLimit {
    /// How often a limited line may be logged.
    pub const INTERVAL: Duration = Duration::from_secs(1);

    pub fn allow(&self) -> bool {
        let now = Instant::now();
        if self.0.get().is_some_and(|t| now.duration_since(t) < Self::INTERVAL) {
            return false;
        }
        self.0.set(Some(now));
        true
    }
}

impl CoreMetrics {
            fn counters(&self) -> Counters {
                let mut rejections = Rejections::default();
                for (d, s) in rejections.0.iter_mut().zip(self.rejections.iter()) {
                    *d = s.get();
                }
                let mut room_drops = [0; crate::core::rooms::DROP_CELLS];
                for (d, s) in room_drops.iter_mut().zip(self.room_drops.iter()) {
                    *d = s.get();
                }
                Counters { $($name: self.$name.get(),)* rejections, room_drops }
            }
        }

        impl Counters {
            fn add(&mut self, o: &Counters) {
                $(self.$name += o.$name;)*
                for (d, v) in self.rejections.0.iter_mut().zip(o.rejections.0.iter()) {
                    *d += v;
                }
                for (d, v) in self.room_drops.iter_mut().zip(o.room_drops.iter()) {
                    *d += v;
                }
            }
            fn each(&self) -> Vec<(&'static str, &'static str, u64)> {
                vec![$((stringify!($name), $help, self.$name),)*]
            }
        }
    };
}

counters! {
    accepts: "Connections accepted",
    accept_errors: "accept() failures (EMFILE, ENFILE, ...)",
    conn_limit_refusals: "Connections refused at conns_per_core_max",
    auth_ok: "Successful authentications",
    auth_failures: "Failed authentications",
    frames_in: "Frames received",
    frames_out: "Frames queued for sending",
    bytes_in: "Bytes read from sockets",
    bytes_out: "Bytes written to sockets",
    heartbeats: "Ping frames answered",
    upstreams: "Upstream frames forwarded to the backend",
    upstream_busy: "Upstream frames refused with BUSY",
    upstream_timeouts: "Upstream frames answered with TIMEOUT",
    pushes: "Pushes queued to connections",
    pushes_too_large: "Pushes refused for exceeding frame_bytes_max",
    pushes_acked: "Ack-required pushes acknowledged",
    pushes_waited: "Pushes that waited in a connection's backlog for room in the window or the outbound queue",
    retransmits: "Pushes resent after ack_timeout_ms",
    undelivered: "Ack-required pushes reported undelivered",
    slow_consumers: "Connections closed as slow consumers",
    preauth_evictions: "Unauthenticated connections closed to keep pre-auth buffers within preauth_bytes_per_core_max",
    refreshes: "Token refreshes accepted (Refresh frames)",
    refresh_failures: "Token refreshes refused",
    expiry_notices: "TokenExpiring notices sent",
    resyncs: "Online events sent again (resync) after NATS subscriptions were restored",
    tls_handshakes: "TLS sessions started (connections that opened with a TLS record)",
    tls_failures: "TLS sessions that failed (bad handshake or record): closed as TLS_FAILED",
    tls_handovers: "TLS 1.3 sessions whose keys moved from rustls to the gateway's record layer",
    tls_key_updates_sent: "TLS 1.3 KeyUpdates sent (a key near its record limit, or the client asked)",
    tls_key_updates_received: "TLS 1.3 KeyUpdates received from clients",
    ws_upgrades: "WebSocket upgrades accepted",
    ws_rejected: "WebSocket connections refused or closed for bad input (handshake, masking, text, size)",
    room_coalesced: "Room pushes gathered into batches (hot rooms)",
    room_batches: "Batches sent (one per hot room, coalescing window and core; each member gets one frame)",
    upstream_aggregates: "Aggregated upstream requests sent (one per room, route, window and core; rooms.aggregate_routes)",
    upstream_aggregated: "Upstream frames sent inside aggregated requests",
}

macro_rules! histograms {
    ($($name:ident : $metric:literal, $help:literal),* $(,)?) => {
        /// Latency histograms of one core.
        #[derive(Default)]
        pub struct CoreHistograms {
            $(pub $name: Histogram,)*
        }

        /// A copy of one core's histograms (or their sum).
        #[derive(Debug, Default, Clone, Serialize, PartialEq)]
        pub struct Histograms {
            $(pub $name: Hist,)*
        }

        impl CoreHistograms {
            fn get(&self) -> Histograms {
                Histograms { $($name: self.$name.get(),)* }
            }
        }

        impl Histograms {
            fn add(&mut self, o: &Histograms) {
                $(self.$name.add(&o.$name);)*
            }
            /// Appends every histogram in Prometheus text format.
            pub fn render(&self, out: &mut String) {
                $(self.$name.render(out, $metric, $help);)*
            }
        }
    };
}

histograms! {
    upstream_rtt: "gateway_upstream_rtt_seconds",
        "Upstream frames: from forwarding to the backend to its reply; an aggregated frame (rooms.aggregate_routes) includes its window (timeouts are counted in gateway_upstream_timeouts_total instead)",
    push_ack: "gateway_push_ack_seconds",
        "Ack-required pushes: from their first send to the client's ack (retransmits included)",
    tls_handshake: "gateway_tls_handshake_seconds",
        "TLS connections: from accept to the end of the TLS handshake",
    auth: "gateway_auth_seconds",
        "Auth frames: time to verify the token and set up the session",
    connect_auth: "gateway_connect_auth_seconds",
        "Connections: from accept to AuthOk going out (with NATS, once the user's subscription is confirmed)",
}

impl CoreMetrics {
    pub fn inc(c: &Cell<u64>) {
        c.set(c.get() + 1);
    }
    pub fn add(c: &Cell<u64>, n: u64) {
        c.set(c.get() + n);
    }
    pub fn closed(&self, reason: CloseReason) {
        if let Some(c) = self.closes.get(reason as usize) {
            Self::inc(c);
        }
    }
    /// Counts a refusal (a BUSY reply, a refused connection, a push over a
    /// room's rate) by its reason.
    pub fn rejected(&self, reason: Reject) {
        Self::inc(&self.rejections[reason as usize]);
    }

    /// Snapshot of this core with its live gauges.
    pub fn snapshot(&self, core: usize, connections: u64, sessions: u64, rooms: u64) -> Snapshot {
        let mut closes = [0u64; CLOSE_REASONS];
        for (d, s) in closes.iter_mut().zip(self.closes.iter()) {
            *d = s.get();
        }
        Snapshot {
            core,
            connections,
            sessions,
            rooms,
            counters: self.counters(),
            closes: closes.to_vec(),
            hist: self.hist.get(),
            hot_rooms_now: 0,
            hot_rooms: Vec::new(),
            admission_level: 0,
            queue_delay_us: 0,
        }
    }
}

/// Number of [`Reject`] reasons.
pub const REJECT_REASONS: usize = 8;

/// Why something was refused: the `reason` label of `gateway_rejections_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// A new connection over the core's cap (`SERVER_FULL`).
    ConnLimit,
    /// A new connection over `accept_rate_per_core_per_s` (`BUSY`).
    AcceptRate,
    /// An upstream frame over `upstream_rate_per_conn_per_s` (`BUSY`).
    UpstreamRate,
    /// An upstream frame over `upstream_inflight_per_conn_max` (`BUSY`).
    InflightConn,
    /// An upstream frame over `upstream_inflight_per_core_max` (`BUSY`).
    InflightCore,
    /// An upstream frame under the admission level of an overloaded core (`BUSY`).
    OverloadShed,
    /// A push to a room over `room_broadcast_rate_per_s` on this core.
    RoomRate,
    /// An upstream frame naming a room over `rooms.upstream_rate_per_s` (`BUSY`).
    RoomUpstreamRate,
}

impl Reject {
    pub const ALL: [Reject; REJECT_REASONS] = [
        Reject::ConnLimit,
        Reject::AcceptRate,
        Reject::UpstreamRate,
        Reject::InflightConn,
        Reject::InflightCore,
        Reject::OverloadShed,
        Reject::RoomRate,
        Reject::RoomUpstreamRate,
    ];
    pub fn label(self) -> &'static str {
        match self {
            Reject::ConnLimit => "conn_limit",
            Reject::AcceptRate => "accept_rate",
            Reject::UpstreamRate => "upstream_rate",
            Reject::InflightConn => "inflight_conn",
            Reject::InflightCore => "inflight_core",
            Reject::OverloadShed => "overload_shed",
            Reject::RoomRate => "room_rate",
            Reject::RoomUpstreamRate => "room_upstream_rate",
        }
    }
}

/// Rejections by reason (index = `Reject` value); a map by label in JSON.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Rejections([u64; REJECT_REASONS]);

impl Rejections {
    pub fn get(&self, r: Reject) -> u64 {
        self.0[r as usize]
    }
}

impl Serialize for Rejections {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(REJECT_REASONS))?;
        for r in Reject::ALL {
            m.serialize_entry(r.label(), &self.get(r))?;
        }
        m.end()
    }
}

/// One core's state at scrape time.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Snapshot {
    pub core: usize,
    /// Open connections (authenticated or not).
    pub connections: u64,
    /// Authenticated sessions.
    pub sessions: u64,
    /// Rooms with at least one local member.
    pub rooms: u64,
    pub counters: Counters,
    /// Closes indexed by `CloseReason` value.
    pub closes: Vec<u64>,
    /// Latency histograms.
    pub hist: Histograms,
    /// Rooms hot on this core now.
    pub hot_rooms_now: u64,
    /// The busiest hot rooms of this core (`core::rooms::STATS_ROOMS_MAX`).
    pub hot_rooms: Vec<crate::core::rooms::HotRoom>,
    /// Upstream priority levels admitted (`core::overload::LEVELS` = all).
    pub admission_level: u64,
    /// Average queueing delay of the last overload window, µs.
    pub queue_delay_us: u64,
}

/// Name of a close reason as PROTOCOL.md and /stats spell it
/// (`SLOW_CONSUMER`).
pub fn close_label(i: usize) -> &'static str {
    CloseReason::try_from(i as i32)
        .map(|r| r.as_str_name())
        .unwrap_or("CLOSE_REASON_UNKNOWN")
        .trim_start_matches("CLOSE_REASON_")
}

/// A close reason as the `reason` label of `gateway_closes_total` spells
/// it: lower case, like every label value of /metrics (`slow_consumer`).
pub fn close_metric_label(i: usize) -> String {
    close_label(i).to_ascii_lowercase()
}

/// Appends one gauge: its HELP and TYPE lines, then one sample per
/// `(labels, value)`; `labels` is `key="value",...` without braces, or empty.
pub fn render_gauge(
    out: &mut String,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (String, u64)>,
) {
    use std::fmt::Write;
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
    for (labels, v) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {v}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {v}");
        }
    }
}

/// Renders Prometheus text format for all cores.
pub fn render_prometheus(cores: &[Snapshot], draining: bool) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(4096);
    let gauge = |out: &mut String, name: &str, help: &str, f: &dyn Fn(&Snapshot) -> u64| {
        let _ = writeln!(
            out,
            "# HELP gateway_{name} {help}\n# TYPE gateway_{name} gauge"
        );
        for s in cores {
            let _ = writeln!(out, "gateway_{name}{{core=\"{}\"}} {}", s.core, f(s));
        }
    };
    gauge(&mut out, "connections", "Open connections", &|s| {
        s.connections
    });
    gauge(&mut out, "sessions", "Authenticated sessions", &|s| {
        s.sessions
    });
    gauge(&mut out, "rooms", "Rooms with local members", &|s| s.rooms);
    gauge(
        &mut out,
        "hot_rooms",
        "Rooms whose pushes are coalesced into batches on this core now",
        &|s| s.hot_rooms_now,
    );
    gauge(
        &mut out,
        "admission_level",
        "Upstream priority levels admitted (384 = all; lower = shedding)",
        &|s| s.admission_level,
    );
    let _ = writeln!(
        out,
        "# HELP gateway_queue_delay_seconds Average queueing delay of the last overload window, seconds\n# TYPE gateway_queue_delay_seconds gauge"
    );
    for s in cores {
        let _ = writeln!(
            out,
            "gateway_queue_delay_seconds{{core=\"{}\"}} {}",
            s.core,
            histogram::seconds(s.queue_delay_us)
        );
    }
    let _ = writeln!(
        out,
        "# HELP gateway_draining 1 while draining\n# TYPE gateway_draining gauge\ngateway_draining {}",
        draining as u8
    );
    if let Some(b) = crate::heap::allocated_bytes() {
        let _ = writeln!(out, "# HELP gateway_heap_allocated_bytes Heap bytes allocated and not freed (resident memory also holds what the allocator keeps, code, stacks and io_uring buffers)\n# TYPE gateway_heap_allocated_bytes gauge\ngateway_heap_allocated_bytes {b}");
    }
    process::render_build_info(&mut out);
    if let Some(first) = cores.first() {
        for (i, (name, help, _)) in first.counters.each().into_iter().enumerate() {
            let _ = writeln!(
                out,
                "# HELP gateway_{name}_total {help}\n# TYPE gateway_{name}_total counter"
            );
            for s in cores {
                let v = s.counters.each()[i].2;
                let _ = writeln!(out, "gateway_{name}_total{{core=\"{}\"}} {v}", s.core);
            }
        }
    }
    let _ = writeln!(out, "# HELP gateway_rejections_total Refusals by overload control and limits, by reason\n# TYPE gateway_rejections_total counter");
    for r in Reject::ALL {
        let total: u64 = cores.iter().map(|s| s.counters.rejections.get(r)).sum();
        let _ = writeln!(
            out,
            "gateway_rejections_total{{reason=\"{}\"}} {total}",
            r.label()
        );
    }
    let _ = writeln!(out, "# HELP gateway_room_pushes_dropped_total Room pushes dropped (never sent) by reason and priority: LOW under the room's rate or the core's overload, LOW and NORMAL past a batch's cap\n# TYPE gateway_room_pushes_dropped_total counter");
    for why in crate::core::rooms::Drop::ALL {
        for p in [gw_proto::pb::Priority::Low, gw_proto::pb::Priority::Normal] {
            let cell = crate::core::rooms::drop_cell(why, p);
            let total: u64 = cores.iter().map(|s| s.counters.room_drops[cell]).sum();
            let _ = writeln!(
                out,
                "gateway_room_pushes_dropped_total{{reason=\"{}\",priority=\"{}\"}} {total}",
                why.label(),
                if p == gw_proto::pb::Priority::Low {
                    "low"
                } else {
                    "normal"
                }
            );
        }
    }
    let _ = writeln!(out, "# HELP gateway_closes_total Connections closed, by reason\n# TYPE gateway_closes_total counter");
    for i in 1..CLOSE_REASONS {
        let total: u64 = cores
            .iter()
            .map(|s| s.closes.get(i).copied().unwrap_or(0))
            .sum();
        let _ = writeln!(
            out,
            "gateway_closes_total{{reason=\"{}\"}} {total}",
            close_metric_label(i)
        );
    }
    let mut hist = Histograms::default();
    for s in cores {
        hist.add(&s.hist);
    }
    hist.render(&mut out);
    out
}

/// Sums snapshots (for /stats).
pub fn total(cores: &[Snapshot]) -> Snapshot {
    let mut t = Snapshot {
        closes: vec![0; CLOSE_REASONS],
        ..Snapshot::default()
    };
    for s in cores {
        t.connections += s.connections;
        t.sessions += s.sessions;
        t.rooms += s.rooms;
        t.counters.add(&s.counters);
        t.hist.add(&s.hist);
        for (d, v) in t.closes.iter_mut().zip(&s.closes) {
            *d += v;
        }
    }
    t
}
