package middleware_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/eventpipe/eventpipe/middleware"
)

// redisURL is the test Redis: EVENTPIPE_TEST_REDIS_URL, else the local one.
func redisURL(t *testing.T) string {
	t.Helper()
	if u := os.Getenv("EVENTPIPE_TEST_REDIS_URL"); u != "" {
		return u
	}
	conn, err := net.DialTimeout("tcp", "127.0.0.1:6379", time.Second)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("CI needs Redis for the redis dedup store tests: %v", err)
		}
		t.Skipf("no Redis on 127.0.0.1:6379 (start one, or set EVENTPIPE_TEST_REDIS_URL): %v", err)
	}
	_ = conn.Close()
	return "redis://127.0.0.1:6379/0"
}

func TestRedisDedupStore_records_across_store_instances(t *testing.T) {
	t.Parallel()
	url := redisURL(t)
	prefix := fmt.Sprintf("eventpipe-test:%d:", time.Now().UnixNano())
	a, err := middleware.NewRedisDedupStore(t.Context(), url, time.Minute, prefix)
	require.NoError(t, err)
	t.Cleanup(func() { _ = a.Close() })

	seen, err := a.Seen(t.Context(), "task-1")
	require.NoError(t, err)
	assert.False(t, seen)
	require.NoError(t, a.Record(t.Context(), "task-1"))

	// A second process (another store on the same server) sees the record.
	b, err := middleware.NewRedisDedupStore(t.Context(), url, time.Minute, prefix)
	require.NoError(t, err)
	t.Cleanup(func() { _ = b.Close() })
	seen, err = b.Seen(t.Context(), "task-1")
	require.NoError(t, err)
	assert.True(t, seen)
	seen, err = b.Seen(t.Context(), "task-2")
	require.NoError(t, err)
	assert.False(t, seen)
}

func TestRedisDedupStore_forgets_after_ttl(t *testing.T) {
	t.Parallel()
	url := redisURL(t)
	s, err := middleware.NewRedisDedupStore(t.Context(), url, 50*time.Millisecond, fmt.Sprintf("eventpipe-test:%d:", time.Now().UnixNano()))
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	require.NoError(t, s.Record(t.Context(), "k"))
	require.Eventually(t, func() bool {
		seen, err := s.Seen(context.Background(), "k")
		return err == nil && !seen
	}, 5*time.Second, 20*time.Millisecond)
}

func TestNewRedisDedupStore_errors_name_the_problem(t *testing.T) {
	t.Parallel()
	_, err := middleware.NewRedisDedupStore(t.Context(), "http://x", time.Minute, "p")
	assert.ErrorContains(t, err, `dedup redis url "http://x"`)
	_, err = middleware.NewRedisDedupStore(t.Context(), "redis://127.0.0.1:1/0", time.Minute, "p")
	assert.ErrorContains(t, err, "dedup redis at 127.0.0.1:1")
	_, err = middleware.NewRedisDedupStore(t.Context(), "redis://127.0.0.1:6379/0", 0, "p")
	assert.ErrorContains(t, err, "ttl must be > 0")
}

func TestNewRedisDedupStore_error_hides_the_password(t *testing.T) {
	t.Parallel()
	_, err := middleware.NewRedisDedupStore(t.Context(), "redis://user:hunter2@127.0.0.1:6379/notadb", time.Minute, "p")
	require.Error(t, err)
	assert.NotContains(t, err.Error(), "hunter2")
}

// Two processes (two stores, two chains) get the same task at once: one
// runs it, the other waits for it and acks without running it.
func TestRedisDedup_concurrent_deliveries_in_two_processes_run_once(t *testing.T) {
	t.Parallel()
	url := redisURL(t)
	prefix := fmt.Sprintf("eventpipe-test:%d:", time.Now().UnixNano())
	var runs atomic.Int32
	started := make(chan struct{}, 2)
	handler := func(*message.Message) ([]*message.Message, error) {
		runs.Add(1)
		started <- struct{}{}
		time.Sleep(500 * time.Millisecond)
		return nil, nil
	}
	first := deliverInProcess(t, url, prefix, handler)
	<-started
	second := deliverInProcess(t, url, prefix, handler)
	require.NoError(t, <-first)
	require.NoError(t, <-second)
	assert.Equal(t, int32(1), runs.Load(), "the second process waited and acked")
}

// A process that fails lets the waiting one run the task.
func TestRedisDedup_failed_holder_lets_the_waiting_process_run(t *testing.T) {
	t.Parallel()
	url := redisURL(t)
	prefix := fmt.Sprintf("eventpipe-test:%d:", time.Now().UnixNano())
	var runs atomic.Int32
	started := make(chan struct{}, 2)
	handler := func(*message.Message) ([]*message.Message, error) {
		if runs.Add(1) == 1 {
			started <- struct{}{}
			time.Sleep(300 * time.Millisecond)
			return nil, errors.New("first run fails")
		}
		return nil, nil
	}
	first := deliverInProcess(t, url, prefix, handler)
	<-started
	second := deliverInProcess(t, url, prefix, handler)
	assert.Error(t, <-first)
	assert.NoError(t, <-second)
	assert.Equal(t, int32(2), runs.Load())
}

// deliverInProcess hands message task-1 to handler behind Dedup with its
// own Redis store, as another pipeline process would, and returns the
// handler's error when it is done.
func deliverInProcess(t *testing.T, url, prefix string, handler message.HandlerFunc) <-chan error {
	t.Helper()
	store, err := middleware.NewRedisDedupStore(t.Context(), url, time.Minute, prefix)
	require.NoError(t, err)
	t.Cleanup(func() { _ = store.Close() })
	h := middleware.Dedup(store, func(m *message.Message) string { return m.UUID }, nil)(handler)
	done := make(chan error, 1)
	go func() {
		msg := message.NewMessage("task-1", nil)
		msg.SetContext(t.Context())
		_, err := h(msg)
		done <- err
	}()
	return done
}
