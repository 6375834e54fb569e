//! Native protocol request handlers: split each request by owning shard, do
//! local parts in place, send the rest over the mesh, gather the answers in
//! request order. A failure for one partition is that partition's error code,
//! never a failure of the whole request. Consumer-group requests go to the
//! group's coordinating shard ([`groups`]).

mod groups;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use sluice_protocol::native::{
    Acks, CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse,
    FetchPartition, FetchPartitionResponse, FetchRequest, FetchResponse,
    ListOffsetsPartitionResponse, ListOffsetsRequest, ListOffsetsResponse, MetadataRequest,
    MetadataResponse, PartitionMetadata, ProducePartitionResponse, ProduceRequest, ProduceResponse,
    Request, Response, ResponseBody, ShardAddress, TopicMetadata, TopicResult,
};
use sluice_protocol::ErrorCode;
use sluice_shard::partition::Durability;

use crate::memory::Reservation;
use crate::router::{FetchPart, FetchedPart, ProducePart, ShardMsg};
use crate::shard::Shard;

/// Longest long poll a fetch may ask for.
pub const FETCH_MAX_WAIT_MS_MAX: u32 = 30_000;

/// Answers one request; `None` for an `acks=0` produce (no response is sent).
pub async fn handle(
    shard: Rc<Shard>,
    correlation_id: u32,
    request: Request,
    memory: Rc<RefCell<Reservation>>,
) -> Option<Response> {
    let body = match request {
        Request::Produce(r) => {
            let silent = r.acks == Acks::None;
            let body = ResponseBody::Produce(produce(&shard, r).await);
            if silent {
                return None;
            }
            body
        }
        Request::Fetch(r) => {
            let (response, held) = fetch(&shard, r).await;
            memory.borrow_mut().absorb(held);
            ResponseBody::Fetch(response)
        }
        Request::ListOffsets(r) => ResponseBody::ListOffsets(list_offsets(&shard, r).await),
        Request::CreateTopics(r) => ResponseBody::CreateTopics(create_topics(&shard, r).await),
        Request::DeleteTopics(r) => ResponseBody::DeleteTopics(delete_topics(&shard, r).await),
        Request::Metadata(r) => ResponseBody::Metadata(metadata(&shard, r)),
        Request::JoinGroup(r) => ResponseBody::JoinGroup(groups::join(&shard, r).await),
        Request::SyncGroup(r) => ResponseBody::SyncGroup(groups::sync(&shard, r).await),
        Request::Heartbeat(r) => ResponseBody::Heartbeat(groups::heartbeat(&shard, r).await),
        Request::LeaveGroup(r) => ResponseBody::LeaveGroup(groups::leave(&shard, r).await),
        Request::OffsetCommit(r) => {
            ResponseBody::OffsetCommit(groups::offset_commit(&shard, r).await)
        }
        Request::OffsetFetch(r) => ResponseBody::OffsetFetch(groups::offset_fetch(&shard, r).await),
    };
    Some(Response {
        correlation_id,
        error: ErrorCode::NONE,
        message: String::new(),
        body,
    })
}

/// Indexes of `items` grouped by owning shard, in request order.
fn by_owner<T>(
    shard: &Shard,
    items: &[T],
    key: impl Fn(&T) -> (&str, u32),
) -> BTreeMap<u32, Vec<usize>> {
    let mut groups: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (i, item) in items.iter().enumerate() {
        let (topic, partition) = key(item);
        groups
            .entry(shard.owner(topic, partition))
            .or_default()
            .push(i);
    }
    groups
}

/// Puts per-group answers back in request order; a group whose owner failed
/// to answer gets `missing` for each of its items.
fn reassemble<T>(
    n: usize,
    groups: Vec<(Vec<usize>, Option<Vec<T>>)>,
    missing: impl Fn(usize) -> T,
) -> Vec<T> {
    let mut slots: Vec<Option<T>> = (0..n).map(|_| None).collect();
    for (indexes, answers) in groups {
        match answers {
            Some(answers) if answers.len() == indexes.len() => {
                for (i, a) in indexes.into_iter().zip(answers) {
                    slots[i] = Some(a);
                }
            }
            _ => {
                for i in indexes {
                    slots[i] = Some(missing(i));
                }
            }
        }
    }
    slots
        .into_iter()
        .enumerate()
        .map(|(i, s)| s.unwrap_or_else(|| missing(i)))
        .collect()
}

