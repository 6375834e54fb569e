package dev.sluice.clients;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.concurrent.TimeUnit;
import java.util.stream.Collectors;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.serialization.LongDeserializer;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.CloseOptions;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.kstream.Grouped;
import org.apache.kafka.streams.kstream.KStream;
import org.apache.kafka.streams.kstream.Produced;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.extension.ExtendWith;

/**
 * (e) Kafka Streams word count, at_least_once: lines -> groupBy word
 * (repartition topic) -> count (changelog topic) -> output topic.
 */
@ExtendWith(Check.class)
class E_StreamsWordCountTest {
  static final String[] WORDS = {"sluice", "kafka", "stream", "count", "word", "gate", "flow", "river"};

  @Test
  void wordCount() throws Exception {
    String app = K.unique("java-e-app");
    String input = K.unique("java-e-lines");
    String output = K.unique("java-e-counts");
    Path stateDir = Files.createTempDirectory("sluice-streams-");
    try (Admin admin = K.admin()) {
      K.createTopic(admin, input, 3);
      K.createTopic(admin, output, 2);

      // 400 lines of 1..6 words each; expected counts computed here.
      Map<String, Long> expected = new HashMap<>();
      List<String> lines = new ArrayList<>();
      java.util.Random rnd = new java.util.Random(42);
      for (int i = 0; i < 400; i++) {
        int n = 1 + rnd.nextInt(6);
        List<String> ws = new ArrayList<>();
        for (int j = 0; j < n; j++) {
          String w = WORDS[rnd.nextInt(WORDS.length)];
          ws.add(j % 2 == 0 ? w : w.toUpperCase());
          expected.merge(w, 1L, Long::sum);
        }
        lines.add(String.join(" ", ws));
      }
      try (KafkaProducer<String, String> p = new KafkaProducer<>(K.producerProps())) {
        for (int i = 0; i < lines.size(); i++) {
          p.send(new ProducerRecord<>(input, "line-" + i, lines.get(i)));
        }
        p.flush();
      }

      StreamsBuilder b = new StreamsBuilder();
      KStream<String, String> src = b.stream(input);
      src.flatMapValues(line -> Arrays.asList(line.toLowerCase().split("\\s+")))
          .groupBy((key, word) -> word, Grouped.as("by-word"))
          .count(org.apache.kafka.streams.kstream.Materialized.as("word-counts"))
          .toStream()
          .to(output, Produced.with(Serdes.String(), Serdes.Long()));

      Properties props = new Properties();
      props.put(StreamsConfig.APPLICATION_ID_CONFIG, app);
      props.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, K.bootstrap());
      props.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, StreamsConfig.AT_LEAST_ONCE);
      props.put(StreamsConfig.STATE_DIR_CONFIG, stateDir.toString());
      props.put(StreamsConfig.DEFAULT_KEY_SERDE_CLASS_CONFIG, Serdes.StringSerde.class);
      props.put(StreamsConfig.DEFAULT_VALUE_SERDE_CLASS_CONFIG, Serdes.StringSerde.class);
      props.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, 500);
      props.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, 1);
      props.put(StreamsConfig.consumerPrefix(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG), "earliest");

      Map<String, Long> last = new HashMap<>();
      KafkaStreams streams = new KafkaStreams(b.build(), props);
      try {
        streams.start();
        try (KafkaConsumer<String, Long> c = new KafkaConsumer<>(outputConsumerProps())) {
          c.assign(K.partitions(output, 2));
          c.seekToBeginning(K.partitions(output, 2));
          long deadline = System.currentTimeMillis() + 120_000;
          while (!last.equals(expected) && System.currentTimeMillis() < deadline) {
            if (streams.state() == KafkaStreams.State.ERROR) {
              throw new AssertionError("streams went to ERROR");
            }
            for (ConsumerRecord<String, Long> r : c.poll(K.ms(500))) {
              last.put(r.key(), r.value());
            }
          }
        }
        assertEquals(KafkaStreams.State.RUNNING, streams.state(), "streams state");
      } finally {
        // Leave the group on close (Streams stays in it by default), so the
        // group can be deleted at once.
        streams.close(CloseOptions.timeout(java.time.Duration.ofSeconds(30))
            .withGroupMembershipOperation(CloseOptions.GroupMembershipOperation.LEAVE_GROUP));
        streams.cleanUp();
      }
      assertEquals(expected, last, "final count per word (last value per key in the output topic)");

      // The internal topics Streams created through the broker.
      Set<String> topics = admin.listTopics().names().get(30, TimeUnit.SECONDS);
      Set<String> internal = topics.stream().filter(t -> t.startsWith(app + "-")).collect(Collectors.toSet());
      assertTrue(internal.stream().anyMatch(t -> t.endsWith("-repartition")), "repartition topic in " + internal);
      assertTrue(internal.stream().anyMatch(t -> t.endsWith("-changelog")), "changelog topic in " + internal);
      String changelog = internal.stream().filter(t -> t.endsWith("-changelog")).findFirst().get();
      var res = new org.apache.kafka.common.config.ConfigResource(
          org.apache.kafka.common.config.ConfigResource.Type.TOPIC, changelog);
      assertEquals("compact", admin.describeConfigs(List.of(res)).all().get(30, TimeUnit.SECONDS)
          .get(res).get("cleanup.policy").value(), "changelog cleanup.policy");

      admin.deleteTopics(internal).all().get(30, TimeUnit.SECONDS);
      K.deleteTopicsQuietly(admin, List.of(input, output));
      admin.deleteConsumerGroups(List.of(app)).all().get(30, TimeUnit.SECONDS);
    } finally {
      try (var s = Files.walk(stateDir)) {
        s.sorted(java.util.Comparator.reverseOrder()).forEach(f -> f.toFile().delete());
      }
    }
  }

  private static Properties outputConsumerProps() {
    Properties p = K.consumerProps(null);
    p.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, LongDeserializer.class.getName());
    return p;
  }
}
