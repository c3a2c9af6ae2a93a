package pipeline_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/require"

	"github.com/eventpipe/eventpipe/api"
	"github.com/eventpipe/eventpipe/broker"
	"github.com/eventpipe/eventpipe/config"
	"github.com/eventpipe/eventpipe/history"
	"github.com/eventpipe/eventpipe/pipeline"
)

const benchRules = `taskTriggerRules:
  - ruleId: "bench-log"
    eventType: "order.created"
    condition: "payload.amount > 100"
    taskName: "log-${payload.orderId}"
    taskType: "log"
    parameters: {message: "order ${payload.orderId} of ${payload.amount}"}
`

// BenchmarkEndToEnd measures the whole path on one broker and, in the same
// run, a Watermill router that only acks the same number of messages on the
// same broker: the baseline the pipeline's cost is read against.
//
//	embedded/pipeline              event → rule → task → log executor (debug) → result
//	embedded/pipeline_metrics_off  the same with metrics.enabled=false
//	embedded/pipeline_history_off  the history benchmark's baseline: history.store none, CPU per event
//	embedded/pipeline_history      the same with the SQLite history on (written in the background)
//	embedded/pipeline_history_written  the same, the clock running until the history is written
//	embedded/raw_router            one handler that acks, no rules, no tasks
//
// ns/op is per event.
func BenchmarkEndToEnd(b *testing.B) {
	b.Run("embedded/pipeline", func(b *testing.B) { benchPipeline(b, true) })
	b.Run("embedded/pipeline_metrics_off", func(b *testing.B) { benchPipeline(b, false) })
	b.Run("embedded/pipeline_history_off", func(b *testing.B) { benchPipelineHistory(b, history.StoreNone, false) })
	b.Run("embedded/pipeline_history", func(b *testing.B) { benchPipelineHistory(b, history.StoreSQLite, false) })
	b.Run("embedded/pipeline_history_written", func(b *testing.B) { benchPipelineHistory(b, history.StoreSQLite, true) })
	b.Run("embedded/raw_router", benchRawRouter)
}

func benchEvents(n int) []api.Ingested {
	out := make([]api.Ingested, n)
	for i := range out {
		id := fmt.Sprintf("bench-%d", i)
		raw := fmt.Sprintf(`{"messageId":%q,"eventType":"order.created","source":"bench",`+
			`"payload":{"orderId":"o-%d","amount":%d},"metadata":{"traceId":"t-%d"}}`, id, i, 200+i%1000, i)
		out[i] = api.Ingested{ID: id, Raw: json.RawMessage(raw)}
	}
	return out
}

func benchPipeline(b *testing.B, metricsOn bool, opts ...pipeline.Option) {
	benchPipelineWith(b, benchSetup{mutate: func(c *config.Config) { c.Metrics.Enabled = metricsOn }, opts: opts})
}

// benchSetup shapes one embedded end-to-end run: mutate adjusts the
// defaults, opts go to pipeline.New; timed runs once the last result is out
// while the clock still runs, after once it stopped.
type benchSetup struct {
	mutate func(*config.Config)
	opts   []pipeline.Option
	timed  func(context.Context, *pipeline.Pipeline)
	after  func(context.Context, *pipeline.Pipeline)
}

// benchPipelineWith runs b.N events through the pipeline on the embedded
// broker, timed from the first publish until the last result, and reports
// the process CPU per event (every goroutine).
func benchPipelineWith(b *testing.B, s benchSetup) {
	dir := b.TempDir()
	rulesFile := filepath.Join(dir, "rules.yaml")
	require.NoError(b, os.WriteFile(rulesFile, []byte(benchRules), 0o600))
	cfg := config.Default()
	cfg.HTTP.Addr = "127.0.0.1:0"
	cfg.Rules.File = rulesFile
	cfg.Dedup.MaxEntries = b.N + 1
	cfg.DataDir = filepath.Join(dir, "data")
	if s.mutate != nil {
		s.mutate(cfg)
	}
	brk := broker.NewEmbedded(cfg.Broker.Embedded, watermill.NopLogger{})
	defer brk.Close()
	debug := slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelDebug}))
	p, err := pipeline.New(cfg, append([]pipeline.Option{pipeline.WithBroker(brk), pipeline.WithLogger(debug)}, s.opts...)...)
	require.NoError(b, err)

	done := make(chan struct{})
	var got atomic.Int64
	results, err := brk.Subscriber(cfg.Topics.Results)
	require.NoError(b, err)
	ctx, cancel := context.WithCancel(b.Context())
	defer cancel()
	ch, err := results.Subscribe(ctx, cfg.Topics.Results)
	require.NoError(b, err)
	go countAcks(ch, &got, int64(b.N), done)

	runDone := make(chan error, 1)
	go func() { runDone <- p.Run(ctx) }()
	<-p.Running()
	events := benchEvents(b.N)

	b.ReportAllocs()
	b.ResetTimer()
	cpu := processCPU()
	for i := 0; i < len(events); i += 500 {
		require.NoError(b, p.PublishEvents(ctx, events[i:min(i+500, len(events))]))
	}
	<-done
	if s.timed != nil {
		s.timed(ctx, p)
	}
	b.StopTimer()
	b.ReportMetric(float64((processCPU()-cpu).Microseconds())/float64(b.N), "cpu-µs/event")
	if s.after != nil {
		s.after(ctx, p)
	}
	cancel()
	require.NoError(b, <-runDone)
}

func benchRawRouter(b *testing.B) {
	brk := broker.NewEmbedded(config.Default().Broker.Embedded, watermill.NopLogger{})
	defer brk.Close()
	router, err := message.NewRouter(message.RouterConfig{}, watermill.NopLogger{})
	require.NoError(b, err)
	var got atomic.Int64
	done := make(chan struct{})
	n := int64(b.N)
	sub, err := brk.Subscriber("business-events")
	require.NoError(b, err)
	router.AddConsumerHandler("ack", "business-events", sub, func(*message.Message) error {
		if got.Add(1) == n {
			close(done)
		}
		return nil
	})
	ctx, cancel := context.WithCancel(b.Context())
	defer cancel()
	go func() { _ = router.Run(ctx) }()
	<-router.Running()
	events := benchEvents(b.N)

	b.ReportAllocs()
	b.ResetTimer()
	pub := brk.Publisher()
	for i := 0; i < len(events); i += 500 {
		batch := events[i:min(i+500, len(events))]
		msgs := make([]*message.Message, len(batch))
		for j, e := range batch {
			msgs[j] = message.NewMessage(e.ID, message.Payload(e.Raw))
		}
		require.NoError(b, pub.Publish("business-events", msgs...))
	}
	<-done
	b.StopTimer()
	require.NoError(b, router.Close())
}

func countAcks(ch <-chan *message.Message, got *atomic.Int64, n int64, done chan<- struct{}) {
	for m := range ch {
		m.Ack()
		if got.Add(1) == n {
			close(done)
		}
	}
}
