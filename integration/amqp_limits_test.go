package integration_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/eventpipe/eventpipe/broker"
	"github.com/eventpipe/eventpipe/config"
)

// postEvent posts body to the pipeline's event ingest and returns the
// status and response body.
func postEvent(t *testing.T, h *harness, body string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	addr := h.p.Addr(ctx)
	require.NotEmpty(t, addr)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+addr+"/api/v1/events", strings.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(out)
}

func queueDepth(t *testing.T, url, queue string) int {
	t.Helper()
	conn, err := amqp091.Dial(url)
	require.NoError(t, err)
	defer conn.Close()
	ch, err := conn.Channel()
	require.NoError(t, err)
	defer ch.Close()
	q, err := ch.QueueDeclarePassive(queue, true, false, false, false, nil)
	require.NoError(t, err)
	return q.Messages
}

func TestAMQP_unroutable_event_is_refused_not_accepted(t *testing.T) {
	t.Parallel()
	h := newHarness(t, amqpTarget(t), func(c *config.Config) { c.Broker.AMQP.BindingKeys = []string{"order.*"} }, nil)
	res := h.watch(h.cfg.Topics.Results)

	status, body := postEvent(t, h, ev("inv-1", "invoice.paid"))
	assert.NotEqual(t, http.StatusAccepted, status, "no queue takes invoice.paid: %s", body)
	assert.Contains(t, body, "no queue takes the message")

	status, body = postEvent(t, h, ev("ord-1", "order.created"))
	require.Equal(t, http.StatusAccepted, status, body)
	got := results(t, res.waitFor(t, 1, waitLong))
	assert.Equal(t, "ord-1", got[0].EventID, "only the routed event made a task")
	assert.Never(t, func() bool { return len(res.snapshot()) > 1 }, time.Second, 20*time.Millisecond)
}

func TestAMQP_deleted_queue_is_declared_again_not_fed_silently(t *testing.T) {
	t.Parallel()
	tgt := amqpTarget(t)
	cfg := newConfig(t, tgt)
	b := tgt.open(t, cfg)
	topic := "it-" + testID() + "-audit"
	t.Cleanup(func() { deleteAMQP(cfg.Broker.AMQP.URL, []string{topic}, "") })
	pub := b.Publisher()
	require.NoError(t, pub.Publish(topic, message.NewMessage("m-1", []byte("one"))))
	require.Equal(t, 1, queueDepth(t, cfg.Broker.AMQP.URL, topic))

	deleteAMQP(cfg.Broker.AMQP.URL, []string{topic}, "")
	// The broker still believes the queue exists; the publish is returned
	// as unroutable, the queue declared again and the message delivered.
	require.NoError(t, pub.Publish(topic, message.NewMessage("m-2", []byte("two"))))
	assert.Equal(t, 1, queueDepth(t, cfg.Broker.AMQP.URL, topic), "m-2 waits in the declared-again queue")

	t.Run("a consumer's queue deleted under it comes back", func(t *testing.T) {
		h := startPipeline(t, cfg, b, nil)
		res := h.watch(h.cfg.Topics.Results)
		h.publish(ev("before", "order.created"))
		res.waitFor(t, 1, waitLong)
		deleteAMQP(cfg.Broker.AMQP.URL, []string{cfg.Topics.Tasks}, "")
		h.publish(ev("after", "order.created"))
		got := results(t, res.waitFor(t, 2, waitLong))
		assert.Equal(t, "after", got[1].EventID)
	})
}

// setWatermark sets RabbitMQ's memory high watermark (a fraction of RAM);
// a tiny one raises the memory alarm, which blocks publishing connections.
func setWatermark(t *testing.T, fraction string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "rabbitmqctl", "set_vm_memory_high_watermark", fraction).CombinedOutput()
	require.NoError(t, err, "rabbitmqctl set_vm_memory_high_watermark %s: %s", fraction, out)
}

