package dev.sluice.clients;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.OffsetSpec;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.record.TimestampType;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.extension.ExtendWith;

/**
 * (a) The default producer (idempotent, acks=all) writes 10,000 keyed records
 * to 6 partitions; a consumer reads them all back.
 */
@ExtendWith(Check.class)
class A_ProduceConsumeTest {
  static final int RECORDS = 10_000;
  static final int KEYS = 50;
  static final int PARTITIONS = 6;

  @Test
  void idempotentProduceThenConsumeInOrder() throws Exception {
    String topic = K.unique("java-a");
    try (Admin admin = K.admin()) {
      K.createTopic(admin, topic, PARTITIONS);
      long baseTs = System.currentTimeMillis() - 60_000;

      // Produce: key k<i % KEYS>, value "<key>:<seq per key>", a header, an explicit CreateTime.
      List<Future<RecordMetadata>> acks = new ArrayList<>(RECORDS);
      try (KafkaProducer<String, String> producer = new KafkaProducer<>(K.producerProps())) {
        for (int i = 0; i < RECORDS; i++) {
          String key = "k" + (i % KEYS);
          ProducerRecord<String, String> r =
              new ProducerRecord<>(topic, null, baseTs + i, key, key + ":" + (i / KEYS));
          r.headers().add("i", Integer.toString(i).getBytes(StandardCharsets.UTF_8));
          acks.add(producer.send(r));
        }
        producer.flush();
      }
      Map<Integer, List<Long>> ackedOffsets = new HashMap<>();
      Map<String, Integer> partitionOfKey = new HashMap<>();
      for (int i = 0; i < RECORDS; i++) {
        RecordMetadata md = acks.get(i).get(60, TimeUnit.SECONDS);
        ackedOffsets.computeIfAbsent(md.partition(), p -> new ArrayList<>()).add(md.offset());
        Integer prev = partitionOfKey.put("k" + (i % KEYS), md.partition());
        assertTrue(prev == null || prev == md.partition(), "a key went to two partitions");
        assertEquals(baseTs + i, md.timestamp(), "ack timestamp of record " + i + " (CreateTime)");
      }
      // Acked offsets per partition are 0..n-1 in send order.
      for (var e : ackedOffsets.entrySet()) {
        List<Long> offs = e.getValue();
        for (int j = 0; j < offs.size(); j++) {
          assertEquals((long) j, offs.get(j), "acked offset #" + j + " of partition " + e.getKey());
        }
      }
      assertTrue(ackedOffsets.size() > 1, "records spread over more than one partition");

      Map<TopicPartition, Long> end = K.offsets(admin, topic, PARTITIONS, OffsetSpec.latest());
      long endSum = end.values().stream().mapToLong(Long::longValue).sum();
      assertEquals(RECORDS, endSum, "sum of log end offsets");

      // Consume everything back with a group-less consumer.
      List<ConsumerRecord<String, String>> got = new ArrayList<>();
      try (KafkaConsumer<String, String> consumer = new KafkaConsumer<>(K.consumerProps(null))) {
        consumer.assign(K.partitions(topic, PARTITIONS));
        consumer.seekToBeginning(K.partitions(topic, PARTITIONS));
        long deadline = System.currentTimeMillis() + 60_000;
        while (got.size() < RECORDS && System.currentTimeMillis() < deadline) {
          for (ConsumerRecord<String, String> r : consumer.poll(K.ms(500))) {
            got.add(r);
          }
        }
        // Nothing extra arrives.
        for (int i = 0; i < 3; i++) {
          assertEquals(0, consumer.poll(K.ms(200)).count(), "records beyond the " + RECORDS + " produced");
        }
      }
      assertEquals(RECORDS, got.size(), "records consumed");

      Map<Integer, Long> nextOffset = new HashMap<>();
      Map<String, Integer> nextSeq = new HashMap<>();
      for (ConsumerRecord<String, String> r : got) {
        long expectOff = nextOffset.getOrDefault(r.partition(), 0L);
        assertEquals(expectOff, r.offset(), "offset in partition " + r.partition());
        nextOffset.put(r.partition(), expectOff + 1);
        int seq = nextSeq.getOrDefault(r.key(), 0);
        assertEquals(r.key() + ":" + seq, r.value(), "value order of key " + r.key());
        nextSeq.put(r.key(), seq + 1);
        assertEquals(partitionOfKey.get(r.key()), r.partition(), "partition of key " + r.key());
        Header h = r.headers().lastHeader("i");
        assertNotNull(h, "header i");
        int i = Integer.parseInt(new String(h.value(), StandardCharsets.UTF_8));
        assertEquals("k" + (i % KEYS), r.key(), "header matches key");
        assertEquals(TimestampType.CREATE_TIME, r.timestampType(), "timestamp type");
        assertEquals(baseTs + i, r.timestamp(), "producer timestamp kept");
      }
      for (int p = 0; p < PARTITIONS; p++) {
        assertEquals(end.get(new TopicPartition(topic, p)), nextOffset.getOrDefault(p, 0L),
            "consumed up to the log end of partition " + p);
      }
      for (int k = 0; k < KEYS; k++) {
        assertEquals(RECORDS / KEYS, nextSeq.get("k" + k), "records of key k" + k);
      }
      K.deleteTopicsQuietly(admin, List.of(topic));
    }
  }
}
