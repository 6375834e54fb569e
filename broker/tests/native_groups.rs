//! Consumer groups over the native protocol, against a real `sluice`
//! process: the client's group requests with Kafka's error codes (KIP-394's
//! MEMBER_ID_REQUIRED join, generation fencing), committed offsets that
//! survive a restart, and `sluice consume --group` members that split a
//! topic and print each record exactly once between them.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{batch_of, Broker, SLUICE};
use sluice_protocol::client::Client;
use sluice_protocol::native::{
    Acks, GroupAssignment, GroupProtocol, HeartbeatRequest, JoinGroupRequest, LeaveGroupRequest,
    LeavingMember, OffsetCommitPartition, OffsetCommitRequest, OffsetFetchPartition,
    OffsetFetchRequest, ProducePartition, SyncGroupRequest,
};
use sluice_protocol::ErrorCode;

const GROUPS_TOML: &str = "group_initial_rebalance_delay_ms = 0\n";
const ILLEGAL_GENERATION: ErrorCode = ErrorCode(22);
const UNKNOWN_MEMBER_ID: ErrorCode = ErrorCode(25);
const MEMBER_ID_REQUIRED: ErrorCode = ErrorCode(79);
const COORDINATOR_LOAD_IN_PROGRESS: ErrorCode = ErrorCode(14);

fn join_request(group: &str, member_id: &str) -> JoinGroupRequest {
    JoinGroupRequest {
        group_id: group.into(),
        session_timeout_ms: 10_000,
        rebalance_timeout_ms: 10_000,
        member_id: member_id.into(),
        group_instance_id: None,
        protocol_type: "consumer".into(),
        protocols: vec![GroupProtocol {
            name: "range".into(),
            metadata: Bytes::from_static(b"subscription"),
        }],
        client_id: "native-groups-test".into(),
    }
}

fn commit_request(group: &str, generation_id: i32, member_id: &str) -> OffsetCommitRequest {
    let partition = |partition, offset| OffsetCommitPartition {
        topic: "t".into(),
        partition,
        offset,
        leader_epoch: -1,
        metadata: format!("p{partition}"),
    };
    OffsetCommitRequest {
        group_id: group.into(),
        generation_id,
        member_id: member_id.into(),
        group_instance_id: None,
        partitions: vec![partition(0, 17), partition(3, 4)],
    }
}

/// The committed offsets of partitions 0..4 of "t", retried while the
/// coordinator is still loading after a start.
fn committed(client: &mut Client, group: &str) -> Vec<(u32, i64, String)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let asked = (0..4).map(|partition| OffsetFetchPartition {
            topic: "t".into(),
            partition,
        });
        let r = client
            .offset_fetch(OffsetFetchRequest {
                group_id: group.into(),
                partitions: asked.collect(),
                require_stable: false,
            })
            .expect("offset fetch");
        if r.error == COORDINATOR_LOAD_IN_PROGRESS && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        }
        assert_eq!(r.error, ErrorCode::NONE);
        return r
            .partitions
            .into_iter()
            .map(|p| (p.partition, p.offset, p.metadata))
            .collect();
    }
}

