package dev.sluice.clients;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.List;
import java.util.Map;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.InvalidRecordException;
import org.apache.kafka.common.errors.RecordTooLargeException;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.extension.ExtendWith;

/**
 * (g) A record the broker refuses fails its send with the exception its
 * error code names, and the same producer's next record still goes through
 * at the offset the refused one did not take. Against Sluice the exception
 * also carries the broker's reason (Produce's error_message); Apache Kafka
 * sends none for a record over the limit, and its own text for a keyless one.
 */
@ExtendWith(Check.class)
class G_RefusalsTest {

  /**
   * On a fresh one-partition topic with {@code config}: sending a record of
   * {@code key} (null: none) and {@code value} fails with {@code expected} (and, against Sluice, a message containing
   * {@code reason}); the same producer's next record is then acknowledged at
   * offset 0, so the refused one took none.
   */
  private static void refusedThenNextAtZero(String prefix, Map<String, String> config,
      String key, String value, Class<? extends Throwable> expected, String reason)
      throws Exception {
    String topic = K.unique(prefix);
    try (Admin admin = K.admin()) {
      K.createTopic(admin, topic, 1, config);
      try (KafkaProducer<String, String> producer = new KafkaProducer<>(K.producerProps())) {
        ProducerRecord<String, String> r = new ProducerRecord<>(topic, 0, key, value);
        ExecutionException e =
            assertThrows(ExecutionException.class, () -> producer.send(r).get(60, TimeUnit.SECONDS));
        Throwable cause = e.getCause();
        assertInstanceOf(expected, cause, "the exception of the broker's error code");
        if (K.brokerIsSluice()) {
          assertTrue(cause.getMessage().contains(reason),
              "the broker's reason reaches the client: " + cause.getMessage());
        } else {
          System.out.println("refused with: " + cause.getMessage());
        }
        RecordMetadata md =
            producer.send(new ProducerRecord<>(topic, 0, "k", "next")).get(60, TimeUnit.SECONDS);
        assertEquals(0L, md.offset(), "the refused record took no offset");
      }
      K.deleteTopicsQuietly(admin, List.of(topic));
    }
  }

  @Test
  void aRecordOverTheTopicsLimitIsRefusedWithTheLimit() throws Exception {
    refusedThenNextAtZero("java-g-large", Map.of("max.message.bytes", "200"),
        "k", "v".repeat(1024), RecordTooLargeException.class,
        "exceeds max.message.bytes 200");
  }

  @Test
  void aKeylessRecordOnACompactedTopicIsRefusedWithTheReason() throws Exception {
    refusedThenNextAtZero("java-g-compact", Map.of("cleanup.policy", "compact"),
        null, "no key", InvalidRecordException.class,
        "a compacted topic needs keys");
  }
}
