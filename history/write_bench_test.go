package history

import (
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/eventpipe/eventpipe/history/historytest"
	"github.com/eventpipe/eventpipe/rules"
	"github.com/eventpipe/eventpipe/task"
)

// BenchmarkStoreWrite measures the history writer alone: batches of events
// each with one task made and finished, as the pipeline records them. ns/op
// is per event (three records).
func BenchmarkStoreWrite(b *testing.B) {
	b.Run("sqlite", func(b *testing.B) {
		cfg := Config{Store: StoreSQLite, Path: b.TempDir() + "/h.db"}
		s, err := Open(b.Context(), cfg)
		require.NoError(b, err)
		defer s.Close()
		benchWrite(b, s)
	})
	b.Run("postgres", func(b *testing.B) {
		s, err := Open(b.Context(), Config{Store: StorePostgres, PostgresURL: historytest.Schema(b)})
		require.NoError(b, err)
		defer s.Close()
		benchWrite(b, s)
	})
}

func benchWrite(b *testing.B, s *Store) {
	set, err := rules.Compile([]rules.Rule{{RuleID: "bench-log", EventType: "order.created",
		Condition: "payload.amount > 100", TaskName: "log-${payload.orderId}", TaskType: "log"}})
	require.NoError(b, err)
	perBatch := DefaultBatchSize / 3 // events of a full batch (three records each)
	var batch []record
	b.ReportAllocs()
	var ru0 syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	b.ResetTimer()
	for i := range b.N {
		raw := fmt.Sprintf(`{"messageId":"bench-%d","eventType":"order.created","source":"bench","payload":{"orderId":"o-%d","amount":%d},"metadata":{"traceId":"t-%d"}}`, i, i, 200+i%1000, i)
		ev, err := parseEvent(raw)
		require.NoError(b, err)
		tasks, err := set.Match(ev)
		require.NoError(b, err)
		now := time.Now()
		tk := tasks[0]
		batch = append(batch, record{kind: kindEvent, ev: EventOutcome{Event: ev, Raw: []byte(raw), Rules: set, Tasks: tasks, At: now}},
			record{kind: kindAttempt, attempt: TaskAttempt{Final: true, Result: task.Result{TaskID: tk.TaskID, TaskName: tk.TaskName,
				TaskType: tk.TaskType, RuleID: tk.RuleID, EventID: tk.EventID, TraceID: tk.TraceID, Status: task.StatusSucceeded,
				Attempts: 1, StartedAt: now, FinishedAt: now}}})
		if len(batch) >= 2*perBatch || i == b.N-1 {
			require.NoError(b, s.write(b.Context(), batch))
			batch = batch[:0]
		}
	}
	b.StopTimer()
	var ru1 syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
	cpu := ru1.Utime.Nano() + ru1.Stime.Nano() - ru0.Utime.Nano() - ru0.Stime.Nano()
	b.ReportMetric(float64(cpu)/float64(b.N), "cpu-ns/op")
}
