//! Cross-shard messages: the one enum that travels between cores.
//!
//! A request that touches partitions owned by other shards is split by owner;
//! each part travels to its owner as a [`ShardMsg`] over glommio's bounded
//! channel mesh, and the answer comes back on the oneshot carried inside the
//! message. Nothing else crosses cores: no shared partition state, no locks.
//!
//! Each variant says whether a sender may retry it after a failure (the owner
//! stopped, or the reply was dropped).
//!
//! Replies travel back over the mesh too ([`ShardMsg::Reply`]), never by
//! waking a task of another thread: glommio supports foreign wakers, but
//! their reference counting races with the owner freeing a finished task,
//! which crashed a broker under load. So a [`Reply`] is only an address
//! (origin shard, request id); the answer is delivered on the origin shard,
//! which wakes its waiting task locally.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_channel::oneshot;
use glommio::channels::channel_mesh::Senders;
use sluice_protocol::native::{
    CreateTopic, FetchPartition, FetchPartitionResponse, ListOffsetsPartition,
    ListOffsetsPartitionResponse, ProducePartitionResponse, TopicResult,
};
use sluice_shard::partition::Durability;

use crate::kafka::group::{GroupRequest, GroupResponse};
use crate::topics::TopicMeta;

/// A reply payload on its way back to the origin shard.
type Payload = Box<dyn Any + Send>;

/// Where the answer to a cross-shard message goes: the origin shard and the
/// request's id there. `Send`; answering sends a [`ShardMsg::Reply`].
pub struct Reply<T> {
    origin: u32,
    id: u64,
    sent: bool,
    _answer: PhantomData<fn(T)>,
}

/// The origin's side: resolves when the reply arrives (or `Err` when the
/// receiving shard dropped the request without answering).
pub struct Answer<T> {
    rx: oneshot::Receiver<Option<Payload>>,
    _answer: PhantomData<fn() -> T>,
}

/// The reply was dropped without an answer.
#[derive(Debug)]
pub struct Canceled;

/// Per-shard state of the reply path (`!Send`).
struct Replies {
    shard: u32,
    peers: Rc<Senders<ShardMsg>>,
    pending: RefCell<HashMap<u64, oneshot::Sender<Option<Payload>>>>,
    next_id: Cell<u64>,
}

thread_local! {
    static REPLIES: RefCell<Option<Rc<Replies>>> = const { RefCell::new(None) };
}

fn replies() -> Option<Rc<Replies>> {
    REPLIES.with(|r| r.borrow().clone())
}

/// Installs the calling shard's reply path (at start-up, once).
pub fn install(shard: u32, peers: Rc<Senders<ShardMsg>>) {
    let r = Replies {
        shard,
        peers,
        pending: RefCell::new(HashMap::new()),
        next_id: Cell::new(0),
    };
    REPLIES.with(|cell| *cell.borrow_mut() = Some(Rc::new(r)));
}

/// A reply address and the answer to await, for one cross-shard request.
pub fn reply_channel<T: Send + 'static>() -> (Reply<T>, Answer<T>) {
    let (tx, rx) = oneshot::channel();
    let (origin, id) = match replies() {
        Some(r) => {
            let id = r.next_id.get();
            r.next_id.set(id + 1);
            r.pending.borrow_mut().insert(id, tx);
            (r.shard, id)
        }
        // No mesh (cannot happen on a running shard): answers never come.
        None => (u32::MAX, 0),
    };
    (
        Reply {
            origin,
            id,
            sent: false,
            _answer: PhantomData,
        },
        Answer {
            rx,
            _answer: PhantomData,
        },
    )
}

/// Delivers a reply that arrived over the mesh (on the origin shard).
pub fn deliver(id: u64, value: Option<Payload>) {
    if let Some(r) = replies() {
        if let Some(tx) = r.pending.borrow_mut().remove(&id) {
            let _ = tx.send(value);
        }
    }
}

impl<T: Send + 'static> Reply<T> {
    /// Sends the answer back to the origin shard.
    pub fn send(mut self, value: T) -> Result<(), Canceled> {
        self.sent = true;
        route(self.origin, self.id, Some(Box::new(value)))
    }
}

impl<T> Drop for Reply<T> {
    fn drop(&mut self) {
        if !self.sent {
            let _ = route(self.origin, self.id, None);
        }
    }
}

/// Sends a reply over the mesh from whichever shard runs this, or delivers
/// it in place when the origin is this shard.
fn route(origin: u32, id: u64, value: Option<Payload>) -> Result<(), Canceled> {
    let r = replies().ok_or(Canceled)?;
    if origin == r.shard {
        deliver(id, value);
        return Ok(());
    }
    let peers = r.peers.clone();
    glommio::spawn_local(async move {
        let _ = peers
            .send_to(origin as usize, ShardMsg::Reply { id, value })
            .await;
    })
    .detach();
    Ok(())
}

impl<T: 'static> Future for Answer<T> {
    type Output = Result<T, Canceled>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match Pin::new(&mut self.rx).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(Some(v))) => {
                Poll::Ready(v.downcast::<T>().map(|b| *b).map_err(|_| Canceled))
            }
            Poll::Ready(_) => Poll::Ready(Err(Canceled)),
        }
    }
}

