//! Metrics in the Prometheus text format, on `broker.metrics_addr` (HTTP,
//! any path). Served by shard 0, which asks every shard for its counters.
//!
//! ```text
//! sluice_payload_copies_total{shard="0"}   user-space copies of record payloads
//! sluice_cache_reads_total{shard="0"}      reads served by the tail cache
//! sluice_bytes_appended_total{shard="0"}   batch bytes written to segments
//! sluice_zeros_filled_bytes_total{shard="0"} zeros written ahead of appends
//! sluice_fdatasyncs_total{shard="0"}       fdatasyncs issued for flushed appends
//! sluice_shared_flushes_total{shard="0"}   flushed groups that shared a device flush
//! sluice_anchored_flushes_total{shard="0"} shared flushes issued on the empty anchor file
//! sluice_linked_flushes_total{shard="0"}   fdatasyncs linked behind their write
//! sluice_registered_writes_total{shard="0"} segment writes from registered memory
//! sluice_read_ahead_bytes_total{shard="0"} segment bytes read ahead of consumers
//! sluice_read_ahead_hits_total{shard="0"}  fetches that found their read ahead
//! sluice_read_ahead_dropped_total{..}      reads ahead dropped unused
//! sluice_read_ahead_refused_total{..}      reads ahead not started: budget full
//! sluice_read_ahead_kept_bytes_total{..}   bytes read but not sent, kept for the next fetch
//! sluice_segment_read_bytes_total{..}      bytes read from segment files (fetches, reads ahead)
//! sluice_write_latency_seconds{shard="0"} histogram: segment writes of appends
//! sluice_flush_latency_seconds{shard="0"} histogram: flushes of appends
//! sluice_produce_latency_seconds{shard="0"} histogram: answered Produce requests,
//!                                          last byte in to last byte out
//! sluice_fetch_latency_seconds{shard="0"} histogram: answered Fetch requests, the
//!                                          wait for data included
//! sluice_bytes_read_total{shard="0"}       batch bytes returned to consumers
//! sluice_connections{shard="0"}            open client connections
//! sluice_partitions{shard="0"}             partitions the shard owns
//! sluice_tail_cache_bytes{shard="0"}       batch bytes held by the tail cache
//! sluice_tail_cache_capacity_bytes{...}    the tail cache's share of the budget
//! sluice_request_memory_bytes{shard="0"}   request memory reserved now
//! sluice_request_memory_capacity_bytes{..} the shard's request memory pool
//! sluice_read_ahead_held_bytes{shard="0"}  segment bytes read ahead, not yet taken
//! sluice_read_ahead_capacity_bytes{..}     their bound: a quarter of request memory
//! sluice_memory_budget_bytes               the whole process's memory budget
//! ```

use std::rc::Rc;

use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};

use crate::router::ShardMsg;
use crate::shard::Shard;
use sluice_shard::stats::LatencyHistogram;

/// Bytes of an HTTP request head read at most.
const REQUEST_HEAD_BYTES_MAX: usize = 8192;

/// One shard's numbers.
#[derive(Clone, Copy, Debug, Default)]
pub struct ShardMetrics {
    pub counters: sluice_shard::stats::ShardCounters,
    pub connections: u64,
    pub partitions: u64,
    pub tail_cache_bytes: u64,
    pub tail_cache_capacity_bytes: u64,
    pub request_memory_bytes: u64,
    pub request_memory_capacity_bytes: u64,
    pub read_ahead_held_bytes: u64,
    pub read_ahead_capacity_bytes: u64,
    pub memory_budget_bytes: u64,
}

