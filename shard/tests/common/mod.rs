//! Helpers shared by the shard integration tests.

/// Runs `f` to completion on a fresh glommio executor (its own thread, as a
/// shard would), so each test gets real io_uring rings and direct I/O.
pub fn run<F, Fut>(f: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .spawn(f)
        .expect("executor starts")
        .join()
        .expect("test executor finished");
}

/// Opens (recovering) partition `t`/0 under `dir` in a shard store with a
/// tail cache of `cache_bytes` and no read-ahead, after the direct-I/O
/// warm-up every shard does.
pub async fn open(
    dir: &std::path::Path,
    config: sluice_shard::config::LogConfig,
    cache_bytes: usize,
) -> (
    std::rc::Rc<sluice_shard::store::ShardStore>,
    std::rc::Rc<sluice_shard::partition::Partition>,
) {
    open_with(dir, config, cache_bytes, 0).await
}

/// [`open`] with reads ahead of consumers holding up to `read_ahead` bytes.
pub async fn open_with(
    dir: &std::path::Path,
    config: sluice_shard::config::LogConfig,
    cache_bytes: usize,
    read_ahead: usize,
) -> (
    std::rc::Rc<sluice_shard::store::ShardStore>,
    std::rc::Rc<sluice_shard::partition::Partition>,
) {
    use sluice_shard::store::{warm_up_direct_io, ShardStore};
    warm_up_direct_io(dir).await.expect("direct I/O works");
    let shard = sluice_protocol::ShardId(0);
    let store = ShardStore::new(shard, dir.to_path_buf(), cache_bytes).with_read_ahead(read_ahead);
    let store = std::rc::Rc::new(store);
    let p = store.open_partition("t", 0, config, 0).await.expect("open");
    (store, p)
}
