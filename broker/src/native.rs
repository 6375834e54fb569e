//! The native protocol listener: accepts connections on one shard and serves
//! them there.
//!
//! Each connection has a reader and a writer. The reader takes whole frames
//! (bounded by `max_frame_bytes`, checked before anything is allocated),
//! starts each request as its own task and queues the task; the writer
//! answers the tasks in the order they were queued. So requests are answered
//! in order per connection while several are in flight (bounded by
//! `max_in_flight_per_connection`: when the queue is full the reader stops
//! reading and TCP pushes back on the client).
//!
//! A malformed frame whose length is sane gets an INVALID_REQUEST answer and
//! the connection goes on; an absurd length closes the connection with a log
//! line. Either way no other connection notices.

use std::cell::RefCell;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures_lite::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::{TcpListener, TcpStream};
use glommio::task::JoinHandle;
use sluice_protocol::native::{self, codec::FRAME_PREFIX_BYTES};
use sluice_protocol::ErrorCode;
use sluice_shard::stats::{self, TimedRequest};

use crate::handlers;
use crate::memory::{RequestMemory, Reservation};
use crate::shard::Shard;

/// A request being answered: its task, and the request memory it holds
/// (the frame while it is handled, then the response until it is written).
pub(crate) struct Answer {
    pub task: JoinHandle<Option<Vec<Bytes>>>,
    pub memory: Rc<RefCell<Reservation>>,
    /// A Produce or Fetch, and when its last byte was received: its time
    /// in the broker is recorded once its response is written.
    pub timed: Option<(TimedRequest, Instant)>,
}

impl Answer {
    /// Starts `handle` as a task; when it finishes, the reservation shrinks
    /// to the size of the response.
    pub fn spawn(
        memory: Rc<RefCell<Reservation>>,
        handle: impl std::future::Future<Output = Option<Vec<Bytes>>> + 'static,
    ) -> Answer {
        let held = memory.clone();
        let task = glommio::spawn_local(async move {
            let chunks = handle.await;
            let size: usize = chunks.iter().flatten().map(|c| c.len()).sum();
            held.borrow_mut().shrink_to(size as u64);
            chunks
        })
        .detach();
        Answer {
            task,
            memory,
            timed: None,
        }
    }

    /// Times the request, received just now, if it is a Produce or Fetch.
    pub fn timed(mut self, kind: Option<TimedRequest>) -> Answer {
        self.timed = kind.map(|k| (k, Instant::now()));
        self
    }
}

/// What serves one accepted connection.
pub type ServeFn =
    fn(Rc<Shard>, TcpStream) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>;

/// The native protocol's [`ServeFn`].
pub fn serve_native(
    shard: Rc<Shard>,
    stream: TcpStream,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>> {
    Box::pin(serve(shard, stream))
}

/// Accepts connections until the shard stops, serving each with `serve_fn`.
pub async fn accept_loop(shard: Rc<Shard>, listener: TcpListener, serve_fn: ServeFn) {
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            wait_until_stopping(&shard).await;
            None
        })
        .await;
        let stream = match accepted {
            None => return,
            Some(Ok(s)) => s,
            Some(Err(e)) => {
                tracing::warn!(shard = shard.id, error = %e, "accept failed");
                glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        if shard.connections.get() >= shard.config.broker.max_connections_per_shard {
            tracing::warn!(
                shard = shard.id,
                "connection limit reached: refusing a connection"
            );
            continue;
        }
        let _ = stream.set_nodelay(true);
        let shard = shard.clone();
        glommio::spawn_local(async move {
            shard.connections.set(shard.connections.get() + 1);
            serve_fn(shard.clone(), stream).await;
            shard.connections.set(shard.connections.get() - 1);
        })
        .detach();
    }
}

pub(crate) async fn wait_until_stopping(shard: &Shard) {
    shard.stopping.wait().await;
}

async fn serve(shard: Rc<Shard>, stream: TcpStream) {
    serve_connection(shard, stream, "native", |shard, reader, queue| async move {
        read_requests(&shard, reader, queue).await
    })
    .await;
}

