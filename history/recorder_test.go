package history

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/eventpipe/eventpipe/task"
)

// outage wraps a store and fails writes and pings while down is set.
type outage struct {
	*Store
	down   atomic.Bool
	writes atomic.Int64
}

var errDown = errors.New("connection refused")

func (o *outage) write(ctx context.Context, batch []record) error {
	o.writes.Add(1)
	if o.down.Load() {
		return errDown
	}
	return o.Store.write(ctx, batch)
}

func (o *outage) Ping(ctx context.Context) error {
	if o.down.Load() {
		return errDown
	}
	return o.Store.Ping(ctx)
}

// syncBuffer is a log sink safe for the writer goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func attempt(i int) TaskAttempt {
	now := time.Now().UTC()
	return TaskAttempt{Final: true, Result: task.Result{TaskID: fmt.Sprintf("t-%d", i), RuleID: "r", EventID: "e",
		TaskType: "log", Status: task.StatusSucceeded, Attempts: 1, StartedAt: now, FinishedAt: now}}
}

func countTasks(t *testing.T, s *Store) int {
	t.Helper()
	page, err := s.Tasks(t.Context(), TaskQuery{Limit: MaxTaskPage})
	require.NoError(t, err)
	return len(page.Items)
}

func TestRecorder_outage_holds_records_then_writes_them_all(t *testing.T) {
	t.Parallel()
	s := openSQLiteStore(t, Config{QueueSize: 100, BatchSize: 10, FlushInterval: 10 * time.Millisecond})
	w := &outage{Store: s}
	w.down.Store(true)
	logs := &syncBuffer{}
	reg := prometheus.NewRegistry()
	r, err := newRecorder(s, w, reg, slog.New(slog.NewTextHandler(logs, nil)))
	require.NoError(t, err)
	for i := range 50 {
		r.RecordAttempt(attempt(i))
	}
	require.Eventually(t, func() bool { return w.writes.Load() >= 2 }, 5*time.Second, 5*time.Millisecond)
	assert.Equal(t, 0.0, testutil.ToFloat64(r.metrics.up), "history_store_up is 0 during the outage")
	assert.Contains(t, logs.String(), "history store unreachable")

	w.down.Store(false)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	require.NoError(t, r.Flush(ctx))
	assert.Equal(t, 50, countTasks(t, s), "nothing recorded during the outage is lost while the queue holds it")
	assert.Equal(t, 1.0, testutil.ToFloat64(r.metrics.up))
	assert.Equal(t, 50.0, testutil.ToFloat64(r.metrics.written))
	assert.Zero(t, r.Dropped(DropQueueFull))
	assert.Contains(t, logs.String(), "history store reachable again")
	require.NoError(t, r.Close(ctx))
}

func TestRecorder_full_queue_drops_without_blocking_and_reports(t *testing.T) {
	t.Parallel()
	s := openSQLiteStore(t, Config{QueueSize: 8, BatchSize: 4, FlushInterval: time.Millisecond})
	w := &outage{Store: s}
	w.down.Store(true)
	logs := &syncBuffer{}
	reg := prometheus.NewRegistry()
	r, err := newRecorder(s, w, reg, slog.New(slog.NewTextHandler(logs, nil)))
	require.NoError(t, err)

	start := time.Now()
	for i := range 1000 {
		r.RecordAttempt(attempt(i))
	}
	// Not a timing assertion: a blocking send would never return at all
	// while the store is down.
	t.Logf("1000 records offered in %s", time.Since(start))
	// At most one batch in the writer's hands and QueueSize queued.
	assert.GreaterOrEqual(t, r.Dropped(DropQueueFull), float64(1000-8-4))
	assert.Contains(t, logs.String(), "history records dropped")
	assert.Contains(t, logs.String(), "reason=queue_full")

	// Still down at shutdown: what is held is dropped and counted.
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	require.NoError(t, r.Close(ctx))
	dropped := r.Dropped(DropQueueFull) + r.Dropped(DropStoreDown)
	assert.Equal(t, 1000.0, dropped, "every record is either written or counted as dropped")
	assert.Zero(t, countTasks(t, s))
	out, err := testutil.GatherAndCount(reg, "history_records_dropped_total")
	require.NoError(t, err)
	assert.Equal(t, 3, out)
}

func TestRecorder_refused_batch_is_dropped_and_the_writer_goes_on(t *testing.T) {
	t.Parallel()
	s := openSQLiteStore(t, Config{QueueSize: 100, BatchSize: 100, FlushInterval: time.Millisecond})
	_, err := s.db.ExecContext(t.Context(), `CREATE TRIGGER refuse BEFORE INSERT ON tasks
		WHEN NEW.task_id = 't-1' BEGIN SELECT RAISE(ABORT, 'refused'); END`)
	require.NoError(t, err)
	r, err := NewRecorder(s, nil, nil)
	require.NoError(t, err)
	r.RecordAttempt(attempt(1))
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	require.NoError(t, r.Flush(ctx))
	assert.Equal(t, 1.0, r.Dropped(DropWriteError))
	r.RecordAttempt(attempt(2))
	require.NoError(t, r.Flush(ctx))
	assert.Equal(t, 1, countTasks(t, s), "the next batch is written")
	require.NoError(t, r.Close(ctx))
}

func TestStore_text_with_NUL_is_stored(t *testing.T) {
	t.Parallel()
	dialects(t, Config{}, func(t *testing.T, s *Store) {
		a := attempt(1)
		a.Result.Output = "a\x00b"
		require.NoError(t, s.write(t.Context(), []record{{kind: kindAttempt, attempt: a}}))
		got, err := s.Task(t.Context(), "t-1")
		require.NoError(t, err)
		assert.Equal(t, "a\uFFFDb", got.Output)
	})
}

func TestRecorder_nil_records_nothing(t *testing.T) {
	t.Parallel()
	var r *Recorder
	r.RecordAttempt(attempt(1))
	r.RecordEvent(EventOutcome{})
	assert.NoError(t, r.Flush(t.Context()))
	assert.NoError(t, r.Close(t.Context()))
}

func TestRecorder_record_does_not_allocate_on_the_hot_path(t *testing.T) {
	s := openSQLiteStore(t, Config{QueueSize: 1 << 16, FlushInterval: time.Hour, BatchSize: 1 << 16})
	r, err := NewRecorder(s, nil, nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = r.Close(context.Background()) })
	set := quickStartRules(t)
	ev := mustEvent(t, orderEvent)
	tasks, err := set.Match(ev)
	require.NoError(t, err)
	raw := []byte(orderEvent)
	a := attempt(1)
	at := time.Now()
	allocs := testing.AllocsPerRun(1000, func() {
		r.RecordEvent(EventOutcome{Event: ev, Raw: raw, Rules: set, Tasks: tasks, At: at})
		r.RecordAttempt(a)
	})
	assert.Zero(t, allocs, "queueing a record copies it into the channel and allocates nothing")
}
