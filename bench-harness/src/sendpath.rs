//! `sluice-bench sendpath`: what each way of handing record bytes to a TCP
//! socket costs, measured on this machine's kernel over loopback.
//!
//! A broker can put bytes it already holds on a socket in several ways:
//!
//! - `sendmsg`: a (vectored) send from user memory. The kernel copies the
//!   bytes into socket buffers. This is what Sluice does, from the tail
//!   cache and from the side ring's read buffers.
//! - `msg-zerocopy`: `send(MSG_ZEROCOPY)`: the kernel pins the pages and
//!   reports on the socket's error queue when they may be reused.
//! - `uring-send-zc`: io_uring's `SEND_ZC` from registered (fixed) buffers,
//!   the same on a ring; a second completion says when a buffer is free.
//! - `vmsplice`: user pages spliced into a pipe, then the pipe into the
//!   socket: the pages themselves ride in the socket buffers.
//! - `sendfile`: from a file in the page cache, as Apache Kafka serves
//!   consumers (and what splicing a segment file would be).
//!
//! Each mechanism sends the same bytes (`--mib`, in `--message-bytes`
//! messages from 16 rotating buffers) to a reader thread on a loopback
//! connection. The figures are each thread's own CPU time
//! (`getrusage(RUSAGE_THREAD)`): the sender's is what a broker would pay.
//! On loopback the receiving side runs in the sender's softirq, and the
//! kernel copies zero-copy pages at delivery (reported by `SEND_ZC`'s
//! `REPORT_USAGE`), so this measures what loopback benchmarks see, which is
//! what the comparison with Kafka runs on.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::Instant;

use clap::Args;

use crate::error::BenchError;

/// Buffers the sender rotates through.
const BUFFERS: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mechanism {
    Sendmsg,
    MsgZerocopy,
    UringSendZc,
    Vmsplice,
    Sendfile,
}

impl Mechanism {
    pub const ALL: [Mechanism; 5] = [
        Mechanism::Sendmsg,
        Mechanism::MsgZerocopy,
        Mechanism::UringSendZc,
        Mechanism::Vmsplice,
        Mechanism::Sendfile,
    ];