/// Splits `items` by owning shard, runs every owner's part at once (`run`
/// does it in place for this shard and over the mesh for others), and puts
/// the answers back in request order; an owner that did not answer gives
/// `missing(i)` for each of its items.
async fn scatter_gather<P, R, F, Fut>(
    shard: &Rc<Shard>,
    items: Vec<P>,
    key: impl Fn(&P) -> (&str, u32),
    run: F,
    missing: impl Fn(usize) -> R,
) -> Vec<R>
where
    P: 'static,
    R: 'static,
    F: Fn(Rc<Shard>, u32, Vec<P>) -> Fut,
    Fut: std::future::Future<Output = Option<Vec<R>>> + 'static,
{
    let n = items.len();
    let groups = by_owner(shard, &items, key);
    let mut slots: Vec<Option<P>> = items.into_iter().map(Some).collect();
    let mut tasks = Vec::with_capacity(groups.len());
    for (owner, indexes) in groups {
        let group: Vec<P> = indexes.iter().filter_map(|i| slots[*i].take()).collect();
        tasks.push((
            indexes,
            glommio::spawn_local(run(shard.clone(), owner, group)),
        ));
    }
    let mut answers = Vec::with_capacity(tasks.len());
    for (indexes, task) in tasks {
        answers.push((indexes, task.await));
    }
    reassemble(n, answers, missing)
}

pub(crate) async fn produce(shard: &Rc<Shard>, req: ProduceRequest) -> ProduceResponse {
    let durability = match req.acks {
        Acks::All => Durability::Flushed,
        Acks::Leader | Acks::None => Durability::Written,
    };
    let keys: Vec<(String, u32)> = req
        .partitions
        .iter()
        .map(|p| (p.topic.clone(), p.partition))
        .collect();
    let parts: Vec<ProducePart> = req
        .partitions
        .into_iter()
        .map(|p| ProducePart {
            topic: p.topic,
            partition: p.partition,
            records: p.records,
        })
        .collect();
    let partitions = scatter_gather(
        shard,
        parts,
        |p| (p.topic.as_str(), p.partition),
        move |shard, owner, group| async move {
            if owner == shard.id {
                return Some(shard.local_produce(durability, group).await);
            }
            shard
                .ask(owner, |reply| ShardMsg::Produce {
                    durability,
                    parts: group,
                    reply,
                })
                .await
        },
        |i| ProducePartitionResponse {
            topic: keys[i].0.clone(),
            partition: keys[i].1,
            error: ErrorCode::NOT_LEADER_OR_FOLLOWER,
            base_offset: -1,
            log_start_offset: -1,
            error_message: None,
        },
    )
    .await;
    ProduceResponse { partitions }
}

/// Fetches without waiting, from every owner at once.
async fn fetch_once(shard: &Rc<Shard>, parts: Vec<FetchPart>) -> Vec<FetchedPart> {
    let keys: Vec<(String, u32)> = parts
        .iter()
        .map(|p| (p.part.topic.clone(), p.part.partition))
        .collect();
    scatter_gather(
        shard,
        parts,
        |p| (p.part.topic.as_str(), p.part.partition),
        |shard, owner, group| async move {
            if owner == shard.id {
                return Some(shard.local_fetch(group).await);
            }
            shard
                .ask(owner, |reply| ShardMsg::Fetch {
                    parts: group,
                    reply,
                })
                .await
        },
        |i| FetchedPart {
            response: FetchPartitionResponse {
                topic: keys[i].0.clone(),
                partition: keys[i].1,
                error: ErrorCode::NOT_LEADER_OR_FOLLOWER,
                high_watermark: -1,
                log_start_offset: -1,
                log_end_offset: -1,
                records: Vec::new(),
            },
            next_batch_bytes: None,
        },
    )
    .await
}