/// Bounded depth of each channel between two shards.
pub const SHARD_CHANNEL_DEPTH: usize = 1024;

/// One partition's records on their way to the owning shard.
#[derive(Debug)]
pub struct ProducePart {
    pub topic: String,
    pub partition: u32,
    pub records: Bytes,
}

/// One partition of a fetch, as its owner reads it.
#[derive(Clone, Debug)]
pub struct FetchPart {
    pub part: FetchPartition,
    /// Up to what size a first batch larger than `part.max_bytes` is still
    /// returned whole (`u32::MAX`: any batch). Past it the owner says the batch's
    /// size instead: Kafka lets only the first non-empty partition of a
    /// fetch go past the fetch's limits.
    pub whole_up_to: u32,
}

/// One partition's answer to a [`FetchPart`].
#[derive(Debug)]
pub struct FetchedPart {
    pub response: FetchPartitionResponse,
    /// Nothing was read because the first batch is larger than the read
    /// allowed (past `whole_up_to`): its size.
    pub next_batch_bytes: Option<usize>,
}

/// A change to a topic, decided by the controller.
#[derive(Clone, Debug)]
pub enum TopicChange {
    /// Grow to this many partitions (CreatePartitions).
    Partitions(u32),
    /// Replace every override with these (AlterConfigs).
    ReplaceConfigs(Vec<(String, String)>),
    /// Set (`Some`) or remove (`None`) these overrides (IncrementalAlterConfigs).
    EditConfigs(Vec<(String, Option<String>)>),
}

/// Every message one shard sends another.
pub enum ShardMsg {
    /// The answer to a request this shard sent (see [`Reply`]); `None` when
    /// the receiver dropped the request unanswered.
    Reply {
        id: u64,
        value: Option<Box<dyn Any + Send>>,
    },
    /// Append to partitions the receiver owns. Not retryable: a retry after a
    /// lost reply could append the batches twice (no producer ids yet).
    Produce {
        durability: Durability,
        parts: Vec<ProducePart>,
        reply: Reply<Vec<ProducePartitionResponse>>,
    },
    /// Read from partitions the receiver owns, without waiting. Retryable.
    Fetch {
        parts: Vec<FetchPart>,
        reply: Reply<Vec<FetchedPart>>,
    },
    /// Answer when any of these partitions has grown past the given log end
    /// offset, or when `timeout` passes. Retryable.
    WatchAppend {
        parts: Vec<(String, u32, i64)>,
        timeout: Duration,
        reply: Reply<()>,
    },
    /// Offsets of partitions the receiver owns. Retryable.
    ListOffsets {
        parts: Vec<ListOffsetsPartition>,
        reply: Reply<Vec<ListOffsetsPartitionResponse>>,
    },
    /// OffsetForLeaderEpoch for a partition the receiver owns: the epoch and
    /// its end offset, an error code, or `None` for an unknown partition.
    /// Retryable.
    EpochEnd {
        topic: String,
        partition: u32,
        epoch: i32,
        reply: Reply<Option<Result<(i32, i64), i16>>>,
    },
    /// A consumer-group request for a group this shard coordinates. JoinGroup
    /// and SyncGroup wait for the rebalance; OffsetCommit is not retryable
    /// blindly (a retry may commit an older offset after a newer one), the
    /// rest are.
    Group {
        request: GroupRequest,
        reply: Reply<GroupResponse>,
    },
    /// This shard's counters, for a metrics scrape. Retryable.
    Metrics {
        reply: Reply<crate::metrics::ShardMetrics>,
    },
    /// To shard 0, the controller: create topics. Retryable (a topic that
    /// exists is reported as TOPIC_ALREADY_EXISTS, never created twice).
    CreateTopics {
        topics: Vec<CreateTopic>,
        reply: Reply<Vec<TopicResult>>,
    },
    /// To shard 0, the controller: delete topics. Retryable.
    DeleteTopics {
        names: Vec<String>,
        reply: Reply<Vec<TopicResult>>,
    },
    /// To shard 0, the controller: change a topic (partition count or
    /// configs). Retryable (the change is absolute, not relative).
    AlterTopic {
        name: String,
        change: TopicChange,
        validate_only: bool,
        reply: Reply<Result<(), (i16, String)>>,
    },
    /// From the controller to every shard: a topic's new metadata; open the
    /// partitions you now own and apply the configs. Retryable (idempotent).
    TopicUpdated {
        meta: TopicMeta,
        reply: Reply<Result<(), String>>,
    },
    /// Delete the records of a partition the receiver owns below an offset
    /// (-1: the high watermark); the new log start offset or an error code.
    /// Retryable.
    DeleteRecords {
        topic: String,
        partition: u32,
        offset: i64,
        reply: Reply<Result<i64, i16>>,
    },
    /// From the controller to every shard: learn a topic and open the
    /// partitions you own. Retryable (idempotent).
    TopicCreated {
        meta: TopicMeta,
        reply: Reply<Result<(), String>>,
    },
    /// From the controller to every shard: forget a topic and delete the
    /// partitions you own. Retryable (idempotent).
    TopicDeleted { name: String, reply: Reply<()> },
}
