package pipeline_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/eventpipe/eventpipe/config"
	"github.com/eventpipe/eventpipe/pipeline"
)

// benchPipelineHistory is embedded/pipeline with the history in store
// (none for the baseline of the same code path; sqlite as `make run`
// ships it). With untilWritten the clock stops only once the history holds
// every record (FlushHistory), so the writer's work is all counted;
// without, it stops when the last result is out, as for embedded/pipeline,
// and the writer's work so far competes for the CPU. Records dropped for a
// full queue are reported as dropped/op.
func benchPipelineHistory(b *testing.B, store string, untilWritten bool) {
	flush := func(ctx context.Context, p *pipeline.Pipeline) {
		flushCtx, stop := context.WithTimeout(ctx, 5*time.Minute)
		defer stop()
		require.NoError(b, p.FlushHistory(flushCtx))
	}
	s := benchSetup{mutate: func(c *config.Config) { c.History.Store = store }}
	if untilWritten {
		s.timed = flush
	}
	s.after = func(ctx context.Context, p *pipeline.Pipeline) {
		flush(ctx, p)
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
	}
	benchPipelineWith(b, s)
}
