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

/// The records of `chunks` (whole batches, as a read returns them) at or
/// after `from`, as (offset, key, value), and the offset a consumer fetches
/// next: after the last batch (consumers step over gaps that way).
#[allow(dead_code)] // not every test binary reads records back
pub fn records_from(
    chunks: &[bytes::Bytes],
    from: i64,
) -> (Vec<(i64, String, Option<String>)>, i64) {
    use sluice_protocol::batch;
    let joined: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
    let mut out = Vec::new();
    let mut next = from;
    for item in batch::split(&joined) {
        let (range, header) = item.expect("whole batches");
        batch::validate_stored(&joined[range.clone()]).expect("stored batches are valid");
        for r in batch::records_owned(&joined[range])
            .expect("records")
            .iter()
        {
            let r = r.expect("record");
            if r.offset >= from {
                let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
                out.push((r.offset, text(r.key.expect("key")), r.value.map(text)));
            }
        }
        next = next.max(header.last_offset() + 1);
    }
    (out, next)
}

/// The base offsets of the segment files of `t`/0 under `dir`, in order.
#[allow(dead_code)] // not every test binary looks at segment files
pub fn segment_bases(dir: &std::path::Path) -> Vec<i64> {
    let pdir = sluice_shard::store::partition_dir(dir, "t", 0);
    let mut bases: Vec<i64> = std::fs::read_dir(pdir)
        .expect("dir")
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".log")?.parse().ok()
        })
        .collect();
    bases.sort_unstable();
    bases
}