/// A fetch: returns at once when `min_bytes` are there (or on any error),
/// otherwise waits for appends until `max_wait_ms`, then answers with what
/// there is. `max_bytes` bounds the response, but the first non-empty
/// partition is always returned whole (Kafka's rule, so a consumer can make
/// progress past a batch larger than its limit).
///
/// Each read first reserves room for its response in the shard's request
/// memory, as much of `max_bytes` as is free, and reads at most an equal
/// share of that from each partition, all partitions at once. A partition
/// whose next batch is larger than its share, or than its own
/// `partition_max_bytes`, returns nothing but the batch's size (only the
/// first partition asked for may go past either in that read), and
/// [`fill_past_shares`] then reads, in the request's order, those that the
/// response has room for. So a partition's batches are rarely read only to
/// be cut from the response (and read again by the next fetch), and a
/// fetch of many partitions still fills up to `max_bytes`. The reservation
/// comes back with the response and is held until it is written.
///
/// A fetch of no partitions is answered at once, as Kafka does: there is
/// nothing whose appends it could wait for. (The Java consumer sends one to
/// close its fetch session.)
pub(crate) async fn fetch(shard: &Rc<Shard>, req: FetchRequest) -> (FetchResponse, Reservation) {
    let wait = match req.partitions.is_empty() {
        true => Duration::ZERO,
        false => Duration::from_millis(u64::from(req.max_wait_ms.min(FETCH_MAX_WAIT_MS_MAX))),
    };
    let deadline = Instant::now() + wait;
    loop {
        let mut memory = shard.request_memory.reserve_up_to(u64::from(req.max_bytes));
        let n = req.partitions.len().max(1) as u64;
        let share = memory.bytes() / n;
        // A first batch within an equal share of `max_bytes` cannot push
        // the response past it: returned whole even past the share of the
        // memory reserved, as the reservation grows to what is sent.
        let whole_up_to = u32::try_from(u64::from(req.max_bytes) / n).unwrap_or(u32::MAX);
        let parts: Vec<FetchPart> = req
            .partitions
            .iter()
            .enumerate()
            .map(|(i, p)| FetchPart {
                part: FetchPartition {
                    max_bytes: p.max_bytes.min(share.min(u64::from(u32::MAX)) as u32),
                    ..p.clone()
                },
                // Past the first, no batch larger than the partition's
                // own limit (Kafka's `partition_max_bytes`).
                whole_up_to: if i == 0 {
                    u32::MAX
                } else {
                    whole_up_to.min(p.max_bytes)
                },
            })
            .collect();
        let mut fetched = fetch_once(shard, parts).await;
        fill_past_shares(shard, &req, &mut fetched).await;
        let results: Vec<FetchPartitionResponse> =
            fetched.into_iter().map(|f| f.response).collect();
        let bytes: usize = results.iter().map(|r| r.records_len()).sum();
        let failed = results.iter().any(|r| !r.error.is_ok());
        let now = Instant::now();
        if bytes >= req.min_bytes as usize
            || bytes > 0 && req.min_bytes == 0
            || failed
            || now >= deadline
        {
            let partitions = limit_total(results, req.max_bytes as usize);
            let sent: usize = partitions.iter().map(|r| r.records_len()).sum();
            if sent as u64 > memory.bytes() {
                // Past the share by whole first batches (Kafka's progress
                // rule): count what is free of the excess too.
                let more = shard
                    .request_memory
                    .reserve_up_to(sent as u64 - memory.bytes());
                memory.absorb(more);
            }
            memory.shrink_to(sent as u64);
            return (FetchResponse { partitions }, memory);
        }
        drop(memory);
        let seen: Vec<(String, u32, i64)> = results
            .iter()
            .zip(&req.partitions)
            .map(|(r, p)| (p.topic.clone(), p.partition, r.log_end_offset.max(p.offset)))
            .collect();
        wait_for_append(shard, seen, deadline - now).await;
    }
}

