package dev.sluice.clients;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;

import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.consumer.OffsetAndMetadata;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.TopicPartition;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.extension.ExtendWith;

/** (d) Offsets committed by one group member are what a new member of the group sees. */
@ExtendWith(Check.class)
class D_CommittedOffsetsTest {
  @Test
  void newConsumerSeesCommittedOffsets() throws Exception {
    String topic = K.unique("java-d");
    String group = K.unique("java-d-group");
    try (Admin admin = K.admin()) {
      K.createTopic(admin, topic, 3);
      try (KafkaProducer<String, String> p = new KafkaProducer<>(K.producerProps())) {
        for (int i = 0; i < 300; i++) {
          p.send(new ProducerRecord<>(topic, i % 3, "k" + i, "v" + i));
        }
        p.flush();
      }
      TopicPartition p0 = new TopicPartition(topic, 0);
      TopicPartition p1 = new TopicPartition(topic, 1);
      TopicPartition p2 = new TopicPartition(topic, 2);
      Map<TopicPartition, OffsetAndMetadata> commit = Map.of(
          p0, new OffsetAndMetadata(10, "meta-0"),
          p1, new OffsetAndMetadata(57, "meta-1"),
          p2, new OffsetAndMetadata(99, ""));

      // First member: join the group, consume a little, commit chosen offsets.
      try (KafkaConsumer<String, String> c = new KafkaConsumer<>(K.consumerProps(group))) {
        c.subscribe(List.of(topic));
        long deadline = System.currentTimeMillis() + 30_000;
        while (c.assignment().size() < 3 && System.currentTimeMillis() < deadline) {
          c.poll(K.ms(200));
        }
        assertEquals(3, c.assignment().size(), "first member owns all partitions");
        c.commitSync(commit, K.ms(15_000));
        assertEquals(commit, c.committed(Set.of(p0, p1, p2), K.ms(15_000)), "committed, as seen by the committer");
      }

      // A new member of the same group: committed() and its start positions.
      try (KafkaConsumer<String, String> c = new KafkaConsumer<>(K.consumerProps(group))) {
        Map<TopicPartition, OffsetAndMetadata> seen = c.committed(Set.of(p0, p1, p2), K.ms(15_000));
        for (var e : commit.entrySet()) {
          OffsetAndMetadata s = seen.get(e.getKey());
          assertNotNull(s, "committed offset of " + e.getKey());
          assertEquals(e.getValue().offset(), s.offset(), "committed offset of " + e.getKey());
          assertEquals(e.getValue().metadata(), s.metadata(), "committed metadata of " + e.getKey());
        }
        c.subscribe(List.of(topic));
        Map<Integer, ConsumerRecord<String, String>> firstSeen = new HashMap<>();
        long deadline = System.currentTimeMillis() + 30_000;
        while (firstSeen.size() < 3 && System.currentTimeMillis() < deadline) {
          for (ConsumerRecord<String, String> r : c.poll(K.ms(200))) {
            firstSeen.putIfAbsent(r.partition(), r);
          }
        }
        for (var e : commit.entrySet()) {
          ConsumerRecord<String, String> r = firstSeen.get(e.getKey().partition());
          assertNotNull(r, "a record from " + e.getKey());
          assertEquals(e.getValue().offset(), r.offset(), "first offset the new member reads from " + e.getKey());
          long i = e.getValue().offset() * 3 + e.getKey().partition();
          assertEquals("v" + i, r.value(), "value at the committed offset of " + e.getKey());
        }
      }

      // The admin view agrees.
      Map<TopicPartition, OffsetAndMetadata> viaAdmin =
          admin.listConsumerGroupOffsets(group).partitionsToOffsetAndMetadata().get(30, TimeUnit.SECONDS);
      for (var e : commit.entrySet()) {
        assertEquals(e.getValue().offset(), viaAdmin.get(e.getKey()).offset(), "admin view of " + e.getKey());
      }
      admin.deleteConsumerGroups(List.of(group)).all().get(30, TimeUnit.SECONDS);
      K.deleteTopicsQuietly(admin, List.of(topic));
    }
  }
}
