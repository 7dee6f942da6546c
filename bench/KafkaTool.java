// `KafkaTool count|delete BROKERS TOPIC`, used by the bench scripts through `kafka_tool` in
// bench/lib.sh: prints "PARTITIONS MESSAGES" (high minus low watermarks), or deletes the topic.
// Run with the kafka-clients jars deploy/local/kafka.sh cached (Java single-file launch).
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.OffsetSpec;
import org.apache.kafka.clients.admin.TopicDescription;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.TopicPartitionInfo;

public class KafkaTool {
  public static void main(String[] args) throws Exception {
    Properties p = new Properties();
    p.put("bootstrap.servers", args[1]);
    String topic = args[2];
    try (Admin admin = Admin.create(p)) {
      if (args[0].equals("delete")) {
        admin.deleteTopics(List.of(topic)).all().get(60, TimeUnit.SECONDS);
        return;
      }
      TopicDescription d = admin.describeTopics(List.of(topic)).allTopicNames().get(60, TimeUnit.SECONDS).get(topic);
      Map<TopicPartition, OffsetSpec> latest = new HashMap<>();
      Map<TopicPartition, OffsetSpec> earliest = new HashMap<>();
      for (TopicPartitionInfo part : d.partitions()) {
        latest.put(new TopicPartition(topic, part.partition()), OffsetSpec.latest());
        earliest.put(new TopicPartition(topic, part.partition()), OffsetSpec.earliest());
      }
      long messages = 0;
      for (var e : admin.listOffsets(latest).all().get(60, TimeUnit.SECONDS).values()) messages += e.offset();
      for (var e : admin.listOffsets(earliest).all().get(60, TimeUnit.SECONDS).values()) messages -= e.offset();
      System.out.println(d.partitions().size() + " " + messages);
    }
  }
}
