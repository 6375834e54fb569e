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
  /** Upper bound on records; the producer stops earlier once the churn is over. */
  static final int MAX_RECORDS = 30_000;

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
    final AtomicInteger records = new AtomicInteger();
    final Set<TopicPartition> owned = ConcurrentHashMap.newKeySet();
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
            owned.removeAll(parts);
          }

          @Override
          public void onPartitionsLost(Collection<TopicPartition> parts) {
            owned.removeAll(parts);
          }

          @Override
          public void onPartitionsAssigned(Collection<TopicPartition> parts) {
            owned.addAll(parts);
          }
        });
        long deadline = System.currentTimeMillis() + 180_000;
        while (!stop.get() && System.currentTimeMillis() < deadline) {
          var batch = c.poll(K.ms(200));
          for (ConsumerRecord<String, String> r : batch) {
            consumed.put(r.partition() + ":" + r.offset(), r.key() + "=" + r.value());
            records.incrementAndGet();
          }
          if (!batch.isEmpty()) {
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

  /** Waits until the live members own every partition exactly once, then 1 s more. */
  static void awaitBalanced(List<Member> members, String after) throws InterruptedException {
    K.waitFor("group rebalanced after " + after, 60_000, () -> {
      int total = 0;
      Set<TopicPartition> union = new HashSet<>();
      for (Member m : members) {
        if (m.stop.get()) {
          continue;
        }
        if (m.owned.isEmpty()) {
          return false;
        }
        total += m.owned.size();
        union.addAll(m.owned);
      }
      return total == PARTITIONS && union.size() == PARTITIONS;
    });
    Thread.sleep(1000);
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
      AtomicBoolean churnDone = new AtomicBoolean();
      AtomicInteger sent = new AtomicInteger();

      // Producer: steady traffic, 50 records every 100 ms, from before the
      // first member joins until a second after the last membership change.
      Thread producer = new Thread(() -> {
        try (KafkaProducer<String, String> p = new KafkaProducer<>(K.producerProps())) {
          long stopAt = Long.MAX_VALUE;
          for (int i = 0; i < MAX_RECORDS && System.currentTimeMillis() < stopAt; i++) {
            if (churnDone.get() && stopAt == Long.MAX_VALUE) {
              stopAt = System.currentTimeMillis() + 1000;
            }
            sent.incrementAndGet();
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
      // Each membership change waits until the group has rebalanced (every
      // live member owns partitions, all 6 owned once), then lets records
      // flow for a second. This holds whatever the broker's
      // group.initial.rebalance.delay.ms is.
      producer.start();
      Member m1 = spawn.apply("m1");
      awaitBalanced(all, "m1 joined");
      Member m2 = spawn.apply("m2");
      awaitBalanced(all, "m2 joined");
      spawn.apply("m3");
      awaitBalanced(all, "m3 joined");
      m1.stopAndJoin(); // leaves mid-stream
      awaitBalanced(all, "m1 left");
      spawn.apply("m4");
      awaitBalanced(all, "m4 joined");
      m2.stopAndJoin();
      awaitBalanced(all, "m2 left");
      spawn.apply("m5");
      awaitBalanced(all, "m5 joined");
      assertTrue(producer.isAlive(), "producer still running after the last membership change");
      churnDone.set(true);

      producer.join(120_000);
      assertTrue(!producer.isAlive(), "producer finished within 120 s");
      if (producerError.get() != null) {
        throw new AssertionError("producer failed", producerError.get());
      }
      int records = sent.get();
      assertTrue(records < MAX_RECORDS, "the churn finished before the producer's record bound");
      assertEquals(records, produced.size(), "records acknowledged");

      Map<TopicPartition, Long> end = K.offsets(admin, topic, PARTITIONS, OffsetSpec.latest());
      assertEquals(records, end.values().stream().mapToLong(Long::longValue).sum(), "sum of log end offsets");

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
        System.out.printf("  %s: %d records, %d commits, %d failed commits, %d revocations%n",
            m.name, m.records.get(), m.commits.get(), m.failedCommits.get(), m.rebalances.get());
      }
      for (Member m : all) {
        assertTrue(m.records.get() > 0, "member " + m.name + " consumed records while it owned partitions");
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
      assertEquals(records, consumed.size(), "distinct partition:offset consumed");

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
