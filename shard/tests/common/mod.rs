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
