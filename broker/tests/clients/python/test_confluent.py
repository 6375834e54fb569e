"""confluent-kafka (its bundled recent librdkafka) against KAFKA_BOOTSTRAP."""

import sys
import threading
import time

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition, OFFSET_BEGINNING
from confluent_kafka.admin import AdminClient, NewTopic

from checks import BOOTSTRAP, expect, expect_eq, run, unique, wait_for

BASE = {"bootstrap.servers": BOOTSTRAP}


_admin = None


def admin():
    """One AdminClient for the suite: a handle destroyed while a request is in
    flight fails that request, so it must outlive the futures."""
    global _admin
    if _admin is None:
        _admin = AdminClient(dict(BASE))
    return _admin


def create_topic(name, partitions):
    fs = admin().create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)],
                               operation_timeout=30, request_timeout=30)
    fs[name].result(timeout=30)

    def ready():
        md = admin().list_topics(topic=name, timeout=10)
        t = md.topics.get(name)
        return (t is not None and t.error is None and len(t.partitions) == partitions
                and all(p.leader >= 0 for p in t.partitions.values()))

    wait_for(f"topic {name} with leaders", 30, ready)


def delete_topic(name):
    try:
        admin().delete_topics([name], operation_timeout=30)[name].result(timeout=30)
    except Exception as e:  # noqa: BLE001
        print(f"cleanup: could not delete {name}: {e}", file=sys.stderr)


def produce(topic, n, keys, idempotent=True, ts_base=None):
    """Produce n records key k<i % keys>, value "<key>:<seq>"; returns
    [(partition, offset, key, value, timestamp)] in send order."""
    acked = [None] * n
    errors = []
    conf = dict(BASE, **{"enable.idempotence": idempotent, "acks": "all", "linger.ms": 5})
    p = Producer(conf)
    for i in range(n):
        key = f"k{i % keys}"
        value = f"{key}:{i // keys}"

        def cb(err, msg, i=i):
            if err is not None:
                errors.append(err)
            else:
                acked[i] = (msg.partition(), msg.offset(), msg.key().decode(), msg.value().decode(),
                            msg.timestamp()[1])

        kw = {"timestamp": ts_base + i} if ts_base is not None else {}
        while True:
            try:
                p.produce(topic, key=key, value=value, headers=[("i", str(i).encode())], callback=cb, **kw)
                break
            except BufferError:
                p.poll(0.1)
        p.poll(0)
    left = p.flush(60)
    expect_eq(left, 0, "records still unacknowledged after flush(60)")
    expect(not errors, f"delivery errors: {errors[:3]}")
    return acked


def end_offsets(topic, partitions):
    c = Consumer(dict(BASE, **{"group.id": unique("py-wm")}))
    try:
        return {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(partitions)}
    finally:
        c.close()


def produce_consume_keys():
    topic = unique("py-ck-a")
    create_topic(topic, 3)
    ts_base = int(time.time() * 1000) - 60_000
    acked = produce(topic, 3000, 30, ts_base=ts_base)
    # Acked offsets are contiguous per partition, in send order.
    per_part = {}
    for (p, o, _, _, _) in acked:
        expect_eq(o, per_part.get(p, 0), f"acked offset in partition {p}")
        per_part[p] = o + 1
    expect_eq(end_offsets(topic, 3), {p: per_part.get(p, 0) for p in range(3)}, "high watermarks")

    c = Consumer(dict(BASE, **{"group.id": unique("py-ck-a-g"), "enable.auto.commit": False}))
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(3)])
    got = []
    deadline = time.monotonic() + 60
    while len(got) < 3000 and time.monotonic() < deadline:
        for m in c.consume(500, timeout=0.5):
            if m.error():
                raise KafkaException(m.error())
            got.append(m)
    extra = c.consume(100, timeout=1.0)
    c.close()
    expect_eq(len(got), 3000, "records consumed")
    expect_eq(len([m for m in extra if not m.error()]), 0, "records beyond those produced")

    by_po = {(p, o): (k, v, ts) for (p, o, k, v, ts) in acked}
    next_off, next_seq = {}, {}
    for m in got:
        p, o, k, v = m.partition(), m.offset(), m.key().decode(), m.value().decode()
        expect_eq(o, next_off.get(p, 0), f"offset in partition {p}")
        next_off[p] = o + 1
        seq = next_seq.get(k, 0)
        expect_eq(v, f"{k}:{seq}", f"value order of key {k}")
        next_seq[k] = seq + 1
        expect_eq((k, v), by_po[(p, o)][:2], f"content at {p}:{o}")
        i = int(dict(m.headers())["i"].decode())
        expect_eq(m.timestamp()[1], ts_base + i, f"CreateTime of record {i}")
    expect(all(n == 100 for n in next_seq.values()) and len(next_seq) == 30, "100 records for each of 30 keys")
    delete_topic(topic)


