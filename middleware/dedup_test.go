package middleware

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/eventpipe/eventpipe/permanent"
)

func newTestStore(t *testing.T) *MemoryDedupStore {
	t.Helper()
	s, err := NewMemoryDedupStore(100, time.Hour)
	require.NoError(t, err)
	return s
}

// fakeClock is a settable clock for TTL tests.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func uuidKey(msg *message.Message) string { return msg.UUID }

func TestNewMemoryDedupStore_rejects_bad_bounds(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		max     int
		ttl     time.Duration
		wantErr string
	}{
		{name: "zero entries", max: 0, ttl: time.Hour, wantErr: "dedup max entries must be >= 1, got 0"},
		{name: "zero ttl", max: 1, ttl: 0, wantErr: "dedup ttl must be > 0, got 0s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := NewMemoryDedupStore(tt.max, tt.ttl)
			require.Error(t, err)
			assert.Equal(t, tt.wantErr, err.Error())
		})
	}
}

func TestMemoryDedupStore_remembers_recorded_keys(t *testing.T) {
	t.Parallel()
	s := newTestStore(t)
	seen, err := s.Seen(t.Context(), "a")
	require.NoError(t, err)
	assert.False(t, seen)

	require.NoError(t, s.Record(t.Context(), "a"))
	seen, err = s.Seen(t.Context(), "a")
	require.NoError(t, err)
	assert.True(t, seen)
	seen, _ = s.Seen(t.Context(), "b")
	assert.False(t, seen)
}

func TestMemoryDedupStore_evicts_oldest_beyond_max_entries(t *testing.T) {
	t.Parallel()
	s, err := NewMemoryDedupStore(3, time.Hour)
	require.NoError(t, err)
	for _, k := range []string{"a", "b", "c"} {
		require.NoError(t, s.Record(t.Context(), k))
	}
	require.NoError(t, s.Record(t.Context(), "a")) // refreshed: now the newest
	require.NoError(t, s.Record(t.Context(), "d")) // evicts b, the oldest

	assert.Equal(t, 3, s.Len())
	for key, want := range map[string]bool{"a": true, "b": false, "c": true, "d": true} {
		seen, err := s.Seen(t.Context(), key)
		require.NoError(t, err)
		assert.Equal(t, want, seen, key)
	}
}

func TestMemoryDedupStore_expires_keys_after_ttl(t *testing.T) {
	t.Parallel()
	clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	s, err := NewMemoryDedupStore(100, time.Minute)
	require.NoError(t, err)
	s.now = clock.Now

	require.NoError(t, s.Record(t.Context(), "old"))
	clock.Advance(30 * time.Second)
	require.NoError(t, s.Record(t.Context(), "young"))
	clock.Advance(40 * time.Second) // old is 70s, young 40s

	seen, _ := s.Seen(t.Context(), "old")
	assert.False(t, seen, "expired")
	seen, _ = s.Seen(t.Context(), "young")
	assert.True(t, seen)

	clock.Advance(time.Minute)
	require.NoError(t, s.Record(t.Context(), "new"))
	assert.Equal(t, 1, s.Len(), "recording evicts expired entries")
}

func TestMemoryDedupStore_is_safe_for_concurrent_use(t *testing.T) {
	t.Parallel()
	s, err := NewMemoryDedupStore(50, time.Hour)
	require.NoError(t, err)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 200 {
				key := fmt.Sprintf("k%d", (g*200+i)%120)
				_, _ = s.Seen(context.Background(), key)
				_ = s.Record(context.Background(), key)
			}
		})
	}
	wg.Wait()
	assert.Equal(t, 50, s.Len())
}

func TestDedup_acks_duplicate_without_running(t *testing.T) {
	t.Parallel()
	logger := watermill.NewCaptureLogger()
	var calls atomic.Int32
	h := Dedup(newTestStore(t), uuidKey, logger)(func(*message.Message) ([]*message.Message, error) {
		calls.Add(1)
		return []*message.Message{message.NewMessage("result", nil)}, nil
	})

	out, err := h(message.NewMessage("task-1", nil))
	require.NoError(t, err)
	assert.Len(t, out, 1)
	out, err = h(message.NewMessage("task-1", nil))
	require.NoError(t, err)
	assert.Empty(t, out)
	assert.Equal(t, int32(1), calls.Load())
	assert.Len(t, logger.Captured()[watermill.DebugLogLevel], 1, "a duplicate is logged at debug")
}

func TestDedup_failure_then_redelivery_runs_again(t *testing.T) {
	t.Parallel()
	var calls atomic.Int32
	h := Dedup(newTestStore(t), uuidKey, nil)(func(*message.Message) ([]*message.Message, error) {
		if calls.Add(1) == 1 {
			return nil, errors.New("executor crashed")
		}
		return nil, nil
	})

	_, err := h(message.NewMessage("task-1", nil))
	require.Error(t, err)
	_, err = h(message.NewMessage("task-1", nil))
	require.NoError(t, err)
	_, err = h(message.NewMessage("task-1", nil))
	require.NoError(t, err)
	assert.Equal(t, int32(2), calls.Load(), "runs after the failure, skipped after the success")
}

