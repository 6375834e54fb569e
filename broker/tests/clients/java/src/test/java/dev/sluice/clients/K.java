package dev.sluice.clients;

import java.time.Duration;
import java.util.ArrayList;
import java.util.Collection;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.UUID;
import java.util.concurrent.TimeUnit;
import java.util.function.BooleanSupplier;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.admin.OffsetSpec;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.common.serialization.StringSerializer;

/** Shared helpers: the bootstrap address, unique names, client configs. */
final class K {
  private K() {}

  static String bootstrap() {
    String b = System.getenv("KAFKA_BOOTSTRAP");
    if (b == null || b.isBlank() || b.startsWith("${")) {
      b = "127.0.0.1:9092";
    }
    return b;
  }

  /**
   * Whether the broker under test is Sluice ({@code CLIENT_TESTS_BROKER=sluice}, which
   * scripts/test sets): checks of Sluice's own texts (error messages) run only then, so
   * the suite still passes against Apache Kafka as the reference.
   */
  static boolean brokerIsSluice() {
    return "sluice".equals(System.getenv("CLIENT_TESTS_BROKER"));
  }

  /** A name unique to this run, so reruns against the same broker don't collide. */
  static String unique(String prefix) {
    return prefix + "-" + System.currentTimeMillis() + "-" + UUID.randomUUID().toString().substring(0, 8);
  }

  static Admin admin() {
    Properties p = new Properties();
    p.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap());
    p.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, 30_000);
    p.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, 15_000);
    return Admin.create(p);
  }

  /** Producer with the client's defaults (idempotent, acks=all) and string serdes. */
  static Properties producerProps() {
    Properties p = new Properties();
    p.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap());
    p.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
    p.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
    p.put(ProducerConfig.DELIVERY_TIMEOUT_MS_CONFIG, 60_000);
    return p;
  }

  static Properties consumerProps(String group) {
    Properties p = new Properties();
    p.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap());
    p.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
    p.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
    p.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
    p.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
    if (group != null) {
      p.put(ConsumerConfig.GROUP_ID_CONFIG, group);
      p.put(ConsumerConfig.GROUP_PROTOCOL_CONFIG, "classic");
    }
    return p;
  }

  static void createTopic(Admin admin, String topic, int partitions) throws Exception {
    createTopic(admin, topic, partitions, Map.of());
  }

  static void createTopic(Admin admin, String topic, int partitions, Map<String, String> configs)
      throws Exception {
    NewTopic t = new NewTopic(topic, partitions, (short) 1).configs(configs);
    admin.createTopics(List.of(t)).all().get(30, TimeUnit.SECONDS);
    // Wait until every partition has a leader in the metadata.
    waitFor("topic " + topic + " has leaders", 30_000, () -> {
      try {
        var d = admin.describeTopics(List.of(topic)).allTopicNames().get(10, TimeUnit.SECONDS).get(topic);
        return d.partitions().size() == partitions && d.partitions().stream().allMatch(x -> x.leader() != null);
      } catch (Exception e) {
        return false;
      }
    });
  }

  static void deleteTopicsQuietly(Admin admin, Collection<String> topics) {
    try {
      admin.deleteTopics(topics).all().get(30, TimeUnit.SECONDS);
    } catch (Exception e) {
      System.err.println("cleanup: could not delete " + topics + ": " + e);
    }
  }

  static Map<TopicPartition, Long> offsets(Admin admin, String topic, int partitions, OffsetSpec spec)
      throws Exception {
    Map<TopicPartition, OffsetSpec> req = new HashMap<>();
    for (int i = 0; i < partitions; i++) {
      req.put(new TopicPartition(topic, i), spec);
    }
    Map<TopicPartition, Long> out = new HashMap<>();
    admin.listOffsets(req).all().get(30, TimeUnit.SECONDS).forEach((tp, info) -> out.put(tp, info.offset()));
    return out;
  }

  static List<TopicPartition> partitions(String topic, int n) {
    List<TopicPartition> l = new ArrayList<>();
    for (int i = 0; i < n; i++) {
      l.add(new TopicPartition(topic, i));
    }
    return l;
  }

  static void waitFor(String what, long timeoutMs, BooleanSupplier cond) throws InterruptedException {
    long deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(timeoutMs);
    while (!cond.getAsBoolean()) {
      if (System.nanoTime() > deadline) {
        throw new AssertionError("timed out after " + timeoutMs + " ms waiting for: " + what);
      }
      Thread.sleep(200);
    }
  }

  static Duration ms(long m) {
    return Duration.ofMillis(m);
  }
}
