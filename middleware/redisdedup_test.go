package middleware_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"testing"
	"time"

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
