package middleware

import (
	"strconv"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/eventpipe/eventpipe/config"
	"github.com/eventpipe/eventpipe/metrics"
)

// BenchmarkChain measures the chain's own cost around a handler that
// succeeds at once: bare handler (baseline), chain with metrics off, on,
// and with dedup.
func BenchmarkChain(b *testing.B) {
	pub := gochannel.NewGoChannel(gochannel.Config{}, nil)
	defer pub.Close()
	handler := func(*message.Message) ([]*message.Message, error) { return nil, nil }
	base := ChainConfig{
		HandlerName:     "trigger",
		PoisonPublisher: pub,
		PoisonTopic:     "business-events.dlq",
		Retry:           config.Default().Retry,
		Timeout:         config.Default().Trigger.Timeout,
	}
	withMetrics := base
	withMetrics.Metrics = metrics.New(prometheus.NewRegistry())
	withDedup := withMetrics
	withDedup.DedupKey = func(m *message.Message) string { return m.UUID }

	b.Run("baseline", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_, _ = handler(message.NewMessage("m", nil))
		}
	})
	for _, bc := range []struct {
		name string
		cfg  ChainConfig
	}{
		{name: "metrics_off", cfg: base},
		{name: "metrics_on", cfg: withMetrics},
		{name: "metrics_on_dedup", cfg: withDedup},
	} {
		b.Run(bc.name, func(b *testing.B) {
			if bc.cfg.DedupKey != nil {
				store, err := NewMemoryDedupStore(1<<16, time.Hour)
				if err != nil {
					b.Fatal(err)
				}
				bc.cfg.Dedup = store
			}
			chain, err := Chain(bc.cfg)
			if err != nil {
				b.Fatal(err)
			}
			h := Apply(handler, chain)
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				// A fresh message per delivery, as a subscriber gives; distinct
				// keys so dedup never short-cuts the handler.
				i++
				if _, err := h(message.NewMessage(strconv.Itoa(i), nil)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
