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

  /** Checks the broker's reason reached the client, where the broker is Sluice. */
  private static void saysWhy(Throwable cause, String reason) {
    if (K.brokerIsSluice()) {
      assertTrue(cause.getMessage().contains(reason),
          "the broker's reason reaches the client: " + cause.getMessage());
    } else {
      System.out.println("refused with: " + cause.getMessage());
    }
  }

  /** Sends one record and returns the failure's cause. */
  private static Throwable refused(KafkaProducer<String, String> producer, ProducerRecord<String, String> r) {
    ExecutionException e =
        assertThrows(ExecutionException.class, () -> producer.send(r).get(60, TimeUnit.SECONDS));
    return e.getCause();
  }

  @Test
  void aRecordOverTheTopicsLimitIsRefusedWithTheLimit() throws Exception {
    String topic = K.unique("java-g-large");
    try (Admin admin = K.admin()) {
      K.createTopic(admin, topic, 1, Map.of("max.message.bytes", "200"));
      try (KafkaProducer<String, String> producer = new KafkaProducer<>(K.producerProps())) {
        Throwable cause = refused(producer, new ProducerRecord<>(topic, 0, "k", "v".repeat(1024)));
        assertInstanceOf(RecordTooLargeException.class, cause, "the exception of MESSAGE_TOO_LARGE");
        saysWhy(cause, "exceeds max.message.bytes 200");
        RecordMetadata md = producer.send(new ProducerRecord<>(topic, 0, "k", "small")).get(60, TimeUnit.SECONDS);
        assertEquals(0L, md.offset(), "the refused record took no offset");
      }
      K.deleteTopicsQuietly(admin, List.of(topic));
    }
  }

  @Test
  void aKeylessRecordOnACompactedTopicIsRefusedWithTheReason() throws Exception {
    String topic = K.unique("java-g-compact");
    try (Admin admin = K.admin()) {
      K.createTopic(admin, topic, 1, Map.of("cleanup.policy", "compact"));
      try (KafkaProducer<String, String> producer = new KafkaProducer<>(K.producerProps())) {
        Throwable cause = refused(producer, new ProducerRecord<>(topic, 0, null, "no key"));
        assertInstanceOf(InvalidRecordException.class, cause, "the exception of INVALID_RECORD");
        saysWhy(cause, "a compacted topic needs keys");
        RecordMetadata md = producer.send(new ProducerRecord<>(topic, 0, "k", "keyed")).get(60, TimeUnit.SECONDS);
        assertEquals(0L, md.offset(), "the refused record took no offset");
      }
      K.deleteTopicsQuietly(admin, List.of(topic));
    }
  }
}
