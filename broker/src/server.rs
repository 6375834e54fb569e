//! `sluice serve`: checks the environment, starts one pinned executor per
//! shard, and stops them cleanly on SIGTERM or SIGINT.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::channels::channel_mesh::MeshBuilder;
use glommio::net::TcpListener;
use glommio::{LocalExecutorBuilder, Placement};
use sluice_shard::store::{warm_up_direct_io, ShardStore};

use crate::config::Config;
use crate::kafka::group::{GroupConfig, GroupCoordinator, OffsetsStore};
use crate::kafka::offsets_log::ShardOffsetsLog;
use crate::memory::RequestMemory;
use crate::preflight;
use crate::router::{ShardMsg, SHARD_CHANNEL_DEPTH};
use crate::shard::{kafka_shard_port, shard_port, Shard};
use crate::topics;

/// What a shard tells the main thread as it starts.
enum ShardEvent {
    Ready { id: u32 },
    Failed { id: Option<u32>, error: String },
}

/// Runs the broker until a signal stops it. `Err` is a message for the user.
pub fn serve(mut config: Config) -> Result<(), String> {
    // Resolved once, here: inside a pinned executor the visible core count is 1.
    let shards = config.shard_count();
    config.broker.shards = shards;
    let data_dir = config.broker.data_dir.clone();
    preflight::check_io_uring()?;
    preflight::check_memlock(shards, config.broker.io_memory_bytes)?;
    let plan = config.memory_plan()?;
    tracing::info!(
        budget = plan.budget,
        reserve = plan.reserve,
        io_memory = plan.io_memory,
        request_memory = plan.request_memory,
        tail_cache = plan.tail_cache,
        shards,
        "memory budget"
    );
    if config.broker.registered_landings {
        let bytes = u64::from(shards) * (plan.request_memory + plan.tail_cache);
        match usize::try_from(bytes)
            .map_err(std::io::Error::other)
            .and_then(sluice_shard::arena::install)
        {
            Ok(arena) => tracing::info!(
                bytes,
                chunks = arena.chunks(),
                "landings come from a registered arena"
            ),
            Err(e) => tracing::warn!(error = %e, "no arena: landings come from the heap"),
        }
    }
    let _lock = preflight::check_data_dir(&data_dir)?;
    let native = config.native_socket_addr()?;
    let kafka = config.kafka_socket_addr()?;
    let mut addrs: Vec<(SocketAddr, String)> = vec![
        (native, "native listener".into()),
        (kafka, "Kafka listener".into()),
    ];
    for id in 0..shards {
        let port = shard_port(&config, id);
        addrs.push((
            SocketAddr::new(native.ip(), port),
            format!("shard {id} listener"),
        ));
        if config.broker.kafka_shard_brokers {
            let port = kafka_shard_port(&config, id);
            addrs.push((
                SocketAddr::new(kafka.ip(), port),
                format!("shard {id} Kafka listener"),
            ));
        }
    }
    if let Some(addr) = config.metrics_socket_addr()? {
        addrs.push((addr, "metrics listener".into()));
    }
    let named: Vec<(SocketAddr, &str)> = addrs.iter().map(|(a, w)| (*a, w.as_str())).collect();
    preflight::check_addresses_free(&named)?;
    // Fail before starting anything if the topic metadata is unreadable.
    topics::load_all(&data_dir)?;
    let generation = next_generation(&data_dir)?;
    let cluster_id = cluster_id(&data_dir)?;

    let stop = Arc::new(AtomicBool::new(false));
    let wakes = StopWakes::new(shards)?;
    install_signal_handlers(stop.clone(), wakes.clone())?;
    let (events, ready) = mpsc::channel();
    let mesh = MeshBuilder::<ShardMsg, _>::full(shards as usize, SHARD_CHANNEL_DEPTH);
    let cpus = available_cpus();
    let mut handles = Vec::with_capacity(shards as usize);
    for i in 0..shards {
        let placement = shard_placement(i, shards, &cpus, config.broker.pin_shards);
        let (config, mesh, stop, events) =
            (config.clone(), mesh.clone(), stop.clone(), events.clone());
        let wake = wakes.fds.get(i as usize).copied();
        let cluster_id = cluster_id.clone();
        let handle = LocalExecutorBuilder::new(placement)
            .name(&format!("shard-{i}"))
            .io_memory(config.broker.io_memory_bytes)
            .spin_before_park(Duration::from_micros(config.broker.spin_before_park_us))
            .spawn(move || run_shard(config, generation, cluster_id, mesh, (stop, wake), events))
            .map_err(|e| format!("cannot start shard executor {i}: {e}"))?;
        handles.push(handle);
    }
    drop(events);
    wait_ready(&ready, shards, &stop, &wakes)?;
    let shard_ports: Vec<u16> = (0..shards).map(|id| shard_port(&config, id)).collect();
    tracing::info!(%native, shards, ?shard_ports, data_dir = %data_dir.display(), generation, "sluice ready");
    // Not println!: it panics (and so aborts) when stdout cannot be written.
    let mut stdout = std::io::stdout();
    let _ = writeln!(
        stdout,
        "sluice ready: native={native} kafka={kafka} shards={shards} shard_ports={shard_ports:?} \
         data_dir={}",
        data_dir.display()
    );
    let _ = stdout.flush();
    let mut failed = None;
    for h in handles {
        if let Err(e) = h.join() {
            failed.get_or_insert(format!("a shard failed: {e}"));
        }
    }
    // A shard that failed after start reports through the channel too.
    while let Ok(ShardEvent::Failed { id, error }) = ready.try_recv() {
        let who = id.map_or_else(|| "a shard".to_string(), |i| format!("shard {i}"));
        failed.get_or_insert(format!("{who}: {error}"));
    }
    match failed {
        Some(e) => Err(e),
        None => {
            tracing::info!("sluice stopped cleanly");
            Ok(())
        }
    }
}

