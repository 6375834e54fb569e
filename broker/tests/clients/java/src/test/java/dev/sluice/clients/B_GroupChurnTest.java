package dev.sluice.clients;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.ArrayList;
import java.util.Collection;
import java.util.HashMap;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicReference;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.ConsumerGroupDescription;
import org.apache.kafka.clients.admin.MemberDescription;
import org.apache.kafka.clients.admin.OffsetSpec;
import org.apache.kafka.clients.consumer.ConsumerRebalanceListener;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.consumer.OffsetAndMetadata;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.GroupState;
import org.apache.kafka.common.KafkaException;
import org.apache.kafka.common.TopicPartition;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.extension.ExtendWith;

/**
 * (b) A classic-protocol group of three members, with members joining and
 * leaving while a producer runs. Consumers commit synchronously after each
 * batch. At the end every produced record was consumed at least once and the
 * committed offsets equal the log end offsets.
 */
@ExtendWith(Check.class)
class B_GroupChurnTest {
  static final int PARTITIONS = 6;
  static final int RECORDS = 6_000;

  /** One group member on its own thread. */
  static final class Member implements Runnable {
    final String name;
    final String topic;
    final String group;
    final Map<String, String> consumed;
    final AtomicBoolean stop = new AtomicBoolean();
    final AtomicInteger commits = new AtomicInteger();
    final AtomicInteger failedCommits = new AtomicInteger();
    final AtomicInteger rebalances = new AtomicInteger();
    final AtomicReference<Throwable> error = new AtomicReference<>();
    final Thread thread;

    Member(String name, String topic, String group, Map<String, String> consumed) {
      this.name = name;
      this.topic = topic;
      this.group = group;
      this.consumed = consumed;
      this.thread = new Thread(this, name);
    }

    void start() {
      thread.start();
    }

    void stopAndJoin() throws InterruptedException {
      stop.set(true);
      thread.join(60_000);
      if (thread.isAlive()) {
        throw new AssertionError(name + " did not stop within 60 s");
      }
    }

    @Override
    public void run() {
      var props = K.consumerProps(group);
      props.put("client.id", name);
      props.put("max.poll.records", "200");
      try (KafkaConsumer<String, String> c = new KafkaConsumer<>(props)) {
        c.subscribe(List.of(topic), new ConsumerRebalanceListener() {
          @Override
          public void onPartitionsRevoked(Collection<TopicPartition> parts) {
            rebalances.incrementAndGet();
          }

          @Override
          public void onPartitionsAssigned(Collection<TopicPartition> parts) {}
        });
        long deadline = System.currentTimeMillis() + 180_000;
        while (!stop.get() && System.currentTimeMillis() < deadline) {
          var records = c.poll(K.ms(200));
          for (ConsumerRecord<String, String> r : records) {
            consumed.put(r.partition() + ":" + r.offset(), r.key() + "=" + r.value());
          }
          if (!records.isEmpty()) {
            try {
              c.commitSync(K.ms(15_000));
              commits.incrementAndGet();
            } catch (KafkaException e) {
              // A rebalance took the partitions away first: the records are
              // delivered again to their new owner (at least once).
              failedCommits.incrementAndGet();
            }
          }
        }
      } catch (Throwable t) {
        error.set(t);
      }
    }
  }