func TestDedup_concurrent_deliveries_of_one_key_run_once(t *testing.T) {
	t.Parallel()
	var calls atomic.Int32
	release := make(chan struct{})
	h := Dedup(newTestStore(t), uuidKey, nil)(func(*message.Message) ([]*message.Message, error) {
		calls.Add(1)
		<-release
		return nil, nil
	})

	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Go(func() {
			_, err := h(message.NewMessage("task-1", nil))
			errs <- err
		})
	}
	time.Sleep(20 * time.Millisecond) // let every delivery reach the key lock
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		assert.NoError(t, err)
	}
	assert.Equal(t, int32(1), calls.Load())
}

func TestDedup_waiting_delivery_runs_when_the_first_fails(t *testing.T) {
	t.Parallel()
	var calls atomic.Int32
	release := make(chan struct{})
	h := Dedup(newTestStore(t), uuidKey, nil)(func(*message.Message) ([]*message.Message, error) {
		if calls.Add(1) == 1 {
			<-release
			return nil, errors.New("first failed")
		}
		return nil, nil
	})

	firstErr := make(chan error, 1)
	go func() {
		_, err := h(message.NewMessage("task-1", nil))
		firstErr <- err
	}()
	for calls.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	secondErr := make(chan error, 1)
	go func() {
		_, err := h(message.NewMessage("task-1", nil))
		secondErr <- err
	}()
	close(release)
	assert.Error(t, <-firstErr)
	assert.NoError(t, <-secondErr)
	assert.Equal(t, int32(2), calls.Load())
}

func TestDedup_waiting_delivery_gives_up_on_cancel(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	defer close(release)
	started := make(chan struct{})
	h := Dedup(newTestStore(t), uuidKey, nil)(func(*message.Message) ([]*message.Message, error) {
		close(started)
		<-release
		return nil, nil
	})
	go func() { _, _ = h(message.NewMessage("task-1", nil)) }()
	<-started

	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	msg := message.NewMessage("task-1", nil)
	msg.SetContext(ctx)
	_, err := h(msg)
	assert.ErrorIs(t, err, context.Canceled)
}

func TestDedup_empty_key_is_not_deduplicated(t *testing.T) {
	t.Parallel()
	var calls atomic.Int32
	h := Dedup(newTestStore(t), func(*message.Message) string { return "" }, nil)(
		func(*message.Message) ([]*message.Message, error) {
			calls.Add(1)
			return nil, nil
		})
	for range 2 {
		_, err := h(message.NewMessage("x", nil))
		require.NoError(t, err)
	}
	assert.Equal(t, int32(2), calls.Load())
}

// brokenStore fails every call.
type brokenStore struct{ records atomic.Int32 }

func (*brokenStore) Seen(context.Context, string) (bool, error) {
	return false, errors.New("redis down")
}
func (s *brokenStore) Record(context.Context, string) error {
	s.records.Add(1)
	return errors.New("redis down")
}

func TestDedup_store_errors_never_lose_the_message(t *testing.T) {
	t.Parallel()
	logger := watermill.NewCaptureLogger()
	store := &brokenStore{}
	var calls atomic.Int32
	h := Dedup(store, uuidKey, logger)(func(*message.Message) ([]*message.Message, error) {
		calls.Add(1)
		return nil, nil
	})
	_, err := h(message.NewMessage("task-1", nil))
	require.NoError(t, err, "the work is done: ack even though recording failed")
	assert.Equal(t, int32(1), calls.Load(), "a failed lookup still runs the handler")
	assert.Equal(t, int32(1), store.records.Load())
	assert.Len(t, logger.Captured()[watermill.ErrorLogLevel], 2)
}

func TestDedup_panics_on_nil_dependencies(t *testing.T) {
	t.Parallel()
	assert.Panics(t, func() { Dedup(nil, uuidKey, nil) })
	assert.Panics(t, func() { Dedup(newTestStore(t), nil, nil) })
}

func TestChain_dedup_does_not_record_poisoned_message(t *testing.T) {
	t.Parallel()
	h, cfg := newHarness(t)
	cfg.Dedup = newTestStore(t)
	cfg.DedupKey = uuidKey
	var calls atomic.Int32
	var fail atomic.Bool
	fail.Store(true)
	handler := h.wrap(t, cfg, func(*message.Message) ([]*message.Message, error) {
		calls.Add(1)
		if fail.Load() {
			return nil, permanent.Wrap(errors.New("bad"))
		}
		return nil, nil
	})

	_, err := handler(newMsg())
	require.NoError(t, err)
	h.poisoned(t)

	// Replayed from the poison topic after a fix: it must run, then be remembered.
	fail.Store(false)
	_, err = handler(newMsg())
	require.NoError(t, err)
	_, err = handler(newMsg())
	require.NoError(t, err)
	assert.Equal(t, int32(2), calls.Load())
}

func TestChain_dedup_records_once_after_retried_success(t *testing.T) {
	t.Parallel()
	h, cfg := newHarness(t)
	cfg.Dedup = newTestStore(t)
	cfg.DedupKey = uuidKey
	var calls atomic.Int32
	handler := h.wrap(t, cfg, func(*message.Message) ([]*message.Message, error) {
		if calls.Add(1) == 1 {
			return nil, errors.New("transient")
		}
		return nil, nil
	})
	_, err := handler(newMsg())
	require.NoError(t, err)
	_, err = handler(newMsg())
	require.NoError(t, err)
	assert.Equal(t, int32(2), calls.Load(), "one retry, then the redelivery is a duplicate")
}
