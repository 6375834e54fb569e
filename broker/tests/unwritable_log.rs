//! A broker whose log cannot be written keeps serving.
//!
//! The broker's stdout and stderr are usually redirected to files. When the
//! disk under them fills up, every log line fails to write. That must cost
//! the log lines, not the broker: with `std::io::stderr` as tracing's
//! writer, the first failed line made tracing-subscriber report it with
//! `eprintln!`, which panics when stderr fails, and the panic aborted the
//! process (exit 134, no message anywhere, since the message could not be
//! written either). Found when a benchmark run filled the root disk.

mod common;

use std::io::Write;
use std::net::TcpStream;

use common::{batch_of, fetch_all, Broker};
use sluice_protocol::native::{Acks, ProducePartition};
use sluice_protocol::ErrorCode;

#[test]
fn a_broker_whose_stdout_and_stderr_fail_keeps_serving() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Start-up logs (the memory budget, "sluice ready") already fail here.
    let mut b = Broker::start_with_unwritable_output(&dir.path().join("d"), 2);
    b.create_topic("t", 2);
    let mut c = b.client();
    let values: [&[u8]; 3] = [b"one", b"two", b"three"];
    let produce = |c: &mut sluice_protocol::client::Client| {
        let partitions = (0..2)
            .map(|p| ProducePartition {
                topic: "t".into(),
                partition: p,
                records: batch_of(&values),
            })
            .collect();
        let r = c.produce(Acks::All, 10_000, partitions).expect("produce");
        assert!(r.iter().all(|p| p.error == ErrorCode::NONE), "{r:?}");
    };
    produce(&mut c);
    // Things that log: a malformed Kafka frame, and clients that vanish.
    for _ in 0..3 {
        let mut s = TcpStream::connect(("127.0.0.1", b.kafka_port)).expect("connect");
        let _ = s.write_all(&[0, 0, 0, 8, 0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4]);
        drop(s);
        // A native frame cut off mid-way.
        let mut s = TcpStream::connect(b.addr()).expect("connect");
        let _ = s.write_all(&[0, 0, 0, 100, 1, 2, 3]);
        drop(s);
    }
    produce(&mut c);
    let child = b.child.as_mut().expect("running");
    assert!(
        child.try_wait().expect("wait").is_none(),
        "the broker died with its log unwritable"
    );
    for p in 0..2 {
        let got = fetch_all(&mut c, "t", p, 0, 1 << 20, "with the log unwritable");
        let got: Vec<Vec<u8>> = got.into_iter().map(|(_, v)| v).collect();
        let want: Vec<Vec<u8>> = values.iter().chain(&values).map(|v| v.to_vec()).collect();
        assert_eq!(got, want, "partition {p}");
    }
    // A clean stop still says so with its exit code.
    assert!(b.terminate().success());
}

/// The CLI reports a stdout it cannot write as an error (exit 1 and a
/// message), instead of panicking (exit 134 and a backtrace).
#[test]
fn the_cli_reports_an_unwritable_stdout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = Broker::start(&dir.path().join("d"), 1);
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("open /dev/full");
    let out = std::process::Command::new(common::SLUICE)
        .args([
            "topic",
            "create",
            "cli-full",
            "--partitions",
            "1",
            "--bootstrap",
        ])
        .arg(b.addr())
        .stdout(full)
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("run the cli");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("No space left on device"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