fn wait_ready(
    ready: &mpsc::Receiver<ShardEvent>,
    shards: u32,
    stop: &AtomicBool,
    wakes: &StopWakes,
) -> Result<(), String> {
    let mut up = 0;
    while up < shards {
        match ready.recv() {
            Ok(ShardEvent::Ready { id }) => {
                tracing::debug!(shard = id, "shard ready");
                up += 1;
            }
            Ok(ShardEvent::Failed { id, error }) => {
                stop.store(true, Ordering::SeqCst);
                wakes.wake_all();
                return Err(match id {
                    Some(id) => format!("shard {id} could not start: {error}"),
                    None => format!("a shard could not start: {error}"),
                });
            }
            Err(_) => return Err("shards exited during start-up".into()),
        }
    }
    Ok(())
}

/// The broker's run counter, persisted in the data directory. It is the
/// leader epoch of every partition for this run.
fn next_generation(data_dir: &std::path::Path) -> Result<i32, String> {
    let path = data_dir.join("broker-generation");
    let current = match std::fs::read_to_string(&path) {
        Ok(t) => t
            .trim()
            .parse::<i32>()
            .map_err(|_| format!("{} is damaged", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let next = current.checked_add(1).ok_or("broker generation overflow")?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{next}\n"))
        .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
        .and_then(|_| std::fs::rename(&tmp, &path))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(next)
}

/// The cluster id, created with the data directory and kept in it.
fn cluster_id(data_dir: &std::path::Path) -> Result<String, String> {
    let path = data_dir.join("cluster-id");
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    }
    // Kafka's cluster ids are base64 UUIDs; any stable string works.
    let id = uuid::Uuid::new_v4().simple().to_string();
    std::fs::write(&path, format!("{id}\n"))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(id)
}

/// Where shard `i` of `shards` runs: pinned to its own CPU of `cpus` when
/// asked to and there is one for every shard, otherwise wherever the kernel
/// puts it.
fn shard_placement(i: u32, shards: u32, cpus: &[usize], pin: bool) -> Placement {
    match cpus.get(i as usize) {
        Some(cpu) if pin && shards as usize <= cpus.len() => Placement::Fixed(*cpu),
        _ => Placement::Unbound,
    }
}

fn available_cpus() -> Vec<usize> {
    // SAFETY: sched_getaffinity fills a cpu_set_t we own.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|c| libc::CPU_ISSET(*c, &set))
            .collect()
    }
}

/// One eventfd per shard, written to stop it: the shard awaits its own
/// instead of polling the stop flag, so an idle shard has no timer to wake
/// for. The fds stay open for the life of the process (a signal handler may
/// write to them at any time).
#[derive(Clone)]
struct StopWakes {
    fds: Arc<Vec<libc::c_int>>,
}

impl StopWakes {
    fn new(shards: u32) -> Result<Self, String> {
        let mut fds = Vec::with_capacity(shards as usize);
        for _ in 0..shards {
            // SAFETY: a plain eventfd; blocking, so a shard's read of it
            // through glommio waits for a write.
            let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
            if fd < 0 {
                let e = std::io::Error::last_os_error();
                return Err(format!("cannot create a shard's stop eventfd: {e}"));
            }
            fds.push(fd);
        }
        Ok(Self { fds: Arc::new(fds) })
    }

    /// Wakes every shard. Async-signal-safe: only `write`s.
    fn wake_all(&self) {
        let one: u64 = 1;
        for &fd in self.fds.iter() {
            // SAFETY: writes 8 bytes from a live u64 to an eventfd we keep
            // open; a failure leaves the shard to its fallback poll.
            let _ = unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
        }
    }
}

fn install_signal_handlers(stop: Arc<AtomicBool>, wakes: StopWakes) -> Result<(), String> {
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        let (stop, wakes) = (stop.clone(), wakes.clone());
        // The flag first, then the wake-ups: a shard woken must see it set.
        let action = move || {
            stop.store(true, Ordering::SeqCst);
            wakes.wake_all();
        };
        // SAFETY: the action only stores an atomic and calls `write`, both
        // async-signal-safe.
        unsafe { signal_hook::low_level::register(sig, action) }
            .map_err(|e| format!("cannot install a handler for signal {sig}: {e}"))?;
    }
    Ok(())
}