def cooperative_group_member_leaves():
    topic = unique("py-ck-b")
    group = unique("py-ck-b-g")
    partitions = 4
    total = 6000
    create_topic(topic, partitions)
    consumed = {}
    lock = threading.Lock()
    errors = []
    stop = {"c1": threading.Event(), "c2": threading.Event()}
    assignments = {"c1": set(), "c2": set()}
    produced = []

    def producer():
        try:
            p = Producer(dict(BASE, **{"enable.idempotence": True, "linger.ms": 5}))
            for i in range(total):
                def cb(err, msg, i=i):
                    if err is not None:
                        errors.append(f"produce: {err}")
                    else:
                        produced.append((msg.partition(), msg.offset(), str(i)))
                p.produce(topic, key=f"k{i % 17}", value=str(i), callback=cb)
                p.poll(0)
                if i % 50 == 49:
                    time.sleep(0.1)  # about 12 s of traffic
            if p.flush(60) != 0:
                errors.append("produce: records left after flush")
        except Exception as e:  # noqa: BLE001
            errors.append(f"producer: {e}")

    def member(name):
        conf = dict(BASE, **{
            "group.id": group,
            "client.id": name,
            "partition.assignment.strategy": "cooperative-sticky",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 10000,
        })
        c = Consumer(conf)

        def on_assign(cons, parts):
            with lock:
                assignments[name] |= {tp.partition for tp in parts}
                print(f"  {time.monotonic():.2f} {name} assigned {[tp.partition for tp in parts]}", file=sys.stderr)

        def on_revoke(cons, parts):
            with lock:
                assignments[name] -= {tp.partition for tp in parts}
                print(f"  {time.monotonic():.2f} {name} revoked {[tp.partition for tp in parts]}", file=sys.stderr)

        c.subscribe([topic], on_assign=on_assign, on_revoke=on_revoke)
        deadline = time.monotonic() + 120
        try:
            while not stop[name].is_set() and time.monotonic() < deadline:
                msgs = c.consume(200, timeout=0.2)
                good = []
                for m in msgs:
                    if m.error():
                        errors.append(f"{name}: {m.error()}")
                        continue
                    good.append(m)
                with lock:
                    for m in good:
                        consumed[(m.partition(), m.offset())] = m.value().decode()
                if good:
                    try:
                        c.commit(asynchronous=False)
                    except KafkaException as e:
                        # A rebalance took partitions first: redelivered to the new owner.
                        print(f"  {name}: commit failed: {e}", file=sys.stderr)
        finally:
            c.close()  # leaves the group

    pt = threading.Thread(target=producer)
    t1 = threading.Thread(target=member, args=("c1",))
    t2 = threading.Thread(target=member, args=("c2",))
    pt.start()
    t1.start()
    time.sleep(1.0)
    t2.start()
    wait_for("both members own partitions", 30,
             lambda: len(assignments["c1"]) > 0 and len(assignments["c2"]) > 0)
    time.sleep(1.0)
    expect(pt.is_alive(), "producer still running when c2 leaves (mid-stream)")
    stop["c2"].set()  # c2 leaves mid-stream
    t2.join(30)
    expect(not t2.is_alive(), "c2 closed within 30 s")
    pt.join(90)
    expect(not pt.is_alive(), "producer finished")
    expect(not errors, f"errors: {errors[:3]}")
    expect_eq(len(produced), total, "records acknowledged")

    end = end_offsets(topic, partitions)
    expect_eq(sum(end.values()), total, "sum of high watermarks")
    # c1 takes over every partition and commits up to the end.
    checker = Consumer(dict(BASE, **{"group.id": group}))

    def caught_up():
        com = checker.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return {tp.partition: tp.offset for tp in com} == end

    try:
        wait_for("c1 owns every partition after c2 left", 60,
                 lambda: assignments["c1"] == set(range(partitions)))
        wait_for("committed offsets == high watermarks", 60, caught_up, interval=0.5)
    finally:
        stop["c1"].set()
        t1.join(30)
    # A new consumer in the group sees the same committed offsets.
    com = checker.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
    checker.close()
    expect_eq({tp.partition: tp.offset for tp in com}, end, "committed offsets seen by a new consumer")
    missing = [(p, o) for (p, o, _) in produced if (p, o) not in consumed]
    expect_eq(missing[:5], [], "produced records never consumed")
    for (p, o, v) in produced:
        expect_eq(consumed[(p, o)], v, f"content at {p}:{o}")
    delete_topic(topic)


if __name__ == "__main__":
    only = sys.argv[1] if len(sys.argv) > 1 else None
    ok = run("python-confluent", [produce_consume_keys, cooperative_group_member_leaves], only)
    sys.exit(0 if ok else 1)