/// Reads the partitions whose next batch was larger than their share of a
/// fetch, as Kafka fills a fetch: one partition after another in the
/// request's order, the first with data whole, any later one when its
/// batch fits both its own limit and what the partitions before it left of
/// the fetch's `max_bytes`. A partition read in the first pass counts
/// toward that only if [`limit_total`] will keep it. So a partition whose
/// batch is larger than its share is not passed over for as long as later
/// partitions have data (a client that sends its partitions in the same
/// order each time would otherwise never get it). What the first read had
/// of such a batch was kept by its shard, so it is not read twice.
async fn fill_past_shares(shard: &Rc<Shard>, req: &FetchRequest, fetched: &mut [FetchedPart]) {
    let max_bytes = req.max_bytes as usize;
    let mut before = 0usize;
    let mut again = Vec::new();
    let mut parts = Vec::new();
    for (i, (f, p)) in fetched.iter().zip(&req.partitions).enumerate() {
        let first = before == 0;
        let len = f.response.records_len();
        if len > 0 {
            if first || before + len <= max_bytes {
                before += len;
            }
            continue;
        }
        let Some(n) = f.next_batch_bytes else {
            continue;
        };
        if !f.response.error.is_ok()
            || !first && (n > p.max_bytes as usize || before + n > max_bytes)
        {
            continue;
        }
        before += n;
        again.push(i);
        parts.push(FetchPart {
            part: FetchPartition {
                max_bytes: u32::try_from(n).unwrap_or(u32::MAX),
                ..p.clone()
            },
            whole_up_to: u32::MAX,
        });
    }
    if parts.is_empty() {
        return;
    }
    for (i, f) in again.into_iter().zip(fetch_once(shard, parts).await) {
        fetched[i] = f;
    }
}

pub(crate) fn limit_total(
    mut results: Vec<FetchPartitionResponse>,
    max_bytes: usize,
) -> Vec<FetchPartitionResponse> {
    let mut total = 0usize;
    for r in results.iter_mut() {
        let len = r.records_len();
        if len == 0 {
            continue;
        }
        if total > 0 && total + len > max_bytes {
            r.records.clear();
            continue;
        }
        total += len;
    }
    results
}

/// Waits until any partition grows past what was seen, or `timeout`.
pub(crate) async fn wait_for_append(
    shard: &Rc<Shard>,
    seen: Vec<(String, u32, i64)>,
    timeout: Duration,
) {
    if seen.is_empty() {
        // Nothing can wake this wait: sleep it out rather than return at
        // once into a caller that would ask again (a busy loop).
        glommio::timer::sleep(timeout).await;
        return;
    }
    let groups = by_owner(shard, &seen, |s| (s.0.as_str(), s.1));
    let (done, first) = glommio::channels::local_channel::new_bounded::<()>(groups.len().max(1));
    let done = Rc::new(done);
    for (owner, indexes) in groups {
        let group: Vec<(String, u32, i64)> = indexes.iter().map(|i| seen[*i].clone()).collect();
        let shard = shard.clone();
        let done = done.clone();
        glommio::spawn_local(async move {
            if owner == shard.id {
                shard.local_watch(group, timeout).await;
            } else {
                let (reply, answer) = crate::router::reply_channel();
                let msg = ShardMsg::WatchAppend {
                    parts: group,
                    timeout,
                    reply,
                };
                if shard.send(owner, msg).await {
                    let _ = answer.await;
                }
            }
            let _ = done.try_send(());
        })
        .detach();
    }
    drop(done);
    let _ = glommio::timer::timeout(timeout, async {
        first.recv().await;
        Ok(())
    })
    .await;
}

