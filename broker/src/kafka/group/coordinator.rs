//! The async shell around the sans-IO [`Core`]: one per shard, `!Send`.
//!
//! JoinGroup and SyncGroup park on a oneshot channel until the core answers them (at
//! the end of a join phase, or when the leader syncs). A timer task ticks the core
//! every [`TICK_MS`] for session, join and sync deadlines. Records the core asks for
//! are appended to `__consumer_offsets` through [`OffsetsLog`] before the replies of
//! the same step are delivered, so no client hears of a state the log does not hold.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures_channel::oneshot;
use kafka_protocol::messages::{HeartbeatResponse, OffsetDeleteResponse};
use sluice_protocol::batch::{self, BatchBuilder};

use super::ops::CommitPlan;
use super::state::{join_error, sync_error, Core, Effects, LogRecord, Now, WaiterId};
use super::{code, GroupConfig, GroupRequest, GroupResponse, LOAD_READ_BYTES, TICK_MS};

pub type LocalBoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// The shard's `__consumer_offsets` partitions, as the coordinator needs them. The lead
/// implements it over the shard's partition logs; tests use an in-memory fake.
pub trait OffsetsLog {
    /// Appends one uncompressed RecordBatch v2 (base offset 0, to be assigned) and
    /// returns its base offset; `Ok` only once the batch is durable (fsynced).
    fn append(&self, partition: u32, batch: Bytes) -> LocalBoxFuture<'_, Result<i64, String>>;

    /// Reads whole batches starting with the one that holds `offset` (an offset below
    /// the log start reads from the log start), about `max_bytes` of them: chunks whose
    /// concatenation is a run of complete batches, and the log end offset.
    fn read(
        &self,
        partition: u32,
        offset: i64,
        max_bytes: usize,
    ) -> LocalBoxFuture<'_, Result<(Vec<Bytes>, i64), String>>;
}

/// Where the coordinator keeps its records.
#[derive(Clone)]
pub struct OffsetsStore {
    pub log: Rc<dyn OffsetsLog>,
    /// `__consumer_offsets` partition count (Kafka's default is 50): fixed for the
    /// cluster's life, since it decides which partition holds each group.
    pub partitions: u32,
}

/// The consumer-group coordinator of one shard (`!Send`: it lives on that shard's
/// executor).
pub struct GroupCoordinator {
    core: RefCell<Core>,
    store: OffsetsStore,
    waiters: RefCell<HashMap<WaiterId, oneshot::Sender<GroupResponse>>>,
    waiter_next: Cell<WaiterId>,
    clock_start: Instant,
    ticking: Cell<bool>,
    /// Tells the timer task that a request or load may have set a deadline.
    kick: Rc<Kick>,
}

/// A wake-up for the timer task, which sleeps while no group has a deadline.
#[derive(Default)]
struct Kick {
    kicked: Cell<bool>,
    waker: RefCell<Option<std::task::Waker>>,
}

impl Kick {
    fn kick(&self) {
        self.kicked.set(true);
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// Whether it was kicked since last asked; clears it.
    fn take(&self) -> bool {
        self.kicked.replace(false)
    }

    /// Completes at the next kick (or at once if one is pending).
    fn wait(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| match self.take() {
            true => std::task::Poll::Ready(()),
            false => {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                std::task::Poll::Pending
            }
        })
    }
}

impl GroupCoordinator {
    /// A coordinator with the given timings and limits (`GroupConfig::default()` is
    /// Kafka's). Call on the shard's glommio executor: the timer task starts with the
    /// first request or load.
    pub fn with_config(store: OffsetsStore, config: GroupConfig) -> Rc<Self> {
        let partitions = store.partitions.max(1);
        Rc::new(GroupCoordinator {
            core: RefCell::new(Core::new(config, partitions)),
            store,
            waiters: RefCell::new(HashMap::new()),
            waiter_next: Cell::new(0),
            clock_start: Instant::now(),
            ticking: Cell::new(false),
            kick: Rc::default(),
        })
    }

    fn now(&self) -> Now {
        let elapsed = self.clock_start.elapsed().as_millis();
        let wall = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        Now {
            ms: u64::try_from(elapsed).unwrap_or(u64::MAX),
            wall_ms: i64::try_from(wall).unwrap_or(i64::MAX),
        }
    }

    /// Starts the timer task once (it ends when the coordinator is dropped),
    /// and wakes it: what is under way may have set a deadline.
    fn ensure_ticking(self: &Rc<Self>) {
        self.kick.kick();
        if self.ticking.replace(true) {
            return;
        }
        let weak = Rc::downgrade(self);
        glommio::spawn_local(tick_loop(weak, self.kick.clone())).detach();
    }

    /// How long the timer task may sleep: `None` while a group has a
    /// session, join or sync deadline (it ticks every [`TICK_MS`]), else until
    /// the next offsets retention check or Empty group's removal.
    fn idle_for(&self) -> Option<Duration> {
        let core = self.core.borrow();
        if core.has_timed_work() {
            return None;
        }
        let now = self.now().ms;
        Some(Duration::from_millis(
            core.next_idle_deadline_ms().saturating_sub(now),
        ))
    }