/// Kafka's classic protocol, one member: JoinGroup (KIP-394: first without
/// an id, answered MEMBER_ID_REQUIRED), SyncGroup, Heartbeat, OffsetCommit
/// and OffsetFetch; an unknown member and a stale generation are refused
/// with UNKNOWN_MEMBER_ID (25) and ILLEGAL_GENERATION (22).
#[test]
fn group_requests_round_trip_with_kafkas_error_codes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = Broker::start_with(&dir.path().join("data"), 2, GROUPS_TOML);
    b.create_topic("t", 4);
    let mut c = b.client();

    let first = c.join_group(join_request("g1", "")).expect("join");
    assert_eq!(first.error, MEMBER_ID_REQUIRED);
    assert!(first.member_id.starts_with("native-groups-test-"));
    let joined = c
        .join_group(join_request("g1", &first.member_id))
        .expect("join");
    assert_eq!(joined.error, ErrorCode::NONE);
    let me = joined.member_id.clone();
    assert_eq!(
        (joined.leader.as_str(), joined.generation_id),
        (me.as_str(), 1)
    );
    assert_eq!(joined.protocol_name, "range");
    assert_eq!(joined.members.len(), 1);
    assert_eq!(&joined.members[0].metadata[..], b"subscription");

    let synced = c
        .sync_group(SyncGroupRequest {
            group_id: "g1".into(),
            generation_id: 1,
            member_id: me.clone(),
            group_instance_id: None,
            protocol_type: "consumer".into(),
            protocol_name: "range".into(),
            assignments: vec![GroupAssignment {
                member_id: me.clone(),
                assignment: Bytes::from_static(b"all of it"),
            }],
        })
        .expect("sync");
    assert_eq!(synced.error, ErrorCode::NONE);
    assert_eq!(&synced.assignment[..], b"all of it");

    let heartbeat = |c: &mut Client, generation_id, member_id: &str| {
        let r = c.heartbeat(HeartbeatRequest {
            group_id: "g1".into(),
            generation_id,
            member_id: member_id.into(),
            group_instance_id: None,
        });
        r.expect("heartbeat").error
    };
    assert_eq!(heartbeat(&mut c, 1, &me), ErrorCode::NONE);
    assert_eq!(heartbeat(&mut c, 1, "nobody"), UNKNOWN_MEMBER_ID);
    assert_eq!(heartbeat(&mut c, 7, &me), ILLEGAL_GENERATION);

    let stale = c
        .offset_commit(commit_request("g1", 0, &me))
        .expect("commit");
    assert!(
        stale.iter().all(|p| p.error == ILLEGAL_GENERATION),
        "{stale:?}"
    );
    let unknown = c
        .offset_commit(commit_request("g1", 1, "nobody"))
        .expect("commit");
    assert!(
        unknown.iter().all(|p| p.error == UNKNOWN_MEMBER_ID),
        "{unknown:?}"
    );
    let done = c
        .offset_commit(commit_request("g1", 1, &me))
        .expect("commit");
    let codes: Vec<(u32, ErrorCode)> = done.iter().map(|p| (p.partition, p.error)).collect();
    assert_eq!(codes, [(0, ErrorCode::NONE), (3, ErrorCode::NONE)]);

    let offsets = committed(&mut c, "g1");
    assert_eq!(
        offsets,
        [
            (0, 17, "p0".to_owned()),
            (1, -1, String::new()),
            (2, -1, String::new()),
            (3, 4, "p3".to_owned())
        ]
    );

    let left = c
        .leave_group(LeaveGroupRequest {
            group_id: "g1".into(),
            members: vec![LeavingMember {
                member_id: me.clone(),
                group_instance_id: None,
            }],
        })
        .expect("leave");
    assert_eq!(left.error, ErrorCode::NONE);
    assert_eq!(left.members.len(), 1);
    assert_eq!(left.members[0].error, ErrorCode::NONE);
    assert_eq!(heartbeat(&mut c, 1, &me), UNKNOWN_MEMBER_ID);
}

/// An acknowledged OffsetCommit is durable: after a clean restart the
/// offsets (and their metadata) are read back unchanged.
#[test]
fn committed_offsets_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut b = Broker::start_with(&dir.path().join("data"), 2, GROUPS_TOML);
    b.create_topic("t", 4);
    let mut c = b.client();
    // generation -1, no member: a consumer that assigns its own partitions.
    let r = c
        .offset_commit(commit_request("standalone", -1, ""))
        .expect("commit");
    assert!(r.iter().all(|p| p.error == ErrorCode::NONE), "{r:?}");
    let before = committed(&mut c, "standalone");
    drop(c);
    assert!(b.terminate().success());
    b.spawn();
    let after = committed(&mut b.client(), "standalone");
    assert_eq!(after, before);
    assert_eq!(after[0], (0, 17, "p0".to_owned()));
}

/// A running `sluice consume --group` process: its stdout collected whole,
/// its stderr line by line.
struct Consumer {
    child: Child,
    stdout: JoinHandle<String>,
    stderr: mpsc::Receiver<String>,
    /// The partitions of its latest assignment.
    partitions: Option<String>,
}

impl Consumer {
    fn start(b: &Broker, group: &str, timeout_ms: u64) -> Consumer {
        let mut child = Command::new(SLUICE)
            .args(["consume", "events", "--group", group, "--print-offsets"])
            .args(["--timeout-ms", &timeout_ms.to_string()])
            .args(["--bootstrap", &b.addr()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start consume");
        let mut out = child.stdout.take().expect("stdout");
        let stdout = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = out.read_to_string(&mut text);
            text
        });
        let err = child.stderr.take().expect("stderr");
        let (tx, stderr) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Consumer {
            child,
            stdout,
            stderr,
            partitions: None,
        }
    }

    /// Takes the stderr lines so far, remembering the latest assignment.
    fn poll(&mut self) {
        while let Ok(line) = self.stderr.try_recv() {
            eprintln!("consumer {}: {line}", self.child.id());
            if let Some((_, partitions)) = line.rsplit_once("partitions ") {
                self.partitions = Some(partitions.to_owned());
            }
        }
    }

