//! A connection the generator can wait on: a blocking [`Client`] plus its
//! socket's descriptor, so one thread can wait for whichever of its
//! connections answers first (`ppoll`) and time each answer when it
//! arrives, not when the thread gets round to it.
//!
//! The client reads straight from the socket (no user-space buffer), so
//! "readable" means the next response has started to arrive.

use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use sluice_protocol::client::{Client, CONNECT_TIMEOUT};

use crate::error::BenchError;

/// The longest a thread waits for any response before it gives up.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Conn {
    pub client: Client,
    fd: RawFd,
}

impl Conn {
    pub fn connect(addr: &str) -> Result<Conn, BenchError> {
        let failed = |e: std::io::Error| BenchError::new(format!("connecting to {addr}: {e}"));
        let mut last = None;
        for socket_addr in addr.to_socket_addrs().map_err(failed)? {
            match TcpStream::connect_timeout(&socket_addr, CONNECT_TIMEOUT) {
                Ok(stream) => {
                    let fd = stream.as_raw_fd();
                    let client = Client::from_stream(stream)?;
                    return Ok(Conn { client, fd });
                }
                Err(e) => last = Some(e),
            }
        }
        let e = last.unwrap_or_else(|| std::io::Error::other("resolves to nothing"));
        Err(failed(e))
    }
}

/// Waits until any of `conns` selected by `watch` is readable, or
/// `timeout` passes; returns the indexes of the readable ones (empty on
/// timeout). With nothing to watch it just sleeps.
pub fn wait_readable(
    conns: &[Conn],
    watch: impl Fn(usize) -> bool,
    timeout: Duration,
) -> Result<Vec<usize>, BenchError> {
    let watched: Vec<usize> = (0..conns.len()).filter(|&i| watch(i)).collect();
    if watched.is_empty() {
        std::thread::sleep(timeout);
        return Ok(Vec::new());
    }
    let mut fds: Vec<libc::pollfd> = watched
        .iter()
        .map(|&i| libc::pollfd {
            fd: conns[i].fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ts = libc::timespec {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: timeout.subsec_nanos() as libc::c_long, // < 10^9: fits
    };
    // SAFETY: `fds` is a live, exclusively borrowed array of `fds.len()`
    // pollfds and `ts` a valid timespec; a null sigmask leaves the signal
    // mask unchanged. The descriptors belong to clients in `conns`, which
    // outlive the call.
    let n = unsafe {
        libc::ppoll(
            fds.as_mut_ptr(),
            fds.len() as libc::nfds_t,
            &ts,
            std::ptr::null(),
        )
    };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() == std::io::ErrorKind::Interrupted {
            return Ok(Vec::new());
        }
        return Err(BenchError::new(format!("ppoll: {e}")));
    }
    // POLLHUP and POLLERR count as readable: the read then reports why.
    Ok(watched
        .into_iter()
        .zip(&fds)
        .filter(|(_, p)| p.revents != 0)
        .map(|(i, _)| i)
        .collect())
}