    fn park(&self) -> (WaiterId, oneshot::Receiver<GroupResponse>) {
        let id = self.waiter_next.get();
        self.waiter_next.set(id.wrapping_add(1));
        let (tx, rx) = oneshot::channel();
        self.waiters.borrow_mut().insert(id, tx);
        (id, rx)
    }

    /// Appends the step's records, then delivers its replies.
    async fn apply(&self, fx: Effects) {
        if let Err(e) = self.persist(fx.records).await {
            tracing::warn!("group metadata not persisted: {e}");
        }
        let mut waiters = self.waiters.borrow_mut();
        for reply in fx.replies {
            if let Some(tx) = waiters.remove(&reply.waiter) {
                // The client may have gone away; its answer is then dropped.
                let _ = tx.send(reply.response);
            }
        }
    }

    /// Appends records, one batch per partition, in order. Returns the base offset of
    /// the last batch.
    async fn persist(&self, records: Vec<LogRecord>) -> Result<i64, String> {
        let mut base = -1;
        let mut rest = records.as_slice();
        while let Some(first) = rest.first() {
            let same = rest
                .iter()
                .take_while(|r| r.partition == first.partition)
                .count();
            let (run, tail) = rest.split_at(same);
            let batch = build_batch(run, self.now().wall_ms);
            base = self.store.log.append(first.partition, batch).await?;
            rest = tail;
        }
        Ok(base)
    }

    async fn parked(
        &self,
        waiter: WaiterId,
        rx: oneshot::Receiver<GroupResponse>,
        fx: Effects,
    ) -> Option<GroupResponse> {
        self.apply(fx).await;
        let response = rx.await.ok();
        self.waiters.borrow_mut().remove(&waiter);
        response
    }

    pub async fn handle(self: &Rc<Self>, req: GroupRequest) -> GroupResponse {
        self.ensure_ticking();
        match req {
            GroupRequest::Join(req, version, client_id) => {
                let (waiter, rx) = self.park();
                let fx = self
                    .core
                    .borrow_mut()
                    .join(&req, version, &client_id, waiter, self.now());
                let response = self.parked(waiter, rx, fx).await;
                response.unwrap_or_else(|| {
                    let member_id = req.member_id.as_str();
                    let error = join_error(version, member_id, code::COORDINATOR_NOT_AVAILABLE);
                    GroupResponse::Join(error)
                })
            }
            GroupRequest::Sync(req, version) => {
                let (waiter, rx) = self.park();
                let fx = self
                    .core
                    .borrow_mut()
                    .sync(&req, version, waiter, self.now());
                let response = self.parked(waiter, rx, fx).await;
                response.unwrap_or_else(|| {
                    GroupResponse::Sync(sync_error(code::COORDINATOR_NOT_AVAILABLE))
                })
            }
            GroupRequest::Heartbeat(req, _) => {
                let error = self.core.borrow_mut().heartbeat(&req, self.now());
                GroupResponse::Heartbeat(HeartbeatResponse::default().with_error_code(error))
            }
            GroupRequest::Leave(req, version) => {
                let (response, fx) = self.core.borrow_mut().leave(&req, version, self.now());
                self.apply(fx).await;
                GroupResponse::Leave(response)
            }
            GroupRequest::OffsetCommit(req, _) => {
                let plan = self.core.borrow_mut().plan_commit(&req, self.now());
                GroupResponse::OffsetCommit(self.commit(plan).await)
            }
            other => self.handle_admin(other).await,
        }
    }

    async fn handle_admin(&self, req: GroupRequest) -> GroupResponse {
        match req {
            GroupRequest::OffsetFetch {
                group_id, topics, ..
            } => {
                // No transactional offsets are ever pending here, so require_stable
                // never has to answer UNSTABLE_OFFSET_COMMIT.
                let fetched = self.core.borrow().fetch(&group_id, topics.as_deref());
                GroupResponse::OffsetFetch(fetched)
            }
            GroupRequest::Describe(ids) => {
                GroupResponse::Describe(self.core.borrow().describe(&ids))
            }
            GroupRequest::List { states_filter } => {
                GroupResponse::List(self.core.borrow().list(&states_filter))
            }
            GroupRequest::Delete(ids) => {
                let (mut codes, records) = self.core.borrow_mut().delete(&ids);
                if let Err(e) = self.persist(records).await {
                    tracing::warn!("group deletion not persisted: {e}");
                    for (_, error) in codes.iter_mut().filter(|(_, e)| *e == code::NONE) {
                        *error = code::COORDINATOR_NOT_AVAILABLE;
                    }
                }
                GroupResponse::Delete(codes)
            }
            GroupRequest::OffsetDelete(req, _) => {
                let (response, records) = self.core.borrow_mut().offset_delete(&req);
                if let Err(e) = self.persist(records).await {
                    tracing::warn!("offset deletion not persisted: {e}");
                    let failed = OffsetDeleteResponse::default()
                        .with_error_code(code::COORDINATOR_NOT_AVAILABLE);
                    return GroupResponse::OffsetDelete(failed);
                }
                GroupResponse::OffsetDelete(response)
            }
            GroupRequest::Join(..)
            | GroupRequest::Sync(..)
            | GroupRequest::Heartbeat(..)
            | GroupRequest::Leave(..)
            | GroupRequest::OffsetCommit(..) => {
                unreachable!("membership requests are handled by handle")
            }
        }
    }