/// Serves one connection of either protocol: `read` reads requests and
/// queues their answers; a writer task sends the answers in order.
pub(crate) async fn serve_connection<F, Fut>(
    shard: Rc<Shard>,
    stream: TcpStream,
    protocol: &'static str,
    read: F,
) where
    F: FnOnce(Rc<Shard>, Incoming, LocalSender<Answer>) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let fd = stream.as_raw_fd();
    let (reader, writer) = futures_lite::io::split(stream);
    let depth = shard.config.broker.max_in_flight_per_connection;
    let (queue, answers) = local_channel::new_bounded::<Answer>(depth);
    let writer = glommio::spawn_local(write_answers(fd, writer, answers));
    if let Err(why) = read(shard.clone(), Incoming { reader, fd }, queue).await {
        tracing::info!(
            shard = shard.id,
            peer,
            protocol,
            "closing connection: {why}"
        );
    }
    let _ = writer.await;
}

/// Reads frames and queues their answers until the peer closes or errs.
async fn read_requests(
    shard: &Rc<Shard>,
    mut incoming: Incoming,
    queue: LocalSender<Answer>,
) -> Result<(), String> {
    let max = shard.config.broker.max_frame_bytes;
    loop {
        let mut prefix = [0u8; FRAME_PREFIX_BYTES];
        match incoming.reader.read_exact(&mut prefix).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(format!("read failed: {e}")),
        }
        let total = match native::frame_len(&prefix, max) {
            Ok(Some(total)) => total,
            Ok(None) => return Err("frame prefix incomplete".into()),
            Err(e) => return Err(format!("bad frame: {e}")),
        };
        let (frame, memory) =
            read_frame_body(&mut incoming, &prefix, total, &shard.request_memory).await?;
        let memory = Rc::new(RefCell::new(memory));
        let answer = match native::decode_request(frame) {
            Ok((correlation_id, request)) => {
                let shard = shard.clone();
                let held = memory.clone();
                let kind = match request {
                    native::Request::Produce(_) => Some(TimedRequest::Produce),
                    native::Request::Fetch(_) => Some(TimedRequest::Fetch),
                    _ => None,
                };
                Answer::spawn(memory, async move {
                    shard.in_flight.set(shard.in_flight.get() + 1);
                    let response =
                        handlers::handle(shard.clone(), correlation_id, request, held).await;
                    shard.in_flight.set(shard.in_flight.get() - 1);
                    response.map(|r| native::encode_response(&r))
                })
                .timed(kind)
            }
            Err(e) => {
                tracing::info!(shard = shard.id, error = %e, "malformed request");
                let id = e.correlation_id.unwrap_or(0);
                let chunks =
                    native::encode_error_response(id, ErrorCode::INVALID_REQUEST, &e.to_string());
                Answer::spawn(memory, async move { Some(chunks) })
            }
        };
        if queue.send(answer).await.is_err() {
            return Err("writer stopped".into());
        }
    }
}

/// Bytes read (and reserved in the shard's request memory) at a time while a
/// frame arrives: a client that announces a large frame and sends little
/// holds only about what it sent.
const FRAME_READ_STEP_BYTES: usize = 64 * 1024;

/// The reading side of a connection.
pub(crate) struct Incoming {
    pub reader: futures_lite::io::ReadHalf<TcpStream>,
    /// The socket, for reads straight into a frame's unfilled capacity.
    pub fd: RawFd,
}

/// Reads the rest of a frame whose total length (prefix included) is
/// `total`, reserving its bytes in the shard's request memory as they come.
///
/// What the socket already holds is received straight into the frame's
/// unfilled capacity (`recv`, non-blocking), so the buffer is never zeroed
/// first; only when the socket is empty does the read wait on the stream,
/// for a single byte. glommio's `TcpStream` keeps no read-ahead buffer of
/// its own (it is not `Buffered`), so both reads see the same byte stream.
pub(crate) async fn read_frame_body(
    incoming: &mut Incoming,
    prefix: &[u8],
    total: usize,
    pool: &RequestMemory,
) -> Result<(Bytes, Reservation), String> {
    let mut memory = pool.frame();
    memory.grow(pool, prefix.len() as u64).await;
    // The whole capacity at once (untouched pages cost nothing until data
    // arrives): growing step by step could double the allocation.
    let mut frame = BytesMut::with_capacity(total);
    frame.extend_from_slice(prefix);
    while frame.len() < total {
        let step_end = frame.len() + (total - frame.len()).min(FRAME_READ_STEP_BYTES);
        memory.grow(pool, (step_end - frame.len()) as u64).await;
        while frame.len() < step_end {
            match recv_unfilled(incoming.fd, &mut frame, step_end) {
                Ok(0) => return Err("connection lost mid-frame: end of stream".into()),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    let at = frame.len();
                    frame.resize(at + 1, 0);
                    incoming
                        .reader
                        .read_exact(&mut frame[at..])
                        .await
                        .map_err(|e| format!("connection lost mid-frame: {e}"))?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("connection lost mid-frame: {e}")),
            }
        }
    }
    Ok((frame.freeze(), memory.done()))
}