/// Waits until `stop` is set, woken by the shard's eventfd (`wake`, a
/// descriptor of [`StopWakes`]). Should that fail, it polls the flag.
async fn wait_for_stop(stop: &AtomicBool, wake: Option<libc::c_int>) {
    // SAFETY: a duplicate of the eventfd, owned by the file from here on
    // (the original stays open for the signal handler).
    let file = wake
        .map(|fd| unsafe { libc::dup(fd) })
        .filter(|&fd| fd >= 0)
        .map(|fd| unsafe {
            <glommio::io::BufferedFile as std::os::fd::FromRawFd>::from_raw_fd(fd)
        });
    while !stop.load(Ordering::SeqCst) {
        let woken = match &file {
            Some(f) => f.read_at(0, 8).await.is_ok(),
            None => false,
        };
        if !woken {
            glommio::timer::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn run_shard(
    config: Config,
    generation: i32,
    cluster_id: String,
    mesh: MeshBuilder<ShardMsg, glommio::channels::channel_mesh::Full>,
    (stop, wake): (Arc<AtomicBool>, Option<libc::c_int>),
    events: mpsc::Sender<ShardEvent>,
) {
    let data_dir = config.broker.data_dir.clone();
    sluice_shard::partition::set_zero_fill_rate(config.broker.zero_fill_bytes_per_s);
    sluice_shard::flush::set_shared_flush(config.broker.shared_flush);
    if let Err(e) = warm_up_direct_io(&data_dir).await {
        let _ = events.send(ShardEvent::Failed {
            id: None,
            error: format!("direct I/O: {e}"),
        });
        return;
    }
    let Ok((senders, mut receivers)) = mesh.join().await else {
        let _ = events.send(ShardEvent::Failed {
            id: None,
            error: "joining the shard mesh".into(),
        });
        return;
    };
    let id = senders.peer_id() as u32;
    if config.broker.shared_flush && std::env::var("SLUICE_ANCHOR").as_deref() != Ok("0") {
        let dir = data_dir.join("flush-anchors").join(format!("shard-{id}"));
        match sluice_shard::flush::prepare_anchor(&dir).await {
            Ok(true) => {}
            Ok(false) => tracing::info!(
                shard = id,
                "no inode block to itself for a flush anchor: shared flushes sync a segment"
            ),
            Err(e) => {
                tracing::warn!(shard = id, error = %e, "no flush anchor: shared flushes sync a segment")
            }
        }
    }
    let senders = Rc::new(senders);
    crate::router::install(id, senders.clone());
    let shard = match start_shard(config, generation, cluster_id, senders, id).await {
        Ok(s) => s,
        Err(error) => {
            let _ = events.send(ShardEvent::Failed {
                id: Some(id),
                error,
            });
            return;
        }
    };
    for (_, receiver) in receivers.streams() {
        let shard = shard.clone();
        glommio::spawn_local(async move {
            while let Some(msg) = receiver.recv().await {
                match msg {
                    ShardMsg::Reply { id, value } => crate::router::deliver(id, value),
                    msg => {
                        glommio::spawn_local(shard.clone().handle_msg(msg)).detach();
                    }
                }
            }
        })
        .detach();
    }
    if let Err(error) = start_listeners(&shard) {
        let _ = events.send(ShardEvent::Failed {
            id: Some(id),
            error,
        });
        return;
    }
    if let Err(error) = shard.ensure_offsets_topic().await {
        let _ = events.send(ShardEvent::Failed {
            id: Some(id),
            error,
        });
        return;
    }
    glommio::spawn_local(retention_loop(shard.clone())).detach();
    let _ = events.send(ShardEvent::Ready { id });
    wait_for_stop(&stop, wake).await;
    if let Err(error) = shutdown(&shard).await {
        // The main thread reports it and exits non-zero: an operator must
        // know that the last flush did not happen (recovery will repair).
        let _ = events.send(ShardEvent::Failed {
            id: Some(id),
            error,
        });
    }
}

async fn start_shard(
    config: Config,
    generation: i32,
    cluster_id: String,
    peers: Rc<glommio::channels::channel_mesh::Senders<ShardMsg>>,
    id: u32,
) -> Result<Rc<Shard>, String> {
    let data_dir = config.broker.data_dir.clone();
    let topics = topics::load_all(&data_dir)?;
    let log_defaults = config.log_defaults()?;
    let count = config.shard_count();
    let plan = config.memory_plan()?;
    // Reads ahead of consumers take a quarter of the request memory.
    let read_ahead = match config.broker.read_ahead {
        true => plan.request_memory / 4,
        false => 0,
    };
    let store = Rc::new(
        ShardStore::new(
            sluice_protocol::ShardId(id),
            data_dir,
            plan.tail_cache as usize,
        )
        .with_read_ahead(read_ahead as usize),
    );
    let groups = group_coordinator(&config, &store);
    let shard = Rc::new(Shard {
        id,
        count,
        log_defaults,
        generation,
        cluster_id,
        store,
        groups,
        topics: RefCell::new(topics),
        peers: peers.clone(),
        epochs: RefCell::new(HashMap::new()),
        connections: Cell::new(0),
        in_flight: Cell::new(0),
        producer_ids: Cell::new(0),
        stopping: Default::default(),
        memory: plan,
        request_memory: RequestMemory::new(plan.request_memory - read_ahead),
        config,
    });
    shard.open_owned_partitions().await?;
    Ok(shard)
}

/// The shard's group coordinator, over its partitions of `__consumer_offsets`.
fn group_coordinator(config: &Config, store: &Rc<ShardStore>) -> Rc<GroupCoordinator> {
    let b = &config.broker;
    let offsets = OffsetsStore {
        log: Rc::new(ShardOffsetsLog {
            store: store.clone(),
        }),
        partitions: b.offsets_topic_partitions,
    };
    let group_config = GroupConfig {
        initial_rebalance_delay_ms: b.group_initial_rebalance_delay_ms,
        session_timeout_ms_min: b.group_min_session_timeout_ms,
        session_timeout_ms_max: b.group_max_session_timeout_ms,
        offsets_retention_ms: b.offsets_retention_minutes.saturating_mul(60_000),
        offsets_retention_check_ms: b.offsets_retention_check_interval_ms.max(1),
        ..GroupConfig::default()
    };
    GroupCoordinator::with_config(offsets, group_config)
}

fn start_listeners(shard: &Rc<Shard>) -> Result<(), String> {
    let native = shard.config.native_socket_addr()?;
    let own = SocketAddr::new(native.ip(), shard.shard_port(shard.id));
    let kafka = shard.config.kafka_socket_addr()?;
    let mut listeners: Vec<(SocketAddr, crate::native::ServeFn)> = vec![
        (native, crate::native::serve_native),
        (own, crate::native::serve_native),
        (kafka, crate::kafka::serve_kafka),
    ];
    if shard.config.broker.kafka_shard_brokers {
        let own_kafka = SocketAddr::new(kafka.ip(), kafka_shard_port(&shard.config, shard.id));
        listeners.push((own_kafka, crate::kafka::serve_kafka));
    }
    for (addr, serve) in listeners {
        let listener =
            TcpListener::bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        glommio::spawn_local(crate::native::accept_loop(shard.clone(), listener, serve)).detach();
    }
    if let (0, Some(addr)) = (shard.id, shard.config.metrics_socket_addr()?) {
        let listener =
            TcpListener::bind(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        glommio::spawn_local(crate::metrics::serve(shard.clone(), listener)).detach();
    }
    Ok(())
}

async fn retention_loop(shard: Rc<Shard>) {
    let every = Duration::from_millis(shard.config.broker.retention_check_interval_ms.max(100));
    let clean_every = Duration::from_millis(shard.config.broker.cleaner_interval_ms.max(10));
    let mut next_retention = Instant::now() + every;
    let mut next_clean = Instant::now() + clean_every;
    loop {
        // Asleep until the next of the two is due (no shorter tick).
        let due = next_retention.min(next_clean);
        let stopped = futures_lite::future::or(
            async {
                glommio::timer::sleep(due.saturating_duration_since(Instant::now())).await;
                false
            },
            async {
                shard.stopping.wait().await;
                true
            },
        )
        .await;
        if stopped {
            return;
        }
        let now = Instant::now();
        if now >= next_retention {
            next_retention = now + every;
            let deleted = shard.store.enforce_retention().await;
            if deleted > 0 {
                tracing::info!(shard = shard.id, deleted, "retention deleted segments");
            }
        }
        // Compaction: one partition's worth of cleaning per turn, so the
        // shard stays responsive.
        if now >= next_clean {
            next_clean = Instant::now() + clean_every;
            if let Err(e) = shard.store.clean().await {
                tracing::warn!(shard = shard.id, error = %e, "log cleaner");
            }
        }
    }
}

/// Stops accepting, lets in-flight requests finish (bounded), then flushes
/// every partition and writes its indexes.
async fn shutdown(shard: &Rc<Shard>) -> Result<(), String> {
    tracing::info!(shard = shard.id, "stopping");
    shard.stopping.raise();
    let limit = Duration::from_millis(shard.config.broker.shutdown_timeout_ms);
    let started = Instant::now();
    while shard.in_flight.get() > 0 && started.elapsed() < limit {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    shard
        .store
        .close_all()
        .await
        .map_err(|e| format!("flushing on shutdown: {e}"))
}

#[cfg(test)]
mod placement_tests {
    use super::*;

    fn pinned_to(p: &Placement) -> Option<usize> {
        match p {
            Placement::Fixed(cpu) => Some(*cpu),
            _ => None,
        }
    }

    #[test]
    fn shards_are_pinned_one_per_cpu_only_when_asked_and_there_are_enough() {
        let cpus = [2, 5, 7];
        let pinned: Vec<_> = (0..3)
            .map(|i| pinned_to(&shard_placement(i, 3, &cpus, true)))
            .collect();
        assert_eq!(pinned, [Some(2), Some(5), Some(7)]);
        // pin_shards = false: every shard is left to the scheduler.
        assert!((0..3).all(|i| pinned_to(&shard_placement(i, 3, &cpus, false)).is_none()));
        // More shards than CPUs: none is pinned, so none shares a CPU by force.
        assert!((0..4).all(|i| pinned_to(&shard_placement(i, 4, &cpus, true)).is_none()));
        // No CPU list (sched_getaffinity failed): unpinned.
        assert!(pinned_to(&shard_placement(0, 1, &[], true)).is_none());
    }
}
