// Package clienttests drives franz-go (kgo, kadm) against the broker named by
// KAFKA_BOOTSTRAP. Run through scripts/client-tests.sh.
package clienttests

import (
	"context"
	"fmt"
	"math/rand"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

func bootstrap() []string {
	b := os.Getenv("KAFKA_BOOTSTRAP")
	if b == "" {
		b = "127.0.0.1:9092"
	}
	return strings.Split(b, ",")
}

// unique returns a name unique to this run, so reruns don't collide.
func unique(prefix string) string {
	return fmt.Sprintf("%s-%d-%08x", prefix, time.Now().UnixMilli(), rand.Uint32())
}

func newClient(t *testing.T, opts ...kgo.Opt) *kgo.Client {
	t.Helper()
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(bootstrap()...)}, opts...)...)
	if err != nil {
		t.Fatalf("new client: %v", err)
	}
	return cl
}

func createTopic(t *testing.T, adm *kadm.Client, topic string, partitions int32, configs map[string]*string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := adm.CreateTopic(ctx, partitions, 1, configs, topic)
	if err != nil || resp.Err != nil {
		t.Fatalf("create topic %s: %v / %v", topic, err, resp.Err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		td, err := adm.ListTopics(ctx, topic)
		if err == nil && td.Has(topic) && td[topic].Err == nil && len(td[topic].Partitions) == int(partitions) {
			ok := true
			for _, p := range td[topic].Partitions {
				ok = ok && p.Leader >= 0 && p.Err == nil
			}
			if ok {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("topic %s has no leaders after 30 s (err %v)", topic, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func deleteTopic(t *testing.T, adm *kadm.Client, topic string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := adm.DeleteTopics(ctx, topic); err != nil {
		t.Logf("cleanup: delete %s: %v", topic, err)
	}
}

// TestProduceConsumeGroup: the default (idempotent) producer writes keyed
// records; a group consumer reads them back in order and commits the end.
func TestProduceConsumeGroup(t *testing.T) {
	const partitions = 4
	const records = 4000
	const keys = 40
	topic := unique("go-a")
	group := unique("go-a-g")
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()

	admCl := newClient(t)
	defer admCl.Close()
	adm := kadm.NewClient(admCl)
	createTopic(t, adm, topic, partitions, nil)

	prod := newClient(t, kgo.DefaultProduceTopic(topic), kgo.RequiredAcks(kgo.AllISRAcks()))
	base := time.Now().Add(-time.Minute).Truncate(time.Millisecond)
	recs := make([]*kgo.Record, 0, records)
	for i := 0; i < records; i++ {
		k := fmt.Sprintf("k%d", i%keys)
		recs = append(recs, &kgo.Record{
			Key:       []byte(k),
			Value:     []byte(fmt.Sprintf("%s:%d", k, i/keys)),
			Timestamp: base.Add(time.Duration(i) * time.Millisecond),
			Headers:   []kgo.RecordHeader{{Key: "i", Value: []byte(strconv.Itoa(i))}},
		})
	}
	if err := prod.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		t.Fatalf("produce: %v", err)
	}
	if id, _, err := prod.ProducerID(ctx); err != nil || id < 0 {
		t.Errorf("producer id %d (%v): the default producer should be idempotent", id, err)
	}
	prod.Close()
	nextAck := map[int32]int64{}
	for i, r := range recs {
		if r.Offset != nextAck[r.Partition] {
			t.Fatalf("record %d acked at %d:%d, want offset %d", i, r.Partition, r.Offset, nextAck[r.Partition])
		}
		nextAck[r.Partition]++
	}

	ends, err := adm.ListEndOffsets(ctx, topic)
	if err != nil {
		t.Fatalf("list end offsets: %v", err)
	}
	var total int64
	ends.Each(func(o kadm.ListedOffset) {
		if o.Err != nil {
			t.Errorf("end offset of %d: %v", o.Partition, o.Err)
		}
		if o.Offset != nextAck[o.Partition] {
			t.Errorf("end offset of %d = %d, want %d", o.Partition, o.Offset, nextAck[o.Partition])
		}
		total += o.Offset
	})
	if total != records {
		t.Fatalf("sum of end offsets %d, want %d", total, records)
	}

	cons := newClient(t,
		kgo.ConsumerGroup(group),
		kgo.ConsumeTopics(topic),
		kgo.DisableAutoCommit(),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
	)
	nextOff := map[int32]int64{}
	nextSeq := map[string]int{}
	got := 0
	for got < records {
		pctx, pcancel := context.WithTimeout(ctx, 5*time.Second)
		fs := cons.PollFetches(pctx)
		pcancel()
		if ctx.Err() != nil {
			t.Fatalf("consumed %d of %d records before the deadline", got, records)
		}
		fs.EachError(func(tp string, p int32, err error) {
			if err != context.DeadlineExceeded {
				t.Fatalf("fetch %s/%d: %v", tp, p, err)
			}
		})
		fs.EachRecord(func(r *kgo.Record) {
			got++
			if r.Offset != nextOff[r.Partition] {
				t.Fatalf("partition %d: offset %d, want %d", r.Partition, r.Offset, nextOff[r.Partition])
			}
			nextOff[r.Partition]++
			k := string(r.Key)
			want := fmt.Sprintf("%s:%d", k, nextSeq[k])
			if string(r.Value) != want {
				t.Fatalf("value %q, want %q (order of key %s)", r.Value, want, k)
			}
			nextSeq[k]++
			if len(r.Headers) != 1 || r.Headers[0].Key != "i" {
				t.Fatalf("headers %v", r.Headers)
			}
			i, _ := strconv.Atoi(string(r.Headers[0].Value))
			if !r.Timestamp.Equal(base.Add(time.Duration(i) * time.Millisecond)) {
				t.Fatalf("record %d: timestamp %v, want the producer's %v", i, r.Timestamp, base.Add(time.Duration(i)*time.Millisecond))
			}
		})
	}
	if got != records {
		t.Fatalf("consumed %d records, want %d", got, records)
	}
	for k, n := range nextSeq {
		if n != records/keys {
			t.Errorf("key %s: %d records, want %d", k, n, records/keys)
		}
	}
	if err := cons.CommitUncommittedOffsets(ctx); err != nil {
		t.Fatalf("commit: %v", err)
	}
	cons.Close() // leaves the group

	committed, err := adm.FetchOffsets(ctx, group)
	if err != nil {
		t.Fatalf("fetch offsets: %v", err)
	}
	ends.Each(func(o kadm.ListedOffset) {
		c, ok := committed.Lookup(topic, o.Partition)
		if !ok || c.Err != nil || c.At != o.Offset {
			t.Errorf("partition %d: committed %+v, want %d", o.Partition, c, o.Offset)
		}
	})
	// The group is empty after the member left.
	dg, err := adm.DescribeGroups(ctx, group)
	if err != nil || dg.Error() != nil {
		t.Fatalf("describe group: %v / %v", err, dg.Error())
	}
	if g := dg[group]; g.State != "Empty" || len(g.Members) != 0 {
		t.Errorf("group after close: state %q, %d members; want Empty, 0", g.State, len(g.Members))
	}
	deleteTopic(t, adm, topic)
}

// TestAdminOffsets: kadm creates a topic with configs and lists offsets
// (start, end, by time).
func TestAdminOffsets(t *testing.T) {
	topic := unique("go-b")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cl := newClient(t)
	defer cl.Close()
	adm := kadm.NewClient(cl)
	retention := "7200000"
	createTopic(t, adm, topic, 2, map[string]*string{"retention.ms": &retention})

	rc, err := adm.DescribeTopicConfigs(ctx, topic)
	if err != nil {
		t.Fatalf("describe configs: %v", err)
	}
	c, err := rc.On(topic, nil)
	if err != nil || c.Err != nil {
		t.Fatalf("configs of %s: %v / %v", topic, err, c.Err)
	}
	found := false
	for _, kv := range c.Configs {
		if kv.Key == "retention.ms" {
			found = true
			if kv.MaybeValue() != retention {
				t.Errorf("retention.ms = %q, want %q", kv.MaybeValue(), retention)
			}
		}
	}
	if !found {
		t.Errorf("retention.ms not described")
	}

	base := time.Now().Add(-time.Hour).Truncate(time.Millisecond)
	prod := newClient(t, kgo.DefaultProduceTopic(topic), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	var recs []*kgo.Record
	for i := 0; i < 50; i++ {
		recs = append(recs, &kgo.Record{Partition: 1, Value: []byte(strconv.Itoa(i)), Timestamp: base.Add(time.Duration(i) * time.Second)})
	}
	if err := prod.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		t.Fatalf("produce: %v", err)
	}
	prod.Close()

	check := func(what string, l kadm.ListedOffsets, err error, p int32, want int64) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		o, ok := l.Lookup(topic, p)
		if !ok || o.Err != nil || o.Offset != want {
			t.Errorf("%s of partition %d: %+v, want offset %d", what, p, o, want)
		}
	}
	l, err := adm.ListStartOffsets(ctx, topic)
	check("start offset", l, err, 1, 0)
	l, err = adm.ListEndOffsets(ctx, topic)
	check("end offset", l, err, 1, 50)
	check("end offset", l, err, 0, 0)
	l, err = adm.ListOffsetsAfterMilli(ctx, base.Add(20*time.Second).UnixMilli(), topic)
	check("offset after base+20s", l, err, 1, 20)
	l, err = adm.ListOffsetsAfterMilli(ctx, base.Add(20500*time.Millisecond).UnixMilli(), topic)
	check("offset after base+20.5s", l, err, 1, 21)
	deleteTopic(t, adm, topic)
}
