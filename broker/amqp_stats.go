package broker

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/prometheus/client_golang/prometheus"
	amqp091 "github.com/rabbitmq/amqp091-go"
)

// amqpStats counts what the AMQP broker reports as metrics.
type amqpStats struct {
	blocked          atomic.Bool
	blockedPublishes atomic.Uint64
	unroutable       atomic.Uint64

	mu      sync.Mutex
	dropped map[[2]string]uint64 // {queue, reason} -> messages
}

func newAMQPStats() *amqpStats { return &amqpStats{dropped: map[[2]string]uint64{}} }

var (
	amqpBlockedDesc = prometheus.NewDesc("amqp_connection_blocked",
		"1 while RabbitMQ blocks eventpipe's publishing connection (memory or disk alarm), else 0.", nil, nil)
	amqpBlockedPublishesDesc = prometheus.NewDesc("amqp_publish_blocked_total",
		"Messages whose publish failed fast because RabbitMQ blocked the publishing connection.", nil, nil)
	amqpUnroutableDesc = prometheus.NewDesc("amqp_publish_unroutable_total",
		"Messages RabbitMQ returned as unroutable (no queue bound for them), after one redeclare.", nil, nil)
	queueDroppedDesc = prometheus.NewDesc("queue_dropped_total",
		"Messages the broker dropped from a bounded queue (results, poison), by queue and reason (maxlen, expired, rejected).",
		[]string{"topic", "reason"}, nil)
)

// Collector returns the broker's own metrics, for a Prometheus registry:
// amqp_connection_blocked, amqp_publish_blocked_total,
// amqp_publish_unroutable_total and queue_dropped_total{topic,reason}.
func (a *AMQP) Collector() prometheus.Collector { return amqpCollector{a.stats} }

type amqpCollector struct{ s *amqpStats }

func (c amqpCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- amqpBlockedDesc
	ch <- amqpBlockedPublishesDesc
	ch <- amqpUnroutableDesc
	ch <- queueDroppedDesc
}

func (c amqpCollector) Collect(ch chan<- prometheus.Metric) {
	blocked := 0.0
	if c.s.blocked.Load() {
		blocked = 1
	}
	ch <- prometheus.MustNewConstMetric(amqpBlockedDesc, prometheus.GaugeValue, blocked)
	ch <- prometheus.MustNewConstMetric(amqpBlockedPublishesDesc, prometheus.CounterValue, float64(c.s.blockedPublishes.Load()))
	ch <- prometheus.MustNewConstMetric(amqpUnroutableDesc, prometheus.CounterValue, float64(c.s.unroutable.Load()))
	c.s.mu.Lock()
	defer c.s.mu.Unlock()
	for k, n := range c.s.dropped {
		ch <- prometheus.MustNewConstMetric(queueDroppedDesc, prometheus.CounterValue, float64(n), k[0], k[1])
	}
}

// Blocked returns why RabbitMQ blocks the publishing connection, "" when it does not.
func (a *AMQP) Blocked() string {
	a.pub.mu.Lock()
	defer a.pub.mu.Unlock()
	return a.pub.blocked
}

// Dropped returns how many messages RabbitMQ dropped from queue for reason
// (maxlen, expired, rejected) since the broker started, as counted here.
func (a *AMQP) Dropped(queue, reason string) uint64 {
	a.stats.mu.Lock()
	defer a.stats.mu.Unlock()
	return a.stats.dropped[[2]string{queue, reason}]
}

// amqpDropLogEvery bounds the drop log lines: one per queue and interval.
const amqpDropLogEvery = 10 * time.Second

// countDropped consumes what RabbitMQ dead-letters with amqpDroppedKey (the
// messages it drops from bounded queues) from a private auto-delete queue,
// counts them by queue and reason and logs them, until the broker closes.
// Only drops while eventpipe runs are counted; with several processes each
// counts every drop.
func (a *AMQP) countDropped() {
	defer a.wg.Done()
	wait := 100 * time.Millisecond
	for a.ctx.Err() == nil {
		if err := a.countDroppedSession(); err != nil && a.ctx.Err() == nil {
			a.logger.Debug("AMQP drop counter stopped, starting again", watermill.LogFields{"err": err.Error()})
		}
		select {
		case <-a.ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, 3*time.Second)
	}
}

func (a *AMQP) countDroppedSession() error {
	conn, err := a.consumerConnection()
	if err != nil {
		return err
	}
	ch, err := conn.Channel()
	if err != nil {
		return err
	}
	defer func() { _ = ch.Close() }()
	if err := ch.ExchangeDeclare(a.topology.dlx, amqp091.ExchangeDirect, true, false, false, false, nil); err != nil {
		return err
	}
	q, err := ch.QueueDeclare("", false, true, true, false, nil)
	if err != nil {
		return err
	}
	if err := ch.QueueBind(q.Name, amqpDroppedKey, a.topology.dlx, false, nil); err != nil {
		return err
	}
	deliveries, err := ch.ConsumeWithContext(a.ctx, q.Name, "", true, true, false, false, nil)
	if err != nil {
		return err
	}
	lastLog := map[string]time.Time{}
	unlogged := map[string]uint64{}
	for d := range deliveries {
		queue, reason := deathOf(d)
		a.stats.mu.Lock()
		a.stats.dropped[[2]string{queue, reason}]++
		a.stats.mu.Unlock()
		unlogged[queue]++
		if time.Since(lastLog[queue]) >= amqpDropLogEvery {
			a.logger.Error("RabbitMQ dropped messages from a bounded queue", nil, watermill.LogFields{
				"topic": queue, "reason": reason, "dropped": unlogged[queue]})
			lastLog[queue] = time.Now()
			unlogged[queue] = 0
		}
	}
	return nil
}

// deathOf returns the queue a dead-lettered message left and why, from the
// first entry of its x-death header (the latest death).
func deathOf(d amqp091.Delivery) (queue, reason string) {
	deaths, _ := d.Headers["x-death"].([]any)
	if len(deaths) > 0 {
		if t, ok := deaths[0].(amqp091.Table); ok {
			queue, _ = t["queue"].(string)
			reason, _ = t["reason"].(string)
		}
	}
	if queue == "" {
		queue = "unknown"
	}
	if reason == "" {
		reason = "unknown"
	}
	return queue, reason
}
