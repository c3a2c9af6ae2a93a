package pipeline_test

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/stretchr/testify/require"

	"github.com/eventpipe/eventpipe/broker"
	"github.com/eventpipe/eventpipe/config"
	"github.com/eventpipe/eventpipe/pipeline"
)

// benchPipelineHistory is embedded/pipeline with the history in store
// (none for the baseline of the same code path; sqlite as `make run`
// ships it), reporting CPU per event too (process CPU time: every
// goroutine, the writer's included). With untilWritten the clock stops only once the
// history holds every record (FlushHistory), so the writer's work is all
// counted; without, it stops when the last result is out, as for
// embedded/pipeline, and the writer's work so far competes for the CPU.
// Records dropped for a full queue are reported as dropped/op.
func benchPipelineHistory(b *testing.B, store string, untilWritten bool) {
	dir := b.TempDir()
	rulesFile := filepath.Join(dir, "rules.yaml")
	require.NoError(b, os.WriteFile(rulesFile, []byte(benchRules), 0o600))
	cfg := config.Default()
	cfg.HTTP.Addr = "127.0.0.1:0"
	cfg.Rules.File = rulesFile
	cfg.Dedup.MaxEntries = b.N + 1
	cfg.DataDir = filepath.Join(dir, "data")
	cfg.History.Store = store
	brk := broker.NewEmbedded(cfg.Broker.Embedded, watermill.NopLogger{})
	defer brk.Close()
	debug := slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelDebug}))
	p, err := pipeline.New(cfg, pipeline.WithBroker(brk), pipeline.WithLogger(debug))
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
	cpu := processCPU()
	b.ResetTimer()
	for i := 0; i < len(events); i += 500 {
		require.NoError(b, p.PublishEvents(ctx, events[i:min(i+500, len(events))]))
	}
	<-done
	if !untilWritten {
		b.StopTimer()
		b.ReportMetric(float64((processCPU()-cpu).Nanoseconds())/float64(b.N), "cpu-ns/op")
	}
	flushCtx, stop := context.WithTimeout(ctx, 5*time.Minute)
	require.NoError(b, p.FlushHistory(flushCtx))
	stop()
	if untilWritten {
		b.StopTimer()
		b.ReportMetric(float64((processCPU()-cpu).Nanoseconds())/float64(b.N), "cpu-ns/op")
	}
	mfs, err := p.Registry().Gather()
	require.NoError(b, err)
	var dropped float64
	for _, mf := range mfs {
		if mf.GetName() == "history_records_dropped_total" {
			for _, m := range mf.GetMetric() {
				dropped += m.GetCounter().GetValue()
			}
		}
	}
	b.ReportMetric(dropped/float64(b.N), "dropped/op")
	cancel()
	require.NoError(b, <-runDone)
}
