package dev.sluice.clients;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AlterConfigOp;
import org.apache.kafka.clients.admin.Config;
import org.apache.kafka.clients.admin.ConfigEntry;
import org.apache.kafka.clients.admin.DescribeClusterResult;
import org.apache.kafka.clients.admin.NewPartitions;
import org.apache.kafka.clients.admin.OffsetSpec;
import org.apache.kafka.clients.admin.RecordsToDelete;
import org.apache.kafka.clients.admin.TopicDescription;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.Node;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.Uuid;
import org.apache.kafka.common.config.ConfigResource;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.extension.ExtendWith;

/** (c) The AdminClient calls a tool or operator makes. */
@ExtendWith(Check.class)
class C_AdminTest {
  @Test
  void adminLifecycle() throws Exception {
    String topic = K.unique("java-c");
    try (Admin admin = K.admin()) {
      // describeCluster
      DescribeClusterResult cluster = admin.describeCluster();
      String clusterId = cluster.clusterId().get(30, TimeUnit.SECONDS);
      assertNotNull(clusterId, "cluster id");
      assertFalse(clusterId.isEmpty(), "cluster id");
      var nodes = cluster.nodes().get(30, TimeUnit.SECONDS);
      assertFalse(nodes.isEmpty(), "brokers listed");
      for (Node n : nodes) {
        assertEquals(K.bootstrap().split(":")[0], n.host(), "advertised host of node " + n.id());
      }
      Node controller = cluster.controller().get(30, TimeUnit.SECONDS);
      assertNotNull(controller, "controller");

      // createTopics with configs
      K.createTopic(admin, topic, 3, Map.of("retention.ms", "123456789", "cleanup.policy", "delete"));
      assertTrue(admin.listTopics().names().get(30, TimeUnit.SECONDS).contains(topic), "listTopics has the topic");

      // describeTopics
      TopicDescription d = admin.describeTopics(List.of(topic)).allTopicNames().get(30, TimeUnit.SECONDS).get(topic);
      assertEquals(topic, d.name());
      assertEquals(3, d.partitions().size(), "partitions");
      assertFalse(d.isInternal(), "internal");
      assertNotEquals(Uuid.ZERO_UUID, d.topicId(), "topic id");
      for (var p : d.partitions()) {
        assertNotNull(p.leader(), "leader of partition " + p.partition());
        assertEquals(1, p.replicas().size(), "replicas of partition " + p.partition());
        assertEquals(1, p.isr().size(), "isr of partition " + p.partition());
      }

      // describeConfigs: the value set at creation, reported as a topic override
      ConfigResource res = new ConfigResource(ConfigResource.Type.TOPIC, topic);
      Config cfg = admin.describeConfigs(List.of(res)).all().get(30, TimeUnit.SECONDS).get(res);
      ConfigEntry retention = cfg.get("retention.ms");
      assertNotNull(retention, "retention.ms described");
      assertEquals("123456789", retention.value(), "retention.ms");
      assertEquals(ConfigEntry.ConfigSource.DYNAMIC_TOPIC_CONFIG, retention.source(), "retention.ms source");
      assertNotNull(cfg.get("cleanup.policy"), "cleanup.policy described");
      assertEquals("delete", cfg.get("cleanup.policy").value());

      // incrementalAlterConfigs, then describe again
      admin.incrementalAlterConfigs(Map.of(res, List.of(
              new AlterConfigOp(new ConfigEntry("retention.ms", "987654321"), AlterConfigOp.OpType.SET))))
          .all().get(30, TimeUnit.SECONDS);
      K.waitFor("altered retention.ms visible", 15_000, () -> {
        try {
          return "987654321".equals(admin.describeConfigs(List.of(res)).all().get(10, TimeUnit.SECONDS)
              .get(res).get("retention.ms").value());
        } catch (Exception e) {
          return false;
        }
      });

      // createPartitions 3 -> 5
      admin.createPartitions(Map.of(topic, NewPartitions.increaseTo(5))).all().get(30, TimeUnit.SECONDS);
      K.waitFor("5 partitions", 15_000, () -> {
        try {
          return admin.describeTopics(List.of(topic)).allTopicNames().get(10, TimeUnit.SECONDS)
              .get(topic).partitions().size() == 5;
        } catch (Exception e) {
          return false;
        }
      });

      // 100 records to partition 4 (a new one) with timestamps base + i s.
      TopicPartition tp = new TopicPartition(topic, 4);
      long base = System.currentTimeMillis() - 3_600_000L;
      try (KafkaProducer<String, String> p = new KafkaProducer<>(K.producerProps())) {
        for (int i = 0; i < 100; i++) {
          p.send(new ProducerRecord<>(topic, 4, base + i * 1000L, "k" + i, "v" + i));
        }
        p.flush();
      }

      // listOffsets: earliest, latest, by timestamp, max timestamp
      assertEquals(0L, K.offsets(admin, topic, 5, OffsetSpec.earliest()).get(tp), "earliest");
      assertEquals(100L, K.offsets(admin, topic, 5, OffsetSpec.latest()).get(tp), "latest");
      assertEquals(0L, K.offsets(admin, topic, 5, OffsetSpec.latest()).get(new TopicPartition(topic, 0)),
          "latest of an empty partition");
      var byTime = admin.listOffsets(Map.of(tp, OffsetSpec.forTimestamp(base + 50_000L)))
          .all().get(30, TimeUnit.SECONDS).get(tp);
      assertEquals(50L, byTime.offset(), "offset for timestamp base+50s");
      assertEquals(base + 50_000L, byTime.timestamp(), "timestamp for timestamp base+50s");
      var between = admin.listOffsets(Map.of(tp, OffsetSpec.forTimestamp(base + 50_500L)))
          .all().get(30, TimeUnit.SECONDS).get(tp);
      assertEquals(51L, between.offset(), "first offset with timestamp >= base+50.5s");
      var after = admin.listOffsets(Map.of(tp, OffsetSpec.forTimestamp(base + 1_000_000L)))
          .all().get(30, TimeUnit.SECONDS).get(tp);
      assertEquals(-1L, after.offset(), "no offset for a timestamp after the last record");
      var maxTs = admin.listOffsets(Map.of(tp, OffsetSpec.maxTimestamp())).all().get(30, TimeUnit.SECONDS).get(tp);
      assertEquals(99L, maxTs.offset(), "offset of max timestamp");

      // deleteRecords before offset 40, then earliest is 40 and a reader starts there
      var lw = admin.deleteRecords(Map.of(tp, RecordsToDelete.beforeOffset(40L))).lowWatermarks()
          .get(tp).get(30, TimeUnit.SECONDS);
      assertEquals(40L, lw.lowWatermark(), "low watermark after deleteRecords");
      assertEquals(40L, K.offsets(admin, topic, 5, OffsetSpec.earliest()).get(tp), "earliest after deleteRecords");
      assertEquals(100L, K.offsets(admin, topic, 5, OffsetSpec.latest()).get(tp), "latest after deleteRecords");
      try (KafkaConsumer<String, String> c = new KafkaConsumer<>(K.consumerProps(null))) {
        c.assign(List.of(tp));
        c.seekToBeginning(List.of(tp));
        long deadline = System.currentTimeMillis() + 30_000;
        ConsumerRecord<String, String> first = null;
        while (first == null && System.currentTimeMillis() < deadline) {
          var rs = c.poll(K.ms(300));
          if (!rs.isEmpty()) {
            first = rs.iterator().next();
          }
        }
        assertNotNull(first, "a record after deleteRecords");
        assertEquals(40L, first.offset(), "first offset read after deleteRecords");
        assertEquals("v40", first.value(), "first value read after deleteRecords");
      }

      // deleteTopics
      admin.deleteTopics(List.of(topic)).all().get(30, TimeUnit.SECONDS);
      K.waitFor("topic gone from listTopics", 30_000, () -> {
        try {
          return !admin.listTopics().names().get(10, TimeUnit.SECONDS).contains(topic);
        } catch (Exception e) {
          return false;
        }
      });
    }
  }
}