pub(crate) async fn list_offsets(
    shard: &Rc<Shard>,
    req: ListOffsetsRequest,
) -> ListOffsetsResponse {
    let parts = req.partitions;
    let keys: Vec<(String, u32)> = parts
        .iter()
        .map(|p| (p.topic.clone(), p.partition))
        .collect();
    let partitions = scatter_gather(
        shard,
        parts,
        |p| (p.topic.as_str(), p.partition),
        |shard, owner, group| async move {
            if owner == shard.id {
                return Some(shard.local_list_offsets(group).await);
            }
            shard
                .ask(owner, |reply| ShardMsg::ListOffsets {
                    parts: group,
                    reply,
                })
                .await
        },
        |i| ListOffsetsPartitionResponse {
            topic: keys[i].0.clone(),
            partition: keys[i].1,
            error: ErrorCode::NOT_LEADER_OR_FOLLOWER,
            offset: -1,
            timestamp: -1,
        },
    )
    .await;
    ListOffsetsResponse { partitions }
}

/// Topic changes go to shard 0, the controller.
pub(crate) async fn create_topics(
    shard: &Rc<Shard>,
    req: CreateTopicsRequest,
) -> CreateTopicsResponse {
    if shard.id == 0 {
        return CreateTopicsResponse {
            topics: shard.controller_create(req.topics).await,
        };
    }
    let names: Vec<String> = req.topics.iter().map(|t| t.name.clone()).collect();
    let topics = shard
        .ask(0, |reply| ShardMsg::CreateTopics {
            topics: req.topics,
            reply,
        })
        .await;
    CreateTopicsResponse {
        topics: topics.unwrap_or_else(|| unavailable(names)),
    }
}

pub(crate) async fn delete_topics(
    shard: &Rc<Shard>,
    req: DeleteTopicsRequest,
) -> DeleteTopicsResponse {
    if shard.id == 0 {
        return DeleteTopicsResponse {
            topics: shard.controller_delete(req.names).await,
        };
    }
    let names = req.names.clone();
    let topics = shard
        .ask(0, |reply| ShardMsg::DeleteTopics {
            names: req.names,
            reply,
        })
        .await;
    DeleteTopicsResponse {
        topics: topics.unwrap_or_else(|| unavailable(names)),
    }
}

fn unavailable(names: Vec<String>) -> Vec<TopicResult> {
    names
        .into_iter()
        .map(|name| TopicResult {
            name,
            error: ErrorCode::REQUEST_TIMED_OUT,
            message: "the controller shard is not running".into(),
        })
        .collect()
}

fn metadata(shard: &Rc<Shard>, req: MetadataRequest) -> MetadataResponse {
    let host = shard.config.advertised_host();
    let shards = (0..shard.count)
        .map(|id| ShardAddress {
            shard: id,
            host: host.clone(),
            port: shard.shard_port(id),
        })
        .collect();
    let table = shard.topics.borrow();
    let names: Vec<String> = match req.topics.is_empty() {
        true => table.all().map(|t| t.name.clone()).collect(),
        false => req.topics,
    };
    let topics = names
        .into_iter()
        .map(|name| match table.get(&name) {
            None => TopicMetadata {
                name,
                error: ErrorCode::UNKNOWN_TOPIC_OR_PARTITION,
                partitions: Vec::new(),
                configs: Vec::new(),
            },
            Some(meta) => TopicMetadata {
                partitions: (0..meta.partitions)
                    .map(|p| PartitionMetadata {
                        partition: p,
                        shard: shard.owner(&name, p),
                        leader_epoch: shard.generation,
                        error: ErrorCode::NONE,
                    })
                    .collect(),
                configs: meta
                    .effective_configs(&shard.log_defaults)
                    .into_iter()
                    .map(|(k, v, _)| (k, v))
                    .collect(),
                name,
                error: ErrorCode::NONE,
            },
        })
        .collect();
    let bootstrap_port = shard.config.native_socket_addr().map_or(0, |a| a.port());
    MetadataResponse {
        node_id: shard.config.broker.node_id,
        bootstrap_host: host,
        bootstrap_port,
        shards,
        topics,
    }
}