    fn finish(mut self) -> (bool, String) {
        let status = self.child.wait().expect("wait");
        self.poll();
        (status.success(), self.stdout.join().expect("stdout"))
    }
}

/// `partition -> offset -> value` from `--print-offsets` output.
fn printed(text: &str) -> Vec<(u32, i64, String)> {
    let parse = |line: &str| {
        let mut fields = line.splitn(3, '\t');
        let partition = fields.next()?.parse().ok()?;
        let offset = fields.next()?.parse().ok()?;
        Some((partition, offset, fields.next()?.to_owned()))
    };
    text.lines()
        .map(|line| parse(line).unwrap_or_else(|| panic!("bad line {line:?}")))
        .collect()
}

/// Two members split a 4-partition topic 2 + 2 (range assignment) and,
/// committing after each printed batch, print 2,000 records exactly once
/// between them; a later member of the group finds everything committed.
#[test]
fn two_cli_members_print_every_record_exactly_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let b = Broker::start_with(&dir.path().join("data"), 2, GROUPS_TOML);
    b.create_topic("events", 4);
    let mut members = [
        Consumer::start(&b, "printers", 8_000),
        Consumer::start(&b, "printers", 8_000),
    ];
    // Records are produced only once both members hold two partitions, so
    // the split is tested, not a race to the first fetch.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        members.iter_mut().for_each(Consumer::poll);
        let two_each = members.iter().all(|m| {
            m.partitions
                .as_deref()
                .is_some_and(|p| p.matches(',').count() == 1)
        });
        if two_each {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the members never split the topic"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut c = b.client();
    let mut expected = BTreeSet::new();
    for round in 0..5 {
        let parts = (0..4u32).map(|partition| {
            let values: Vec<String> = (0..100)
                .map(|i| format!("p{partition}-r{round}-{i}"))
                .collect();
            expected.extend(values.iter().cloned());
            let refs: Vec<&[u8]> = values.iter().map(String::as_bytes).collect();
            ProducePartition {
                topic: "events".into(),
                partition,
                records: batch_of(&refs),
            }
        });
        let r = c
            .produce(Acks::All, 5_000, parts.collect())
            .expect("produce");
        assert!(r.iter().all(|p| p.error == ErrorCode::NONE), "{r:?}");
    }
    assert_eq!(expected.len(), 2_000);

    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut partitions_of = Vec::new();
    for member in members {
        let (ok, out) = member.finish();
        assert!(ok, "a member failed");
        let records = printed(&out);
        assert!(!records.is_empty(), "a member printed nothing");
        partitions_of.push(records.iter().map(|r| r.0).collect::<BTreeSet<u32>>());
        for (_, _, value) in records {
            *seen.entry(value).or_default() += 1;
        }
    }
    let twice: Vec<&String> = seen
        .iter()
        .filter(|(_, &n)| n > 1)
        .map(|(v, _)| v)
        .collect();
    assert!(twice.is_empty(), "printed more than once: {twice:?}");
    assert_eq!(seen.keys().cloned().collect::<BTreeSet<_>>(), expected);
    assert!(partitions_of[0].is_disjoint(&partitions_of[1]));

    let again = b.run_cli(
        &[
            "consume",
            "events",
            "--group",
            "printers",
            "--timeout-ms",
            "1500",
        ],
        b"",
    );
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&again.stdout), "");
}

/// A member that stops heartbeating is expelled once its session times
/// out, though the coordinator had nothing to watch before it joined (it
/// then sleeps rather than ticking: the join wakes it).
#[test]
fn a_silent_member_is_expelled_when_its_session_times_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let toml = format!("{GROUPS_TOML}group_min_session_timeout_ms = 1000\n");
    let b = Broker::start_with(&dir.path().join("data"), 2, &toml);
    b.create_topic("t", 4);
    let mut c = b.client();
    // Long enough for the coordinator to have gone idle.
    committed(&mut c, "quiet");
    std::thread::sleep(Duration::from_millis(1500));
    let joined = common::join_alone(&mut c, "brief", 1500);
    let me = joined.member_id.clone();
    let heartbeat = |c: &mut Client| {
        c.heartbeat(HeartbeatRequest {
            group_id: "brief".into(),
            generation_id: joined.generation_id,
            member_id: me.clone(),
            group_instance_id: None,
        })
        .expect("heartbeat")
        .error
    };
    assert_eq!(heartbeat(&mut c), ErrorCode::NONE);
    // Silent for twice the session timeout.
    std::thread::sleep(Duration::from_millis(3000));
    assert_eq!(heartbeat(&mut c), UNKNOWN_MEMBER_ID, "expelled");
}