    fn name(self) -> &'static str {
        match self {
            Mechanism::Sendmsg => "sendmsg",
            Mechanism::MsgZerocopy => "msg-zerocopy",
            Mechanism::UringSendZc => "uring-send-zc",
            Mechanism::Vmsplice => "vmsplice",
            Mechanism::Sendfile => "sendfile",
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct SendpathArgs {
    /// MiB sent with each mechanism.
    #[arg(long, default_value_t = 4096)]
    pub mib: u64,
    /// Bytes handed to the kernel per call (a fetch response's payload).
    #[arg(long, default_value_t = 1 << 20)]
    pub message_bytes: usize,
    /// Mechanisms to measure, comma-separated (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub mechanisms: Vec<Mechanism>,
    /// Directory for sendfile's file (kept in the page cache while it runs).
    #[arg(long, default_value = "/tmp")]
    pub dir: PathBuf,
    /// Rounds: each mechanism runs once per round, interleaved.
    #[arg(long, default_value_t = 2)]
    pub rounds: u32,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// One mechanism's run.
#[derive(Clone, Debug)]
pub struct Measured {
    pub mechanism: Mechanism,
    pub bytes: u64,
    pub wall_s: f64,
    pub sender_cpu_s: f64,
    pub receiver_cpu_s: f64,
    /// Zero-copy sends the kernel reported it copied anyway, of those it
    /// reported on (`None` for copying mechanisms).
    pub copied: Option<(u64, u64)>,
}

impl Measured {
    fn per_gb(&self, s: f64) -> f64 {
        s / (self.bytes as f64 / 1e9)
    }
}

/// The byte at position `j` of buffer `b`: the reader checks every byte.
fn pattern(b: usize, j: usize) -> u8 {
    (b.wrapping_mul(7) ^ j.wrapping_mul(13) ^ (j >> 9)) as u8
}

/// Page-aligned anonymous memory that is unmapped, never reused, when
/// dropped: pages handed to the kernel by reference stay valid.
/// Page-aligned anonymous memory (usable for `O_DIRECT` writes too).
pub(crate) struct Mapped {
    ptr: *mut u8,
    len: usize,
}

impl Mapped {
    pub(crate) fn new(len: usize) -> io::Result<Mapped> {
        // SAFETY: an anonymous private mapping, no fixed address.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapped {
            ptr: ptr.cast(),
            len,
        })
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: `len` bytes mapped readable for the life of `self`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` is unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, with its length.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

fn thread_cpu_s() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to an rusage.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn os<T: TryInto<i64> + Copy>(r: T, what: &str) -> Result<T, BenchError> {
    if r.try_into().map_or(true, |v| v < 0) {
        Err(BenchError::new(format!(
            "{what}: {}",
            io::Error::last_os_error()
        )))
    } else {
        Ok(r)
    }
}

/// Runs every requested mechanism `rounds` times and prints the table.
pub fn run(args: &SendpathArgs) -> Result<(), BenchError> {
    if args.mib == 0 || args.message_bytes < 4096 || args.rounds == 0 {
        return Err(BenchError::usage(
            "--mib and --rounds must be at least 1, --message-bytes at least 4096",
        ));
    }
    let mechanisms = if args.mechanisms.is_empty() {
        Mechanism::ALL.to_vec()
    } else {
        args.mechanisms.clone()
    };
    let bytes = args.mib << 20;
    let mut runs = Vec::new();
    for round in 0..args.rounds {
        for &m in &mechanisms {
            let r = measure(m, bytes, args.message_bytes, &args.dir, false)
                .map_err(|e| e.context(m.name()))?;
            eprintln!(
                "round {} {:<14} {:>6.2} GB/s  sender {:.3} CPU-s/GB",
                round + 1,
                m.name(),
                r.bytes as f64 / 1e9 / r.wall_s,
                r.per_gb(r.sender_cpu_s)
            );
            runs.push(r);
        }
    }
    let table = summarize(&mechanisms, &runs);
    print!("{table}");
    if let Some(path) = &args.json {
        std::fs::write(path, json(&runs))
            .map_err(|e| BenchError::new(format!("writing {}: {e}", path.display())))?;
    }
    Ok(())
}

/// The median of each mechanism's rounds, and the ratio to `sendmsg`.
fn summarize(mechanisms: &[Mechanism], runs: &[Measured]) -> String {
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let of = |m: Mechanism, f: &dyn Fn(&Measured) -> f64| {
        median(runs.iter().filter(|r| r.mechanism == m).map(f).collect())
    };
    let base = of(Mechanism::Sendmsg, &|r| r.per_gb(r.sender_cpu_s));
    let mut out = String::from(
        "mechanism       GB/s  sender CPU-s/GB  receiver CPU-s/GB  sender vs sendmsg  kernel copied\n",
    );
    for &m in mechanisms {
        let sender = of(m, &|r| r.per_gb(r.sender_cpu_s));
        let copied = runs
            .iter()
            .filter(|r| r.mechanism == m)
            .filter_map(|r| r.copied)
            .fold(None, |acc: Option<(u64, u64)>, (c, n)| {
                let (c0, n0) = acc.unwrap_or((0, 0));
                Some((c0 + c, n0 + n))
            });
        out.push_str(&format!(
            "{:<14} {:>5.2}  {:>15.3}  {:>17.3}  {:>17}  {}\n",
            m.name(),
            of(m, &|r| r.bytes as f64 / 1e9 / r.wall_s),
            sender,
            of(m, &|r| r.per_gb(r.receiver_cpu_s)),
            if base.is_finite() {
                format!("{:.2}x", sender / base)
            } else {
                "-".to_owned()
            },
            copied.map_or_else(|| "-".to_owned(), |(c, n)| format!("{c}/{n} sends")),
        ));
    }
    out
}

fn json(runs: &[Measured]) -> String {
    let rows: Vec<String> = runs
        .iter()
        .map(|r| {
            format!(
                "{{\"mechanism\":\"{}\",\"bytes\":{},\"wall_s\":{:.4},\"sender_cpu_s\":{:.4},\"receiver_cpu_s\":{:.4},\"kernel_copied\":{}}}",
                r.mechanism.name(),
                r.bytes,
                r.wall_s,
                r.sender_cpu_s,
                r.receiver_cpu_s,
                r.copied.map_or_else(|| "null".to_owned(), |(c, n)| format!("[{c},{n}]"))
            )
        })
        .collect();
    format!("[{}]\n", rows.join(",\n"))
}

/// What the reader saw.
struct Received {
    bytes: u64,
    cpu_s: f64,
    mismatch: Option<u64>,
}

/// Reads until EOF; with `verify`, checks every byte against the pattern.
fn receive(mut s: TcpStream, message: usize, verify: bool) -> io::Result<Received> {
    let cpu0 = thread_cpu_s();
    let mut buf = vec![0u8; 1 << 20];
    let mut at: u64 = 0;
    let mut mismatch = None;
    loop {
        let n = match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if verify && mismatch.is_none() {
            for (k, &got) in buf[..n].iter().enumerate() {
                let p = at as usize + k;
                let b = (p / message) % BUFFERS;
                if got != pattern(b, p % message) {
                    mismatch = Some(p as u64);
                    break;
                }
            }
        }
        at += n as u64;
    }
    Ok(Received {
        bytes: at,
        cpu_s: thread_cpu_s() - cpu0,
        mismatch,
    })
}

/// Sends `bytes` with `m` to a reader on loopback and measures both ends.
pub fn measure(
    m: Mechanism,
    bytes: u64,
    message: usize,
    dir: &std::path::Path,
    verify: bool,
) -> Result<Measured, BenchError> {
    let io_err = |what: &str| {
        let what = what.to_owned();
        move |e: io::Error| BenchError::new(format!("{what}: {e}"))
    };
    let messages = bytes.div_ceil(message as u64);
    let bytes = messages * message as u64;
    let mut buffers = Vec::with_capacity(BUFFERS);
    for b in 0..BUFFERS {
        let mut buf = Mapped::new(message).map_err(io_err("mmap"))?;
        for (j, x) in buf.bytes_mut().iter_mut().enumerate() {
            *x = pattern(b, j);
        }
        buffers.push(buf);
    }
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io_err("bind"))?;
    let addr = listener.local_addr().map_err(io_err("bind"))?;
    let reader = std::thread::spawn(move || -> io::Result<Received> {
        let s = TcpStream::connect(addr)?;
        receive(s, message, verify)
    });
    let (sock, _) = listener.accept().map_err(io_err("accept"))?;
    let t0 = Instant::now();
    let cpu0 = thread_cpu_s();
    let sent = match m {
        Mechanism::Sendmsg => send_plain(&sock, &buffers, messages),
        Mechanism::MsgZerocopy => send_msg_zerocopy(&sock, &buffers, messages),
        Mechanism::UringSendZc => send_uring_zc(&sock, &buffers, messages),
        Mechanism::Vmsplice => send_vmsplice(&sock, &buffers, messages),
        Mechanism::Sendfile => send_file(&sock, &buffers, messages, dir),
    };
    let sender_cpu_s = thread_cpu_s() - cpu0;
    let _ = sock.shutdown(std::net::Shutdown::Write);
    drop(sock);
    let received = reader
        .join()
        .map_err(|_| BenchError::new("the reader thread panicked"))?
        .map_err(io_err("reading"))?;
    let wall_s = t0.elapsed().as_secs_f64();
    let copied = sent?;
    if received.bytes != bytes {
        return Err(BenchError::new(format!(
            "sent {bytes} bytes, the reader got {}",
            received.bytes
        )));
    }
    if let Some(at) = received.mismatch {
        return Err(BenchError::new(format!(
            "the reader got a wrong byte at position {at}"
        )));
    }
    Ok(Measured {
        mechanism: m,
        bytes,
        wall_s,
        sender_cpu_s,
        receiver_cpu_s: received.cpu_s,
        copied,
    })
}

type Copied = Result<Option<(u64, u64)>, BenchError>;

fn send_plain(sock: &TcpStream, buffers: &[Mapped], messages: u64) -> Copied {
    let mut s = sock;
    for i in 0..messages {
        let buf = &buffers[i as usize % BUFFERS];
        s.write_all(buf.bytes())
            .map_err(|e| BenchError::new(format!("send: {e}")))?;
    }
    Ok(None)
}

/// `MSG_ZEROCOPY`: each send gets a sequence number; the error queue
/// reports ranges of them done. A buffer is reused only once every send
/// from it is reported done.
fn send_msg_zerocopy(sock: &TcpStream, buffers: &[Mapped], messages: u64) -> Copied {
    let fd = sock.as_raw_fd();
    let one: libc::c_int = 1;
    // SAFETY: a valid socket and a c_int option value.
    os(
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_ZEROCOPY,
                (&raw const one).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        },
        "setsockopt(SO_ZEROCOPY)",
    )?;
    let mut next_seq: u32 = 0;
    // Sends reported done: every sequence number below `done`.
    let mut done: u32 = 0;
    let mut last_use = [0u32; BUFFERS];
    let (mut copied, mut reported) = (0u64, 0u64);
    for i in 0..messages {
        let b = i as usize % BUFFERS;
        while i >= BUFFERS as u64 && done <= last_use[b] {
            reap_errqueue(fd, true, &mut done, &mut copied, &mut reported)?;
        }
        let buf = buffers[b].bytes();
        let mut off = 0;
        while off < buf.len() {
            // SAFETY: the range lies in a live mapping that is not written
            // until the kernel reports the send done.
            let n = unsafe {
                libc::send(
                    fd,
                    buf[off..].as_ptr().cast(),
                    buf.len() - off,
                    libc::MSG_ZEROCOPY,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::ENOBUFS) => {
                        reap_errqueue(fd, true, &mut done, &mut copied, &mut reported)?;
                        continue;
                    }
                    Some(libc::EINTR) => continue,
                    _ => return Err(BenchError::new(format!("send(MSG_ZEROCOPY): {e}"))),
                }
            }
            off += n as usize;
            last_use[b] = next_seq;
            next_seq = next_seq.wrapping_add(1);
        }
        reap_errqueue(fd, false, &mut done, &mut copied, &mut reported)?;
    }
    while done < next_seq {
        reap_errqueue(fd, true, &mut done, &mut copied, &mut reported)?;
    }
    Ok(Some((copied, reported)))
}

/// `linux/errqueue.h`: a zero-copy completion, and its "copied" flag.
const SO_EE_ORIGIN_ZEROCOPY: u8 = 5;
const SO_EE_CODE_ZEROCOPY_COPIED: u8 = 1;

/// Reads zero-copy completions from the socket's error queue.
fn reap_errqueue(
    fd: i32,
    wait: bool,
    done: &mut u32,
    copied: &mut u64,
    reported: &mut u64,
) -> Result<(), BenchError> {
    loop {
        let mut control = [0u64; 16];
        // SAFETY: a zeroed msghdr is valid; it is pointed at `control`.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control);
        // SAFETY: `msg` and its control buffer outlive the call.
        let r = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EAGAIN) {
                return Err(BenchError::new(format!("recvmsg(MSG_ERRQUEUE): {e}")));
            }
            if !wait {
                return Ok(());
            }
            let mut pfd = libc::pollfd {
                fd,
                events: 0,
                revents: 0,
            };
            // SAFETY: one valid pollfd. POLLERR is always reported.
            unsafe { libc::poll(&mut pfd, 1, 1000) };
            continue;
        }
        // SAFETY: the kernel filled `msg`'s control buffer; the CMSG macros
        // walk it within `msg_controllen`.
        let mut cm = unsafe { libc::CMSG_FIRSTHDR(&msg) };
        while !cm.is_null() {
            // SAFETY: `cm` points at a header inside the control buffer.
            let (level, kind) = unsafe { ((*cm).cmsg_level, (*cm).cmsg_type) };
            if (level == libc::SOL_IP && kind == libc::IP_RECVERR)
                || (level == libc::SOL_IPV6 && kind == libc::IPV6_RECVERR)
            {
                // SAFETY: an IP_RECVERR message carries a sock_extended_err.
                let ee: libc::sock_extended_err =
                    unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(cm).cast()) };
                if ee.ee_origin == SO_EE_ORIGIN_ZEROCOPY {
                    let (lo, hi) = (ee.ee_info, ee.ee_data);
                    let n = u64::from(hi.wrapping_sub(lo)) + 1;
                    *reported += n;
                    if ee.ee_code & SO_EE_CODE_ZEROCOPY_COPIED != 0 {
                        *copied += n;
                    }
                    *done = (*done).max(hi.wrapping_add(1));
                }
            }
            // SAFETY: as for CMSG_FIRSTHDR.
            cm = unsafe { libc::CMSG_NXTHDR(&msg, cm) };
        }
        if !wait {
            continue;
        }
        return Ok(());
    }
}

/// io_uring `SEND_ZC` from registered buffers: a send's first completion
/// carries its result, a second (`NOTIF`) says the kernel is done with the
/// buffer. A buffer is reused only once all its notifications are in.
fn send_uring_zc(sock: &TcpStream, buffers: &[Mapped], messages: u64) -> Copied {
    use io_uring::{opcode, types};
    /// Ask for `IORING_NOTIF_USAGE_ZC_COPIED` in notifications.
    const IORING_SEND_ZC_REPORT_USAGE: u16 = 1 << 3;
    let ring =
        io_uring::IoUring::new(64).map_err(|e| BenchError::new(format!("io_uring_setup: {e}")))?;
    let iovecs: Vec<libc::iovec> = buffers
        .iter()
        .map(|b| libc::iovec {
            iov_base: b.ptr.cast(),
            iov_len: b.len,
        })
        .collect();
    // SAFETY: the buffers outlive the ring, which is dropped at the end of
    // this function after every notification is in.
    unsafe { ring.submitter().register_buffers(&iovecs) }
        .map_err(|e| BenchError::new(format!("registering buffers: {e}")))?;
    let mut zc = ZcRing {
        ring,
        pending: [0; BUFFERS],
        sent: None,
        copied: 0,
        reported: 0,
    };
    let fd = types::Fd(sock.as_raw_fd());
    for i in 0..messages {
        let b = i as usize % BUFFERS;
        while zc.pending[b] > 0 {
            zc.reap()?;
        }
        let len = buffers[b].len;
        let mut off = 0usize;
        while off < len {
            // SAFETY: `off < len`: inside registered buffer `b`.
            let ptr = unsafe { buffers[b].ptr.add(off) };
            let sqe = opcode::SendZc::new(fd, ptr, (len - off) as u32)
                .buf_index(Some(b as u16))
                .flags(libc::MSG_WAITALL)
                .zc_flags(IORING_SEND_ZC_REPORT_USAGE)
                .build()
                .user_data(b as u64);
            // SAFETY: the buffer stays mapped and unwritten until its
            // notifications are in.
            unsafe { zc.ring.submission().push(&sqe) }
                .map_err(|_| BenchError::new("the submission queue is full"))?;
            zc.pending[b] += 1;
            while zc.sent.is_none() {
                zc.reap()?;
            }
            match zc.sent.take() {
                Some(0) | None => return Err(BenchError::new("SEND_ZC sent nothing")),
                Some(n) => off += n,
            }
        }
    }
    while zc.pending.iter().any(|&n| n > 0) {
        zc.reap()?;
    }
    Ok(Some((zc.copied, zc.reported)))
}

struct ZcRing {
    ring: io_uring::IoUring,
    /// Notifications still to come, per buffer.
    pending: [u32; BUFFERS],
    /// The result of the send in flight, once it is in.
    sent: Option<usize>,
    copied: u64,
    reported: u64,
}

impl ZcRing {
    /// Waits for at least one completion and handles all that are in.
    fn reap(&mut self) -> Result<(), BenchError> {
        use io_uring::cqueue;
        /// Set in a notification's result when the kernel copied the data.
        const IORING_NOTIF_USAGE_ZC_COPIED: u32 = 1 << 31;
        match self.ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => return Ok(()),
            Err(e) => return Err(BenchError::new(format!("io_uring_enter: {e}"))),
        }
        for cqe in self.ring.completion() {
            let b = cqe.user_data() as usize % BUFFERS;
            if cqueue::notif(cqe.flags()) {
                self.pending[b] = self.pending[b].saturating_sub(1);
                self.reported += 1;
                if cqe.result() as u32 & IORING_NOTIF_USAGE_ZC_COPIED != 0 {
                    self.copied += 1;
                }
                continue;
            }
            if !cqueue::more(cqe.flags()) {
                // No notification follows: the buffer is free already.
                self.pending[b] = self.pending[b].saturating_sub(1);
            }
            if cqe.result() < 0 {
                return Err(BenchError::new(format!(
                    "SEND_ZC: {}",
                    io::Error::from_raw_os_error(-cqe.result())
                )));
            }
            self.sent = Some(cqe.result() as usize);
        }
        Ok(())
    }
}

/// User pages into a pipe (`vmsplice`, by reference), the pipe into the
/// socket (`splice`). The buffers are never written while in use.
fn send_vmsplice(sock: &TcpStream, buffers: &[Mapped], messages: u64) -> Copied {
    let (rd, wr) = pipe(buffers[0].len)?;
    let fd = sock.as_raw_fd();
    for i in 0..messages {
        let buf = buffers[i as usize % BUFFERS].bytes();
        let mut off = 0;
        while off < buf.len() {
            let iov = libc::iovec {
                iov_base: buf[off..].as_ptr().cast_mut().cast(),
                iov_len: buf.len() - off,
            };
            // SAFETY: one iovec over live memory; without SPLICE_F_GIFT
            // the kernel only references the pages.
            let n = os(
                unsafe { libc::vmsplice(wr.as_raw_fd(), &iov, 1, 0) },
                "vmsplice",
            )?;
            let mut left = n as usize;
            while left > 0 {
                // SAFETY: plain fds; no offsets (both are streams).
                let m = os(
                    unsafe {
                        libc::splice(
                            rd.as_raw_fd(),
                            std::ptr::null_mut(),
                            fd,
                            std::ptr::null_mut(),
                            left,
                            libc::SPLICE_F_MORE,
                        )
                    },
                    "splice",
                )?;
                left -= m as usize;
            }
            off += n as usize;
        }
    }
    Ok(None)
}

fn pipe(size: usize) -> Result<(File, File), BenchError> {
    let mut fds = [0i32; 2];
    // SAFETY: room for two fds.
    os(
        unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) },
        "pipe",
    )?;
    // SAFETY: the two fds were just created and are owned here alone.
    let (rd, wr) = unsafe {
        use std::os::fd::FromRawFd;
        (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1]))
    };
    // As large as allowed (pipe-max-size, 1 MiB by default): fewer calls.
    let size = size.min(1 << 20) as libc::c_int;
    // SAFETY: a pipe fd; failure leaves the default size.
    unsafe { libc::fcntl(wr.as_raw_fd(), libc::F_SETPIPE_SZ, size) };
    Ok((rd, wr))
}

/// `sendfile` from a file holding the 16 buffers back to back, written
/// (buffered) just before, so it is in the page cache.
fn send_file(sock: &TcpStream, buffers: &[Mapped], messages: u64, dir: &std::path::Path) -> Copied {
    let path = dir.join(format!("sluice-sendpath-{}", std::process::id()));
    let result = (|| {
        let mut f = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| BenchError::new(format!("{}: {e}", path.display())))?;
        for b in buffers {
            f.write_all(b.bytes())
                .map_err(|e| BenchError::new(format!("{}: {e}", path.display())))?;
        }
        let len = buffers[0].len;
        for i in 0..messages {
            let mut at = ((i as usize % BUFFERS) * len) as libc::off_t;
            let mut left = len;
            while left > 0 {
                // SAFETY: valid fds and offset pointer.
                let n = os(
                    unsafe { libc::sendfile(sock.as_raw_fd(), f.as_raw_fd(), &mut at, left) },
                    "sendfile",
                )?;
                left -= n as usize;
            }
        }
        Ok(None)
    })();
    let _ = std::fs::remove_file(&path);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every mechanism delivers every byte, in order, with the right
    /// content (the reader checks each one), for messages that do not
    /// divide the total evenly.
    #[test]
    fn every_mechanism_delivers_the_bytes() {
        let dir = std::env::temp_dir();
        for m in Mechanism::ALL {
            let r = measure(m, 3 << 20, 300 * 1024, &dir, true)
                .unwrap_or_else(|e| panic!("{}: {e}", m.name()));
            assert_eq!(r.bytes, 11 * 300 * 1024, "{}", m.name());
            if matches!(m, Mechanism::MsgZerocopy | Mechanism::UringSendZc) {
                let (copied, reported) = r.copied.expect("zero-copy sends are reported on");
                assert!(reported >= 11, "{}: {reported} sends reported", m.name());
                assert!(copied <= reported);
            } else {
                assert!(r.copied.is_none());
            }
        }
    }

    #[test]
    fn the_table_compares_with_sendmsg() {
        let run = |mechanism, sender_cpu_s| Measured {
            mechanism,
            bytes: 1_000_000_000,
            wall_s: 1.0,
            sender_cpu_s,
            receiver_cpu_s: 0.5,
            copied: None,
        };
        let runs = [
            run(Mechanism::Sendmsg, 0.2),
            run(Mechanism::Sendmsg, 0.4),
            run(Mechanism::Sendmsg, 0.3),
            run(Mechanism::Sendfile, 0.6),
        ];
        let t = summarize(&[Mechanism::Sendmsg, Mechanism::Sendfile], &runs);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[1].starts_with("sendmsg") && lines[1].contains("0.300"));
        assert!(lines[1].contains("1.00x"), "{t}");
        assert!(
            lines[2].starts_with("sendfile") && lines[2].contains("2.00x"),
            "{t}"
        );
    }
}
