// Command codecs reads a topic from the start with franz-go and prints, per
// record, "PARTITION OFFSET CODEC VALUE", where CODEC is the compression of
// the batch the record came in (none, gzip, snappy, lz4, zstd). The kcat
// suite uses it to check that batches keep the compression the producer chose.
//
//	go run ./cmd/codecs -topic T -n COUNT
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

func main() {
	topic := flag.String("topic", "", "topic to read")
	n := flag.Int("n", 0, "records to read (stops at this count)")
	timeout := flag.Duration("timeout", 30*time.Second, "give up after this long")
	flag.Parse()
	b := os.Getenv("KAFKA_BOOTSTRAP")
	if b == "" {
		b = "127.0.0.1:9092"
	}
	cl, err := kgo.NewClient(
		kgo.SeedBrokers(strings.Split(b, ",")...),
		kgo.ConsumeTopics(*topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
	)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	names := map[uint8]string{0: "none", 1: "gzip", 2: "snappy", 3: "lz4", 4: "zstd"}
	got := 0
	for got < *n {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			fmt.Fprintf(os.Stderr, "read %d of %d records before the timeout\n", got, *n)
			os.Exit(1)
		}
		fs.EachError(func(t string, p int32, err error) {
			fmt.Fprintf(os.Stderr, "fetch %s/%d: %v\n", t, p, err)
			os.Exit(1)
		})
		fs.EachRecord(func(r *kgo.Record) {
			got++
			fmt.Printf("%d %d %s %s\n", r.Partition, r.Offset, names[r.Attrs.CompressionType()], r.Value)
		})
	}
}
