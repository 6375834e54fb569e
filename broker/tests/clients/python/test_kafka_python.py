"""kafka-python (pure Python client) against KAFKA_BOOTSTRAP: admin create and
delete topics, produce, consume, a consumer group with commits."""

import sys
import time
import warnings

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.structs import OffsetAndMetadata

from checks import BOOTSTRAP, CheckFailed, expect, expect_eq, run, unique, wait_for

# Plain callables as (de)serializers are what most code uses; kafka-python 3
# warns about them.
warnings.filterwarnings("ignore", category=DeprecationWarning)

PARTITIONS = 3
RECORDS = 900
state = {}


def admin():
    if "admin" not in state:
        state["admin"] = KafkaAdminClient(bootstrap_servers=BOOTSTRAP, client_id="sluice-kafka-python")
    return state["admin"]


def topic_of_suite():
    if "topic" not in state:
        raise CheckFailed("no topic: admin_create_topic failed")
    return state["topic"]


def admin_create_topic():
    topic = unique("py-kp")
    admin().create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1,
                                    topic_configs={"retention.ms": "3600000"})])
    wait_for("topic listed", 30, lambda: topic in admin().list_topics())
    desc = [t for t in admin().describe_topics([topic]) if t["name"] == topic]
    expect_eq(len(desc), 1, "describe_topics result")
    expect_eq(len(desc[0]["partitions"]), PARTITIONS, "partitions")
    expect(all(p["leader_id"] >= 0 for p in desc[0]["partitions"]), "every partition has a leader")
    state["topic"] = topic


def produce_keyed():
    topic = topic_of_suite()
    p = KafkaProducer(bootstrap_servers=BOOTSTRAP, acks="all", linger_ms=5,
                      key_serializer=str.encode, value_serializer=str.encode)
    futures = []
    for i in range(RECORDS):
        key = f"k{i % 9}"
        futures.append((key, f"{key}:{i // 9}", p.send(topic, key=key, value=f"{key}:{i // 9}")))
    p.flush(timeout=60)
    acked = []
    next_off = {}
    for key, value, f in futures:
        md = f.get(timeout=30)
        expect_eq(md.offset, next_off.get(md.partition, 0), f"acked offset in partition {md.partition}")
        next_off[md.partition] = md.offset + 1
        acked.append((md.partition, md.offset, key, value))
    p.close(timeout=10)
    state["acked"] = acked
    state["end"] = {pt: next_off.get(pt, 0) for pt in range(PARTITIONS)}


def consume_from_beginning():
    topic = topic_of_suite()
    c = KafkaConsumer(bootstrap_servers=BOOTSTRAP, enable_auto_commit=False,
                      key_deserializer=bytes.decode, value_deserializer=bytes.decode)
    tps = [TopicPartition(topic, pt) for pt in range(PARTITIONS)]
    c.assign(tps)
    c.seek_to_beginning(*tps)
    end = c.end_offsets(tps)
    expect_eq({tp.partition: o for tp, o in end.items()}, state["end"], "end_offsets")
    got = []
    deadline = time.monotonic() + 60
    while len(got) < RECORDS and time.monotonic() < deadline:
        for _, recs in c.poll(timeout_ms=500).items():
            got.extend(recs)
    c.close()
    expect_eq(len(got), RECORDS, "records consumed")
    by_po = {(pt, o): (k, v) for (pt, o, k, v) in state["acked"]}
    next_off, next_seq = {}, {}
    for r in got:
        expect_eq(r.offset, next_off.get(r.partition, 0), f"offset in partition {r.partition}")
        next_off[r.partition] = r.offset + 1
        seq = next_seq.get(r.key, 0)
        expect_eq(r.value, f"{r.key}:{seq}", f"value order of key {r.key}")
        next_seq[r.key] = seq + 1
        expect_eq((r.key, r.value), by_po[(r.partition, r.offset)], f"content at {r.partition}:{r.offset}")


def group_consume_and_commit():
    topic = topic_of_suite()
    group = unique("py-kp-g")
    c = KafkaConsumer(topic, bootstrap_servers=BOOTSTRAP, group_id=group, enable_auto_commit=False,
                      auto_offset_reset="earliest", value_deserializer=bytes.decode)
    seen = set()
    deadline = time.monotonic() + 60
    while len(seen) < RECORDS and time.monotonic() < deadline:
        batch = c.poll(timeout_ms=500)
        for tp, recs in batch.items():
            for r in recs:
                seen.add((r.partition, r.offset))
        if batch:
            c.commit()
    expect_eq(len(seen), RECORDS, "records consumed by the group")
    expect_eq({tp.partition for tp in c.assignment()}, set(range(PARTITIONS)), "assignment of the only member")
    for pt in range(PARTITIONS):
        expect_eq(c.committed(TopicPartition(topic, pt)), state["end"][pt], f"committed offset of partition {pt}")
    # Rewind partition 0 to 5 by commit, with metadata.
    c.commit({TopicPartition(topic, 0): OffsetAndMetadata(5, "rewound", -1)})
    c.close()

    # A new member: it starts from what the group committed.
    c2 = KafkaConsumer(topic, bootstrap_servers=BOOTSTRAP, group_id=group, enable_auto_commit=False,
                       auto_offset_reset="earliest", value_deserializer=bytes.decode)
    first = None
    deadline = time.monotonic() + 30
    while first is None and time.monotonic() < deadline:
        for tp, recs in c2.poll(timeout_ms=500).items():
            for r in recs:
                expect_eq(r.partition, 0, "only partition 0 has records past the committed offsets")
                first = first or r
    expect(first is not None, "a record from partition 0 after rewinding")
    expect_eq(first.offset, 5, "first offset read after the rewind")
    c2.close()
    offs = admin().list_group_offsets(group)[group]
    expect_eq(offs[TopicPartition(topic, 0)].offset, 5, "admin view of partition 0")
    expect_eq(offs[TopicPartition(topic, 0)].metadata, "rewound", "committed metadata")
    expect_eq(offs[TopicPartition(topic, 1)].offset, state["end"][1], "admin view of partition 1")
    admin().delete_groups([group])
    listed = admin().list_groups()
    expect(all("group_id" in g for g in listed), f"list_groups entries: {listed[:2]}")
    expect(group not in [g["group_id"] for g in listed], "group deleted")


def admin_delete_topic():
    topic = topic_of_suite()
    admin().delete_topics([topic])
    wait_for("topic gone", 30, lambda: topic not in admin().list_topics())


if __name__ == "__main__":
    only = sys.argv[1] if len(sys.argv) > 1 else None
    ok = run("python-kafka-python",
             [admin_create_topic, produce_keyed, consume_from_beginning, group_consume_and_commit,
              admin_delete_topic], only)
    if "admin" in state:
        state["admin"].close()
    sys.exit(0 if ok else 1)
