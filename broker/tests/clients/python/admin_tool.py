"""Admin helper for the suites whose client has no admin API (kcat):

  admin_tool.py create TOPIC PARTITIONS
  admin_tool.py delete TOPIC
  admin_tool.py ends TOPIC            -> "P END" per line
  admin_tool.py committed GROUP TOPIC -> "P OFFSET" per line (-1001: none)

Uses confluent-kafka against KAFKA_BOOTSTRAP."""

import sys
import time

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from checks import BOOTSTRAP


def partitions_of(admin, topic):
    md = admin.list_topics(topic=topic, timeout=10)
    t = md.topics[topic]
    return sorted(t.partitions) if t.error is None else []


def main(argv):
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    cmd = argv[1]
    if cmd == "create":
        topic, n = argv[2], int(argv[3])
        admin.create_topics([NewTopic(topic, num_partitions=n, replication_factor=1)])[topic].result(timeout=30)
        deadline = time.monotonic() + 30
        while len(partitions_of(admin, topic)) != n:
            if time.monotonic() > deadline:
                sys.exit(f"topic {topic} not ready in 30 s")
            time.sleep(0.2)
    elif cmd == "delete":
        admin.delete_topics([argv[2]])[argv[2]].result(timeout=30)
    elif cmd == "ends":
        topic = argv[2]
        c = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": "admin-tool-unused"})
        for p in partitions_of(admin, topic):
            print(p, c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1])
        c.close()
    elif cmd == "committed":
        group, topic = argv[2], argv[3]
        c = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": group})
        tps = [TopicPartition(topic, p) for p in partitions_of(admin, topic)]
        for tp in c.committed(tps, timeout=10):
            print(tp.partition, tp.offset)
        c.close()
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main(sys.argv)
