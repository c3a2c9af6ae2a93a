package integration_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"

	"github.com/eventpipe/eventpipe/config"
)

// BenchmarkEndToEnd measures events/s through the whole pipeline on Kafka
// (event published → rule → task published → executed → result
// published), at the default settings and with more partitions (messages
// in flight are bounded by partitions, not handlers). RabbitMQ has its own,
// BenchmarkAMQPEndToEnd.
// One op is one event; the timer covers publishing the b.N events and
// waiting until every task ran. The baseline raw_router runs in the same
// run: a bare Watermill router whose one handler acks each event (one
// publish and one delivery per event, where the pipeline has three and
// two). Run with a fixed count, e.g.
//
//	go test -run '^$' -bench BenchmarkEndToEnd -benchtime 10000x ./integration/
func BenchmarkEndToEnd(b *testing.B) {
	settings := map[string][]struct {
		name   string
		mutate func(*config.Config)
	}{
		"kafka": {
			{name: "default"},
			{name: "partitions_raised", mutate: func(c *config.Config) {
				c.Broker.Kafka.Partitions = map[string]int{c.Topics.Events: 48, c.Topics.Tasks: 48}
			}},
		},
	}
	for _, tgt := range targets() {
		if tgt.name == "amqp" {
			continue // BenchmarkAMQPEndToEnd (bench_amqp_test.go), against a raw amqp091 baseline
		}
		b.Run(tgt.name, func(b *testing.B) {
			if tgt.provider.skip != "" {
				b.Skipf("%s broker unavailable: %s", tgt.name, tgt.provider.skip)
			}
			b.Run("raw_router", func(b *testing.B) { benchRawRouter(b, tgt) })
			for _, s := range settings[tgt.name] {
				b.Run(s.name, func(b *testing.B) {
					h := newHarness(b, tgt, s.mutate, nil)
					events, _ := orderEvents(fmt.Sprintf("bench-%d", b.N), b.N)
					timeout := max(waitLong, time.Duration(b.N)*10*time.Millisecond)
					b.ReportAllocs()
					b.ResetTimer()
					start := time.Now()
					publishEvents(b, h.b.Publisher(), h.cfg.Topics.Events, events, nil)
					h.rec.waitDistinct(b, b.N, timeout)
					elapsed := time.Since(start)
					b.StopTimer()
					b.ReportMetric(float64(b.N)/elapsed.Seconds(), "events/s")
				})
			}
		})
	}
}

func benchRawRouter(b *testing.B, tgt target) {
	cfg := newConfig(b, tgt)
	brk := tgt.open(b, cfg)
	router, err := message.NewRouter(message.RouterConfig{}, watermill.NopLogger{})
	require.NoError(b, err)
	sub, err := brk.Subscriber(cfg.Topics.Events)
	require.NoError(b, err)
	var got atomic.Int64
	done := make(chan struct{})
	router.AddConsumerHandler("raw", cfg.Topics.Events, sub, func(*message.Message) error {
		if got.Add(1) == int64(b.N) {
			close(done)
		}
		return nil
	})
	go func() { _ = router.Run(context.Background()) }()
	defer router.Close()
	<-router.Running()
	events, _ := orderEvents(fmt.Sprintf("raw-%d", b.N), b.N)
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	publishEvents(b, brk.Publisher(), cfg.Topics.Events, events, nil)
	select {
	case <-done:
	case <-time.After(max(waitLong, time.Duration(b.N)*10*time.Millisecond)):
		b.Fatalf("raw router consumed %d of %d events", got.Load(), b.N)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "events/s")
}