/// One non-blocking `recv` into `frame`'s unfilled capacity, up to length
/// `end`; the bytes received become part of the frame.
fn recv_unfilled(fd: RawFd, frame: &mut BytesMut, end: usize) -> std::io::Result<usize> {
    let want = end.saturating_sub(frame.len());
    let spare = frame.spare_capacity_mut();
    let want = want.min(spare.len());
    // SAFETY: the kernel writes at most `want` bytes into the spare
    // capacity, which is valid for writes of that length; no reference to
    // uninitialized memory is created.
    let n = unsafe {
        libc::recv(
            fd,
            spare.as_mut_ptr().cast::<libc::c_void>(),
            want,
            libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let n = n as usize;
    // SAFETY: the kernel initialized the first `n` bytes of the spare
    // capacity (n <= want <= spare length).
    unsafe { frame.set_len(frame.len() + n) };
    Ok(n)
}

/// Writes answers in the order their requests arrived.
async fn write_answers(
    fd: RawFd,
    mut writer: impl AsyncWrite + Unpin,
    answers: LocalReceiver<Answer>,
) {
    while let Some(answer) = answers.recv().await {
        let Answer {
            task,
            memory,
            timed,
        } = answer;
        let Some(Some(chunks)) = task.await else {
            continue;
        };
        if let Err(e) = send_chunks(fd, &mut writer, &chunks).await {
            tracing::debug!(error = %e, "write failed; dropping the connection");
            return;
        }
        if let Some((kind, received)) = timed {
            stats::record_request(kind, received.elapsed());
        }
        // The answer's request memory is free once its bytes are sent.
        drop(memory);
    }
    let _ = writer.close().await;
}

/// Most buffers handed to one `sendmsg`.
const IOVECS_PER_SEND_MAX: usize = 64;

/// Sends `chunks` (a response header, then record batches straight from the
/// tail cache or a segment read) with scatter/gather `sendmsg`: the batches
/// go from their buffers to the socket without being copied into an encode
/// buffer. When the socket buffer is full, the stream's own write waits for
/// room (glommio parks the task on the ring) and sends what fits.
async fn send_chunks(
    fd: RawFd,
    writer: &mut (impl AsyncWrite + Unpin),
    chunks: &[Bytes],
) -> std::io::Result<()> {
    let mut chunk = 0usize;
    let mut offset = 0usize;
    while chunk < chunks.len() {
        if offset >= chunks[chunk].len() {
            chunk += 1;
            offset = 0;
            continue;
        }
        let sent = match sendmsg_nowait(fd, &chunks[chunk..], offset) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                writer.write(&chunks[chunk][offset..]).await?
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => 0,
            Err(e) => return Err(e),
        };
        if sent == 0 && offset < chunks[chunk].len() {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        // Advance past what was sent.
        let mut left = sent;
        while left > 0 && chunk < chunks.len() {
            let here = chunks[chunk].len() - offset;
            if left >= here {
                left -= here;
                chunk += 1;
                offset = 0;
            } else {
                offset += left;
                left = 0;
            }
        }
    }
    Ok(())
}

/// One non-blocking `sendmsg` of `chunks` (the first from `offset`).
fn sendmsg_nowait(fd: RawFd, chunks: &[Bytes], offset: usize) -> std::io::Result<usize> {
    let mut iov: Vec<libc::iovec> = Vec::with_capacity(chunks.len().min(IOVECS_PER_SEND_MAX));
    for (i, c) in chunks.iter().take(IOVECS_PER_SEND_MAX).enumerate() {
        let part = if i == 0 { &c[offset..] } else { &c[..] };
        if !part.is_empty() {
            iov.push(libc::iovec {
                iov_base: part.as_ptr() as *mut libc::c_void,
                iov_len: part.len(),
            });
        }
    }
    // SAFETY: an all-zero msghdr is valid; we set only the iovec fields.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = iov.len() as _;
    // SAFETY: every iovec points into a live `Bytes` borrowed for this call.
    let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(n as usize)
}
