package dev.sluice.clients;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.File;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.OffsetSpec;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.extension.ExtendWith;

/**
 * (f) Kafka's own perf tools, run as separate JVMs from the Apache Kafka jars
 * that scripts/kafka-peer.sh caches (KAFKA_LIBS).
 */
@ExtendWith(Check.class)
class F_PerfToolsTest {
  static final int RECORDS = 100_000;

  static String libs() {
    String l = System.getenv("KAFKA_LIBS");
    if (l == null || l.isBlank()) {
      String cache = System.getenv().getOrDefault("SLUICE_CACHE", System.getProperty("user.home") + "/.cache/sluice");
      l = cache + "/kafka-" + System.getenv().getOrDefault("KAFKA_VERSION", "4.3.1") + "/libs";
    }
    return l;
  }

  static String run(long timeoutS, String... args) throws Exception {
    List<String> cmd = new ArrayList<>(List.of("java", "-Xmx512m", "-cp", libs() + File.separator + "*"));
    cmd.addAll(Arrays.asList(args));
    Process p = new ProcessBuilder(cmd).redirectErrorStream(true).start();
    if (!p.waitFor(timeoutS, TimeUnit.SECONDS)) {
      p.destroyForcibly();
      throw new AssertionError(args[0] + " did not finish within " + timeoutS + " s");
    }
    String out = new String(p.getInputStream().readAllBytes(), StandardCharsets.UTF_8);
    assertEquals(0, p.exitValue(), args[0] + " exit status; output:\n" + out);
    return out;
  }

  @Test
  void producerAndConsumerPerformance() throws Exception {
    assertTrue(new File(libs()).isDirectory(), "Apache Kafka jars at " + libs() + " (scripts/kafka-peer.sh fetch)");
    String topic = K.unique("java-f");
    try (Admin admin = K.admin()) {
      K.createTopic(admin, topic, 3);

      String prod = run(240, "org.apache.kafka.tools.ProducerPerformance",
          "--topic", topic, "--num-records", Integer.toString(RECORDS), "--record-size", "100",
          "--throughput", "-1", "--producer-props", "bootstrap.servers=" + K.bootstrap(), "acks=all");
      String summary = prod.lines().filter(l -> l.contains("records sent")).reduce((a, b) -> b).orElse("");
      System.out.println("  ProducerPerformance: " + summary.trim());
      assertTrue(summary.startsWith(RECORDS + " records sent"), "ProducerPerformance summary: " + prod);

      long end = K.offsets(admin, topic, 3, OffsetSpec.latest()).values().stream().mapToLong(Long::longValue).sum();
      assertEquals(RECORDS, end, "sum of log end offsets after ProducerPerformance");

      String cons = run(240, "org.apache.kafka.tools.ConsumerPerformance",
          "--bootstrap-server", K.bootstrap(), "--topic", topic, "--num-records", Integer.toString(RECORDS),
          "--timeout", "60000", "--group", K.unique("java-f-group"));
      // A CSV header then one line: ..., data.consumed.in.nMsg, ...
      List<String> lines = cons.lines().filter(l -> l.contains(",")).toList();
      int header = -1;
      for (int i = 0; i < lines.size(); i++) {
        if (lines.get(i).contains("data.consumed.in.nMsg")) {
          header = i;
        }
      }
      assertTrue(header >= 0 && header + 1 < lines.size(), "ConsumerPerformance report: " + cons);
      List<String> cols = Arrays.stream(lines.get(header).split(",")).map(String::trim).toList();
      String[] vals = lines.get(header + 1).split(",");
      long n = Long.parseLong(vals[cols.indexOf("data.consumed.in.nMsg")].trim());
      System.out.println("  ConsumerPerformance: " + lines.get(header + 1).trim());
      assertEquals(RECORDS, n, "records ConsumerPerformance reports");
      K.deleteTopicsQuietly(admin, List.of(topic));
    }
  }
}