impl Shard {
    pub fn local_metrics(&self) -> ShardMetrics {
        ShardMetrics {
            counters: sluice_shard::stats::snapshot(),
            connections: self.connections.get() as u64,
            partitions: self.store.partitions().len() as u64,
            tail_cache_bytes: self.store.cache().used_bytes() as u64,
            tail_cache_capacity_bytes: self.memory.tail_cache,
            request_memory_bytes: self.request_memory.in_use(),
            request_memory_capacity_bytes: self.request_memory.capacity(),
            read_ahead_held_bytes: self.store.read_ahead().held_bytes() as u64,
            read_ahead_capacity_bytes: self.store.read_ahead().budget() as u64,
            memory_budget_bytes: self.memory.budget,
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
    let series: [Series; 24] = [
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
        ("sluice_zeros_filled_bytes_total", "counter", |m| {
            m.counters.zeros_filled
        }),
        ("sluice_fdatasyncs_total", "counter", |m| {
            m.counters.fdatasyncs
        }),
        ("sluice_shared_flushes_total", "counter", |m| {
            m.counters.shared_flushes
        }),
        ("sluice_anchored_flushes_total", "counter", |m| {
            m.counters.anchored_flushes
        }),
        ("sluice_linked_flushes_total", "counter", |m| {
            m.counters.linked_flushes
        }),
        ("sluice_registered_writes_total", "counter", |m| {
            m.counters.registered_writes
        }),
        ("sluice_read_ahead_bytes_total", "counter", |m| {
            m.counters.read_ahead_bytes
        }),
        ("sluice_read_ahead_hits_total", "counter", |m| {
            m.counters.read_ahead_hits
        }),
        ("sluice_read_ahead_dropped_total", "counter", |m| {
            m.counters.read_ahead_dropped
        }),
        ("sluice_read_ahead_refused_total", "counter", |m| {
            m.counters.read_ahead_refused
        }),
        ("sluice_read_ahead_kept_bytes_total", "counter", |m| {
            m.counters.read_ahead_kept
        }),
        ("sluice_segment_read_bytes_total", "counter", |m| {
            m.counters.segment_bytes_read
        }),
        ("sluice_connections", "gauge", |m| m.connections),
        ("sluice_partitions", "gauge", |m| m.partitions),
        ("sluice_tail_cache_bytes", "gauge", |m| m.tail_cache_bytes),
        ("sluice_tail_cache_capacity_bytes", "gauge", |m| {
            m.tail_cache_capacity_bytes
        }),
        ("sluice_request_memory_bytes", "gauge", |m| {
            m.request_memory_bytes
        }),
        ("sluice_request_memory_capacity_bytes", "gauge", |m| {
            m.request_memory_capacity_bytes
        }),
        ("sluice_read_ahead_held_bytes", "gauge", |m| {
            m.read_ahead_held_bytes
        }),
        ("sluice_read_ahead_capacity_bytes", "gauge", |m| {
            m.read_ahead_capacity_bytes
        }),
    ];
    let mut text = String::new();
    // The whole process's budget: one series, no shard label.
    if let Some((_, m)) = shards.first() {
        text.push_str("# TYPE sluice_memory_budget_bytes gauge\n");
        text.push_str(&format!(
            "sluice_memory_budget_bytes {}\n",
            m.memory_budget_bytes
        ));
    }
    for (name, kind, value) in series {
        text.push_str(&format!("# TYPE {name} {kind}\n"));
        for (id, m) in shards {
            text.push_str(&format!("{name}{{shard=\"{id}\"}} {}\n", value(m)));
        }
    }
    type Histogram = (&'static str, fn(&ShardMetrics) -> &LatencyHistogram);
    let histograms: [Histogram; 4] = [
        ("sluice_write_latency_seconds", |m| {
            &m.counters.write_latency
        }),
        ("sluice_flush_latency_seconds", |m| {
            &m.counters.flush_latency
        }),
        ("sluice_produce_latency_seconds", |m| {
            &m.counters.produce_latency
        }),
        ("sluice_fetch_latency_seconds", |m| {
            &m.counters.fetch_latency
        }),
    ];
    for (name, histogram) in histograms {
        text.push_str(&format!("# TYPE {name} histogram\n"));
        for (id, m) in shards {
            render_histogram(&mut text, name, *id, histogram(m));
        }
    }
    text
}

/// One shard's histogram in the Prometheus text format: cumulative
/// `_bucket` lines with `le` in seconds, then `_sum` and `_count`.
fn render_histogram(text: &mut String, name: &str, shard: u32, h: &LatencyHistogram) {
    for (bound, n) in h.cumulative() {
        let le = bound.map_or_else(|| "+Inf".to_owned(), |us| (us as f64 / 1e6).to_string());
        text.push_str(&format!(
            "{name}_bucket{{shard=\"{shard}\",le=\"{le}\"}} {n}\n"
        ));
    }
    text.push_str(&format!(
        "{name}_sum{{shard=\"{shard}\"}} {}\n",
        h.sum_us as f64 / 1e6
    ));
    text.push_str(&format!(
        "{name}_count{{shard=\"{shard}\"}} {}\n",
        h.count()
    ));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn histograms_render_cumulative_buckets_in_seconds() {
        let mut m = ShardMetrics::default();
        for us in [40, 700, 700, 3_000_000] {
            m.counters.flush_latency.record(Duration::from_micros(us));
        }
        m.counters
            .produce_latency
            .record(Duration::from_micros(420));
        let text = render(&[(1, m)]);
        let line = |prefix: &str| {
            text.lines()
                .find(|l| l.starts_with(prefix))
                .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
                .rsplit(' ')
                .next()
                .map(str::to_owned)
        };
        let flush = "sluice_flush_latency_seconds";
        let write = "sluice_write_latency_seconds";
        let produce = "sluice_produce_latency_seconds";
        let fetch = "sluice_fetch_latency_seconds";
        assert!(text.contains(&format!("# TYPE {flush} histogram\n")));
        let bucket = |name: &str, le: &str| format!("{name}_bucket{{shard=\"1\",le=\"{le}\"}}");
        let expected = [
            (bucket(flush, "0.00005"), "1"),
            (bucket(flush, "0.0005"), "1"),
            (bucket(flush, "0.001"), "3"),
            (bucket(flush, "1"), "3"),
            (bucket(flush, "+Inf"), "4"),
            (format!("{flush}_count{{shard=\"1\"}}"), "4"),
            (format!("{flush}_sum{{shard=\"1\"}}"), "3.00144"),
            // Nothing written: every bucket of the write histogram is zero.
            (bucket(write, "+Inf"), "0"),
            (format!("{write}_count{{shard=\"1\"}}"), "0"),
            (bucket(produce, "0.00025"), "0"),
            (bucket(produce, "0.0005"), "1"),
            (format!("{produce}_count{{shard=\"1\"}}"), "1"),
            (format!("{fetch}_count{{shard=\"1\"}}"), "0"),
        ];
        for (series, value) in expected {
            assert_eq!(line(&series).as_deref(), Some(value), "{series}");
        }
    }
}