    /// Appends the accepted offsets and answers once they are durable.
    async fn commit(&self, plan: CommitPlan) -> kafka_protocol::messages::OffsetCommitResponse {
        if plan.accepted.is_empty() {
            return plan.response(None);
        }
        match self.persist(plan.records()).await {
            Ok(base) => {
                self.core.borrow_mut().apply_commit(&plan, base, self.now());
                plan.response(None)
            }
            Err(e) => {
                self.core.borrow_mut().abort_commit(&plan);
                tracing::warn!(group = %plan.group_id, "offset commit not persisted: {e}");
                plan.response(Some(code::COORDINATOR_NOT_AVAILABLE))
            }
        }
    }

    /// Replays one `__consumer_offsets` partition this shard owns. While it runs, the
    /// partition's groups answer COORDINATOR_LOAD_IN_PROGRESS; if it fails they keep
    /// doing so (serving half-loaded offsets would rewind consumers) until a later
    /// `load` succeeds.
    pub async fn load(self: &Rc<Self>, partition: u32) -> Result<(), String> {
        self.ensure_ticking();
        let fx = self.core.borrow_mut().begin_load(partition);
        self.apply(fx).await;
        self.replay(partition).await?;
        self.core.borrow_mut().end_load(partition, self.now());
        Ok(())
    }

    async fn replay(&self, partition: u32) -> Result<(), String> {
        let mut offset = 0;
        loop {
            let (chunks, log_end) = self
                .store
                .log
                .read(partition, offset, LOAD_READ_BYTES)
                .await?;
            let buf: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
            if buf.is_empty() {
                return Ok(());
            }
            let next = self.replay_batches(&buf)?;
            if next <= offset && next < log_end {
                return Err(format!(
                    "no progress reading __consumer_offsets at {offset}"
                ));
            }
            offset = next;
            if offset >= log_end {
                return Ok(());
            }
        }
    }

    /// Applies the batches in `buf`; returns the offset after the last one.
    fn replay_batches(&self, buf: &[u8]) -> Result<i64, String> {
        let mut next = 0;
        let now = self.now();
        let mut core = self.core.borrow_mut();
        for item in batch::split(buf) {
            let (range, header) = item.map_err(|e| format!("bad batch: {e}"))?;
            next = header.last_offset().saturating_add(1);
            if header.is_control() {
                continue;
            }
            let records = buf
                .get(range)
                .ok_or("batch out of range")
                .and_then(|b| batch::records(b).map_err(|_| "undecodable batch"));
            let records = match records {
                Ok(records) => records,
                Err(e) => {
                    tracing::warn!("skipping __consumer_offsets batch: {e}");
                    continue;
                }
            };
            for record in records {
                let record = record.map_err(|e| format!("bad record: {e}"))?;
                let Some(key) = record.key else { continue };
                if let Err(e) = core.replay(key, record.value, record.offset, now) {
                    tracing::warn!("skipping __consumer_offsets record: {e}");
                }
            }
        }
        Ok(next)
    }

    /// One timer step (also used by tests to drive deadlines).
    pub async fn tick(&self) {
        let fx = self.core.borrow_mut().tick(self.now());
        self.apply(fx).await;
    }
}

/// Ticks every [`TICK_MS`] while a group has a deadline; otherwise sleeps
/// until the next offsets retention check or a kick, so an idle coordinator
/// does not wake ten times a second. After a kick it ticks at least once.
async fn tick_loop(weak: Weak<GroupCoordinator>, kick: Rc<Kick>) {
    loop {
        let idle = match weak.upgrade() {
            Some(this) => this.idle_for(),
            None => return,
        };
        if let Some(idle) = idle {
            if !kick.take() {
                futures_lite::future::or(glommio::timer::sleep(idle), kick.wait()).await;
            }
        }
        glommio::timer::sleep(Duration::from_millis(TICK_MS)).await;
        let Some(this) = weak.upgrade() else {
            return;
        };
        this.tick().await;
    }
}

/// One uncompressed batch of keyed records.
fn build_batch(records: &[LogRecord], wall_ms: i64) -> Bytes {
    let mut builder = BatchBuilder::new(wall_ms);
    for r in records {
        builder.push(wall_ms, Some(&r.key), r.value.as_deref(), &[]);
    }
    Bytes::from(builder.finish())
}