// TestAMQP_blocked_connection_fails_fast_and_loses_nothing raises a memory
// alarm on the shared RabbitMQ for a few seconds (every user of it is
// blocked meanwhile), so it does not run in parallel and always restores
// the watermark.
func TestAMQP_blocked_connection_fails_fast_and_loses_nothing(t *testing.T) {
	tgt := amqpTarget(t)
	if _, err := exec.LookPath("rabbitmqctl"); err != nil {
		skipOrFail(t, "rabbitmqctl not on PATH: cannot raise a memory alarm")
	}
	cfg := newConfig(t, tgt)
	cfg.ShutdownTimeout = 3 * time.Second
	b := tgt.open(t, cfg)
	a := b.(*broker.AMQP)
	h := startPipeline(t, cfg, b, nil)
	events, want := orderEvents("blk", 200)
	h.publish(events[:100]...)

	restore := func() { setWatermark(t, "0.4") }
	t.Cleanup(restore)
	setWatermark(t, "0.0000001")
	blockedAt := time.Now()
	// The first publish after the alarm is what RabbitMQ blocks on; it and
	// every later one fail fast instead of hanging on a socket.
	start := time.Now()
	err := publishAll(b.Publisher(), cfg.Topics.Events, events[100:101], nil)
	require.ErrorIs(t, err, broker.ErrBlocked)
	assert.Less(t, time.Since(start), cfg.Broker.AMQP.PublishTimeout, "failed fast, not after the publish timeout")
	require.Eventually(t, func() bool { return a.Blocked() != "" }, 10*time.Second, 10*time.Millisecond)
	status, body := postEvent(t, h, events[101])
	assert.Equal(t, http.StatusServiceUnavailable, status, body)
	assert.Contains(t, body, "blocked")

	// SIGTERM's path: the pipeline drains and the broker closes within
	// shutdown_timeout though RabbitMQ reads nothing from the publisher.
	stopStart := time.Now()
	h.stop()
	require.NoError(t, b.Close())
	assert.Less(t, time.Since(stopStart), cfg.ShutdownTimeout+time.Second)
	restore()
	t.Logf("RabbitMQ was blocked for %s", time.Since(blockedAt).Round(time.Millisecond))

	// After the alarm: a new process gets what was accepted before it, and
	// the refused events, sent again, go through.
	var b2 broker.Broker
	require.Eventually(t, func() bool {
		var err error
		b2, err = broker.NewAMQP(cfg.Broker.AMQP, cfg.Topics, wmLogger())
		return err == nil
	}, 30*time.Second, 200*time.Millisecond)
	t.Cleanup(func() { _ = b2.Close() })
	h2 := startPipeline(t, cfg, b2, nil)
	require.Eventually(t, func() bool {
		return publishAll(b2.Publisher(), cfg.Topics.Events, events[100:], nil) == nil
	}, 30*time.Second, 200*time.Millisecond)
	require.Eventually(t, func() bool {
		return len(missingFrom(want, h.rec, h2.rec)) == 0
	}, waitLong, 20*time.Millisecond, "missing: %v", missingFrom(want, h.rec, h2.rec))
}

// missingFrom returns the task ids of want neither recorder executed.
func missingFrom(want []string, recs ...*recorder) []string {
	var out []string
	for _, id := range want {
		found := false
		for _, r := range recs {
			if len(r.missing([]string{id})) == 0 {
				found = true
				break
			}
		}
		if !found {
			out = append(out, id)
		}
	}
	return out
}

func TestAMQP_results_queue_is_bounded_and_drops_are_counted(t *testing.T) {
	t.Parallel()
	tgt := amqpTarget(t)
	cfg := newConfig(t, tgt)
	cfg.Broker.AMQP.ResultsMaxLength = 5
	b := tgt.open(t, cfg)
	a := b.(*broker.AMQP)
	for i := range 8 {
		require.NoError(t, b.Publisher().Publish(cfg.Topics.Results, message.NewMessage(fmt.Sprint("r-", i), []byte("{}"))))
	}
	assert.Equal(t, 5, queueDepth(t, cfg.Broker.AMQP.URL, cfg.Topics.Results))
	require.Eventually(t, func() bool { return a.Dropped(cfg.Topics.Results, "maxlen") == 3 }, 10*time.Second, 10*time.Millisecond,
		"dropped: %d", a.Dropped(cfg.Topics.Results, "maxlen"))
	backlog, err := a.Backlog(t.Context())
	require.NoError(t, err)
	assert.Contains(t, backlog, broker.Backlog{Topic: cfg.Topics.Results, Partition: "0", Messages: 5}, "queue_backlog covers results")
	assert.Contains(t, backlog, broker.Backlog{Topic: cfg.Topics.Poison(cfg.Topics.Results), Partition: "0", Messages: 0}, "and poison queues")
}

// cutProxy forwards TCP connections to target until cut closes them all
// and refuses new ones for a while: a network failure between eventpipe
// and RabbitMQ, without restarting the RabbitMQ other tests share.
type cutProxy struct {
	ln     net.Listener
	target string

	mu          sync.Mutex
	conns       []net.Conn
	refuseUntil time.Time
}

func newCutProxy(t *testing.T, target string) *cutProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p := &cutProxy{ln: ln, target: target}
	t.Cleanup(func() { _ = ln.Close(); p.cut(0) })
	go p.serve()
	return p
}

func (p *cutProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		refuse := time.Now().Before(p.refuseUntil)
		p.mu.Unlock()
		if refuse {
			_ = c.Close()
			continue
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c, up)
		p.mu.Unlock()
		go func() { _, _ = io.Copy(up, c); _ = up.Close() }()
		go func() { _, _ = io.Copy(c, up); _ = c.Close() }()
	}
}

// cut closes every connection and refuses new ones for down.
func (p *cutProxy) cut(down time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.refuseUntil = time.Now().Add(down)
	for _, c := range p.conns {
		_ = c.Close()
	}
	p.conns = nil
}

func TestAMQP_connections_cut_under_load_reconnect_and_lose_nothing(t *testing.T) {
	t.Parallel()
	tgt := amqpTarget(t)
	u, err := url.Parse(tgt.provider.amqpURL)
	require.NoError(t, err)
	proxy := newCutProxy(t, u.Host)
	prov := *tgt.provider
	u.Host = proxy.ln.Addr().String()
	prov.amqpURL = u.String()
	tgt.provider = &prov
	runWithRestart(t, tgt, 3000, func(context.Context) error {
		proxy.cut(2 * time.Second)
		return nil
	})
}