  @Test
  void membersJoinAndLeaveWhileRecordsFlow() throws Exception {
    String topic = K.unique("java-b");
    String group = K.unique("java-b-group");
    try (Admin admin = K.admin()) {
      K.createTopic(admin, topic, PARTITIONS);
      Map<String, String> produced = new ConcurrentHashMap<>();
      Map<String, String> consumed = new ConcurrentHashMap<>();
      AtomicReference<Throwable> producerError = new AtomicReference<>();

      // Producer: about 12 s of steady traffic, 50 records every 100 ms.
      Thread producer = new Thread(() -> {
        try (KafkaProducer<String, String> p = new KafkaProducer<>(K.producerProps())) {
          for (int i = 0; i < RECORDS; i++) {
            String key = "k" + (i % 37);
            String value = Integer.toString(i);
            p.send(new ProducerRecord<>(topic, key, value), (md, ex) -> {
              if (ex != null) {
                producerError.compareAndSet(null, ex);
              } else {
                produced.put(md.partition() + ":" + md.offset(), key + "=" + value);
              }
            });
            if (i % 50 == 49) {
              Thread.sleep(100);
            }
          }
          p.flush();
        } catch (Throwable t) {
          producerError.compareAndSet(null, t);
        }
      }, "producer");

      List<Member> all = new ArrayList<>();
      java.util.function.Function<String, Member> spawn = n -> {
        Member m = new Member(n, topic, group, consumed);
        all.add(m);
        m.start();
        return m;
      };
      producer.start();
      Member m1 = spawn.apply("m1");
      Thread.sleep(1500);
      Member m2 = spawn.apply("m2");
      Thread.sleep(1500);
      spawn.apply("m3");
      Thread.sleep(2000);
      m1.stopAndJoin(); // leaves mid-stream
      Thread.sleep(1500);
      spawn.apply("m4");
      Thread.sleep(1500);
      m2.stopAndJoin();
      Thread.sleep(1000);
      spawn.apply("m5");

      producer.join(120_000);
      assertTrue(!producer.isAlive(), "producer finished within 120 s");
      if (producerError.get() != null) {
        throw new AssertionError("producer failed", producerError.get());
      }
      assertEquals(RECORDS, produced.size(), "records acknowledged");

      Map<TopicPartition, Long> end = K.offsets(admin, topic, PARTITIONS, OffsetSpec.latest());
      assertEquals(RECORDS, end.values().stream().mapToLong(Long::longValue).sum(), "sum of log end offsets");

      // The three remaining members catch up and commit the log end.
      Map<TopicPartition, Long> committed = new HashMap<>();
      long deadline = System.currentTimeMillis() + 90_000;
      while (System.currentTimeMillis() < deadline) {
        committed.clear();
        Map<TopicPartition, OffsetAndMetadata> c =
            admin.listConsumerGroupOffsets(group).partitionsToOffsetAndMetadata().get(30, TimeUnit.SECONDS);
        c.forEach((tp, om) -> committed.put(tp, om == null ? -1 : om.offset()));
        if (committed.equals(end)) {
          break;
        }
        Thread.sleep(300);
      }
      assertEquals(end, committed, "committed offsets == log end offsets");

      // The group settles with the three live members owning all partitions.
      AtomicReference<ConsumerGroupDescription> last = new AtomicReference<>();
      K.waitFor("group stable with 3 members", 60_000, () -> {
        try {
          ConsumerGroupDescription d =
              admin.describeConsumerGroups(List.of(group)).describedGroups().get(group).get(10, TimeUnit.SECONDS);
          last.set(d);
          if (d.groupState() != GroupState.STABLE || d.members().size() != 3) {
            return false;
          }
          Set<TopicPartition> owned = new HashSet<>();
          for (MemberDescription m : d.members()) {
            owned.addAll(m.assignment().topicPartitions());
          }
          return owned.equals(new HashSet<>(K.partitions(topic, PARTITIONS)));
        } catch (Exception e) {
          return false;
        }
      });
      assertEquals("classic", last.get().type().toString().toLowerCase(), "group type");

      for (Member m : all) {
        if (!m.stop.get()) {
          m.stopAndJoin();
        }
      }
      for (Member m : all) {
        if (m.error.get() != null) {
          throw new AssertionError("member " + m.name + " failed", m.error.get());
        }
        System.out.printf("  %s: %d commits, %d failed commits, %d revocations%n",
            m.name, m.commits.get(), m.failedCommits.get(), m.rebalances.get());
      }

      // Every produced record was consumed, with the content it was produced with.
      int missing = 0;
      String firstMissing = null;
      for (var e : produced.entrySet()) {
        String v = consumed.get(e.getKey());
        if (v == null) {
          missing++;
          if (firstMissing == null) {
            firstMissing = e.getKey();
          }
        } else {
          assertEquals(e.getValue(), v, "content at partition:offset " + e.getKey());
        }
      }
      assertEquals(0, missing, "produced records never consumed (first: " + firstMissing + ")");
      assertEquals(RECORDS, consumed.size(), "distinct partition:offset consumed");

      // All members left: the group is empty and keeps its offsets.
      K.waitFor("group empty after all members left", 30_000, () -> {
        try {
          return admin.describeConsumerGroups(List.of(group)).describedGroups().get(group)
              .get(10, TimeUnit.SECONDS).groupState() == GroupState.EMPTY;
        } catch (Exception e) {
          return false;
        }
      });
      admin.deleteConsumerGroups(List.of(group)).all().get(30, TimeUnit.SECONDS);
      K.deleteTopicsQuietly(admin, List.of(topic));
    }
  }
}
