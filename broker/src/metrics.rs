//! Metrics in the Prometheus text format, on `broker.metrics_addr` (HTTP,
//! any path). Served by shard 0, which asks every shard for its counters.
//!
//! ```text
//! sluice_payload_copies_total{shard="0"}   user-space copies of record payloads
//! sluice_cache_reads_total{shard="0"}      reads served by the tail cache
//! sluice_bytes_appended_total{shard="0"}   batch bytes written to segments
//! sluice_bytes_read_total{shard="0"}       batch bytes returned to consumers
//! sluice_connections{shard="0"}            open client connections
//! sluice_partitions{shard="0"}             partitions the shard owns
//! ```

use std::rc::Rc;

use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};

use crate::router::ShardMsg;
use crate::shard::Shard;

/// Bytes of an HTTP request head read at most.
const REQUEST_HEAD_BYTES_MAX: usize = 8192;

/// One shard's numbers.
#[derive(Clone, Copy, Debug, Default)]
pub struct ShardMetrics {
    pub counters: sluice_shard::stats::ShardCounters,
    pub connections: u64,
    pub partitions: u64,
}

impl Shard {
    pub fn local_metrics(&self) -> ShardMetrics {
        ShardMetrics {
            counters: sluice_shard::stats::snapshot(),
            connections: self.connections.get() as u64,
            partitions: self.store.partitions().len() as u64,
        }
    }
}

/// Serves scrapes until the shard stops.
pub async fn serve(shard: Rc<Shard>, listener: TcpListener) {
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            crate::native::wait_until_stopping(&shard).await;
            None
        })
        .await;
        match accepted {
            None => return,
            Some(Ok(stream)) => {
                glommio::spawn_local(scrape(shard.clone(), stream)).detach();
            }
            Some(Err(e)) => tracing::debug!(error = %e, "metrics accept"),
        }
    }
}

async fn scrape(shard: Rc<Shard>, mut stream: TcpStream) {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 512];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < REQUEST_HEAD_BYTES_MAX {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let body = render(&gather(&shard).await);
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.close().await;
}

async fn gather(shard: &Rc<Shard>) -> Vec<(u32, ShardMetrics)> {
    let mut out = vec![(shard.id, shard.local_metrics())];
    for to in (0..shard.count).filter(|s| *s != shard.id) {
        if let Some(m) = shard.ask(to, |reply| ShardMsg::Metrics { reply }).await {
            out.push((to, m));
        }
    }
    out.sort_by_key(|(id, _)| *id);
    out
}

fn render(shards: &[(u32, ShardMetrics)]) -> String {
    type Series = (&'static str, &'static str, fn(&ShardMetrics) -> u64);
    let series: [Series; 6] = [
        ("sluice_payload_copies_total", "counter", |m| {
            m.counters.payload_copies
        }),
        ("sluice_cache_reads_total", "counter", |m| {
            m.counters.cache_reads
        }),
        ("sluice_bytes_appended_total", "counter", |m| {
            m.counters.bytes_appended
        }),
        ("sluice_bytes_read_total", "counter", |m| {
            m.counters.bytes_read
        }),
        ("sluice_connections", "gauge", |m| m.connections),
        ("sluice_partitions", "gauge", |m| m.partitions),
    ];
    let mut text = String::new();
    for (name, kind, value) in series {
        text.push_str(&format!("# TYPE {name} {kind}\n"));
        for (id, m) in shards {
            text.push_str(&format!("{name}{{shard=\"{id}\"}} {}\n", value(m)));
        }
    }
    text
}
