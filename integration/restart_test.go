package integration_test

import (
	"context"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/eventpipe/eventpipe/config"
)

// TestBrokerRestart restarts the broker in the middle of a 10,000-event
// run: every expected task must still run. It is not parallel with the
// other top-level tests (Go runs it before them), because stopping the
// shared RabbitMQ would disturb them. Kafka restarts a kfake broker of its
// own (a fixed port and a data directory keep topics, records and offsets),
// whichever Kafka the other tests use.
func TestBrokerRestart(t *testing.T) {
	const events = 10_000
	t.Run("kafka", func(t *testing.T) {
		t.Parallel()
		port := freePort(t)
		dir := t.TempDir()
		start := func() *kfake.Cluster {
			c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.Ports(port), kfake.DataDir(dir))
			require.NoError(t, err)
			return c
		}
		var mu sync.Mutex
		cluster := start()
		t.Cleanup(func() { mu.Lock(); cluster.Close(); mu.Unlock() })

		own := &provider{kind: "kafka", source: "kfake for restart", kafkaBrokers: cluster.ListenAddrs()}
		tgt := target{name: "kafka", provider: own, open: openKafka}
		runWithRestart(t, tgt, events, func(context.Context) error {
			mu.Lock()
			defer mu.Unlock()
			cluster.Close()
			// Stay down a while, as a real broker restart does: clients
			// see refused connections, not a blip.
			time.Sleep(3 * time.Second)
			cluster = start()
			return nil
		})
	})
	t.Run("amqp", func(t *testing.T) {
		t.Parallel()
		p := amqpProvider.require(t)
		if p.restart == nil {
			skipOrFail(t, "cannot restart RabbitMQ: %s", p.restartSkip)
		}
		runWithRestart(t, target{name: "amqp", provider: p, open: openAMQP}, events, p.restart)
	})
}

// runWithRestart publishes n events while the pipeline runs, restarts the
// broker once a fifth of the tasks ran, and checks that every task ran.
func runWithRestart(t *testing.T, tgt target, n int, restart func(context.Context) error) {
	h := newHarness(t, tgt, func(c *config.Config) {
		raisedConcurrency(c)
		// Many handlers fail at once while the broker is down; give them time.
		c.Retry.MaxRetries = 5
		c.Retry.MaxInterval = time.Second
	}, nil)
	evs, want := orderEvents("restart", n)
	published := make(chan error, 1)
	start := time.Now()
	go func() { published <- publishAll(h.b.Publisher(), h.cfg.Topics.Events, evs, nil) }()
	h.rec.waitDistinct(t, n/5, waitLong)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	restartedAt := time.Now()
	require.NoError(t, restart(ctx))
	t.Logf("%s restarted in %s", tgt.name, time.Since(restartedAt).Round(time.Millisecond))

	select {
	case err := <-published:
		require.NoError(t, err, "publishing across the restart")
	case <-time.After(waitLong):
		t.Fatal("publishing did not finish within 60s of the restart")
	}
	h.rec.waitDistinct(t, n, waitBulk)
	assert.Empty(t, h.rec.missing(want), "tasks lost")
	distinct, runs := h.rec.executed()
	t.Logf("%s: %d events -> %d tasks executed, %d runs (%d re-runs after the restart) in %s",
		tgt.name, n, distinct, runs, runs-distinct, time.Since(start).Round(time.Millisecond))
	dlqEvents := h.watch(h.cfg.Topics.Poison(h.cfg.Topics.Events))
	dlqTasks := h.watch(h.cfg.Topics.Poison(h.cfg.Topics.Tasks))
	assert.Never(t, func() bool { return len(dlqEvents.snapshot())+len(dlqTasks.snapshot()) > 0 },
		2*time.Second, 50*time.Millisecond, "a broker restart must not poison events or tasks")
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	_, port, err := net.SplitHostPort(ln.Addr().String())
	require.NoError(t, err)
	n, err := strconv.Atoi(port)
	require.NoError(t, err)
	return n
}
