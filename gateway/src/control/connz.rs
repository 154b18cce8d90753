//! `/connz`: asks every core for its matching connections
//! (`core/connz.rs`), merges them, and adds the node's closes by reason.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::{collect, Shared};
use crate::core::connz::{sort_and_cut, ConnInfo, ConnzQuery};
use crate::core::CoreMsg;
use crate::metrics;

/// The merged answer: `matched` counts every match; `connections` holds the
/// first `limit` of them by `sort`. A core that does not answer within
/// `timeout` is named in `cores_missing`. Serialized straight to text: a
/// `serde_json::Value` tree of 10,000 connections took about 20 MB for a
/// moment, and the allocator kept part of it (BENCHMARKS.md, "Soak").
#[derive(Serialize)]
pub struct Connz<'a> {
    pub node_id: &'a str,
    pub matched: usize,
    pub limit: usize,
    pub connections: Vec<ConnInfo>,
    pub cores_missing: Vec<usize>,
    pub closes: serde_json::Map<String, serde_json::Value>,
}

pub async fn connz<'a>(shared: &'a Shared, q: ConnzQuery, timeout: Duration) -> Connz<'a> {
    // One scan at a time: each walks every connection of every core inside
    // the core's inbox task (tens of ms at a million), so a scrape loop
    // must not pile them up on the data plane.
    let _one = shared.scan.lock().await;
    let q = Arc::new(q);
    let mut waits = Vec::with_capacity(shared.mesh.len());
    for (core, tx) in shared.mesh.iter().enumerate() {
        let (ptx, prx) = flume::bounded(1);
        // A core whose inbox is full counts as not answering.
        let sent = tx.try_send(CoreMsg::Connz(q.clone(), ptx)).is_ok();
        waits.push((core, sent.then_some(prx)));
    }
    let (mut matched, mut conns, mut missing) = (0, Vec::new(), Vec::new());
    for (core, rx) in waits {
        let part = match rx {
            Some(rx) => tokio::time::timeout(timeout, rx.recv_async())
                .await
                .ok()
                .and_then(Result::ok),
            None => None,
        };
        match part {
            Some(p) => {
                matched += p.matched;
                conns.extend(p.conns);
            }
            None => missing.push(core),
        }
    }
    sort_and_cut(&mut conns, q.sort, q.limit);
    let total = metrics::total(&collect(&shared.mesh, timeout).await);
    Connz {
        node_id: &shared.node_id,
        matched,
        limit: q.limit,
        connections: conns,
        cores_missing: missing,
        closes: super::admin::closes_by_reason(&total),
    }
}
