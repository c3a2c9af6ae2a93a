package integration_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/require"

	"github.com/eventpipe/eventpipe/config"
	"github.com/eventpipe/eventpipe/pipeline"
)

// benchRules is one rule making one log task per order event.
const benchRules = `taskTriggerRules:
  - ruleId: "bench"
    eventType: "order.created"
    taskName: "bench-${eventId}"
    taskType: "log"
    parameters: {orderId: "${payload.orderId}"}
`

// amqpBenchResults holds the figures of this run's last raw and eventpipe
// runs, for the ratio and the summary lines.
var amqpBenchResults struct {
	sync.Mutex
	raw, eventpipe benchResult
	n              int
}

// BenchmarkAMQPEndToEnd runs, in one run on the same RabbitMQ, (a) raw: a
// pipelined amqp091-go baseline doing the hops eventpipe does (consume +
// ack from the events queue, publish with confirms to a tasks queue,
// consume + ack, publish with confirms to a results queue), and (b)
// eventpipe: the whole pipeline with the shipped defaults
// (config/amqp.yaml over config.Default()) and one rule making a log task
// per event. b.N events are preloaded on the events queue first; the
// timer runs from starting the consumers until b.N results sit in the
// results queue. Reported: events/s, process CPU µs per event (getrusage
// delta over the timed part: the raw client's own CPU for raw, eventpipe's
// for eventpipe), RabbitMQ's CPU µs per event (beam.smp from /proc), and
// for eventpipe the ratio to raw's events/s. Run with a fixed count:
//
//	make bench-amqp   # -bench BenchmarkAMQPEndToEnd -benchtime 20000x
func BenchmarkAMQPEndToEnd(b *testing.B) {
	prov := amqpProvider.require(b)
	b.Run("raw", func(b *testing.B) {
		q := newBenchQueues(b, prov.amqpURL)
		q.preload(b, b.N, true)
		m := startMeasure()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		for _, hop := range [][2]string{{q.events, q.tasks}, {q.tasks, q.results}} {
			go func() {
				if err := rawHop(ctx, prov.amqpURL, hop[0], hop[1], 256); err != nil && ctx.Err() == nil {
					b.Errorf("raw hop %s -> %s: %v", hop[0], hop[1], err)
				}
			}()
		}
		q.waitResults(b, b.N)
		r := m.report(b, b.N)
		amqpBenchResults.Lock()
		amqpBenchResults.raw, amqpBenchResults.n = r, b.N
		amqpBenchResults.Unlock()
	})
	b.Run("eventpipe", func(b *testing.B) {
		q := newBenchQueues(b, prov.amqpURL)
		cfg, err := config.Load(filepath.Join("..", "config", "amqp.yaml"))
		require.NoError(b, err)
		cfg.Broker.AMQP.URL = prov.amqpURL
		cfg.Broker.AMQP.Exchange = q.exchange
		cfg.Topics.Events, cfg.Topics.Tasks, cfg.Topics.Results = q.events, q.tasks, q.results
		cfg.HTTP.Addr = "127.0.0.1:0"
		rules := filepath.Join(b.TempDir(), "rules.yaml")
		require.NoError(b, os.WriteFile(rules, []byte(benchRules), 0o600))
		cfg.Rules.File = rules
		// The shipped log level, written nowhere: formatting costs count.
		log := slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: logLevel(cfg.Log.Level)}))
		p, err := pipeline.New(cfg, pipeline.WithLogger(log))
		require.NoError(b, err)
		q.preload(b, b.N, false)
		m := startMeasure()
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- p.Run(ctx) }()
		q.waitResults(b, b.N)
		r := m.report(b, b.N)
		cancel()
		require.NoError(b, <-done)
		amqpBenchResults.Lock()
		defer amqpBenchResults.Unlock()
		amqpBenchResults.eventpipe = r
		if raw := amqpBenchResults.raw.eventsPerSec; raw > 0 {
			b.ReportMetric(r.eventsPerSec/raw, "ratio_vs_raw")
		}
	})
	res := &amqpBenchResults
	res.Lock()
	defer res.Unlock()
	raw, ep := res.raw, res.eventpipe
	if raw.eventsPerSec == 0 || ep.eventsPerSec == 0 {
		return
	}
	fmt.Printf("bench-amqp raw amqp091 (pipelined): %6.0f events/s  %6.1f µs client CPU/event     %6.1f µs RabbitMQ CPU/event\n",
		raw.eventsPerSec, raw.cpuPerEvent, raw.brokerPerEvent)
	fmt.Printf("bench-amqp eventpipe (defaults):    %6.0f events/s  %6.1f µs eventpipe CPU/event  %6.1f µs RabbitMQ CPU/event\n",
		ep.eventsPerSec, ep.cpuPerEvent, ep.brokerPerEvent)
	fmt.Printf("bench-amqp ratio eventpipe/raw: %.2f events/s (target >= 0.9); eventpipe CPU %.1f µs/event (target <= 100); %d events each\n",
		ep.eventsPerSec/raw.eventsPerSec, ep.cpuPerEvent, res.n)
}

func logLevel(s string) slog.Level {
	var l slog.Level
	if l.UnmarshalText([]byte(s)) != nil {
		return slog.LevelInfo
	}
	return l
}

// benchQueues are the unique exchange and queues of one benchmark run.
type benchQueues struct {
	url                              string
	exchange, events, tasks, results string
	conn                             *amqp091.Connection
}

func newBenchQueues(b *testing.B, url string) *benchQueues {
	id := testID()
	q := &benchQueues{url: url, exchange: "bench-" + id + ".exchange", events: "bench-" + id + "-events",
		tasks: "bench-" + id + "-tasks", results: "bench-" + id + "-results"}
	conn, err := amqp091.Dial(url)
	require.NoError(b, err)
	q.conn = conn
	b.Cleanup(func() {
		_ = conn.Close()
		deleteAMQP(url, []string{q.events, q.tasks, q.results}, q.exchange)
	})
	return q
}

// preload declares the exchange and events queue the way eventpipe does
// (and, for raw, the tasks and results queues too) and publishes n order
// events to the exchange, with confirms.
func (q *benchQueues) preload(b *testing.B, n int, raw bool) {
	ch, err := q.conn.Channel()
	require.NoError(b, err)
	defer ch.Close()
	require.NoError(b, ch.ExchangeDeclare(q.exchange, amqp091.ExchangeTopic, true, false, false, false, nil))
	args := amqp091.Table{"x-dead-letter-exchange": q.exchange + ".dlx", "x-dead-letter-routing-key": q.events + ".dlq"}
	_, err = ch.QueueDeclare(q.events, true, false, false, false, args)
	require.NoError(b, err)
	require.NoError(b, ch.QueueBind(q.events, "#", q.exchange, false, nil))
	if raw {
		// With eventpipe's arguments: a priority queue, a bounded queue.
		_, err = ch.QueueDeclare(q.tasks, true, false, false, false, amqp091.Table{"x-dead-letter-exchange": q.exchange + ".dlx",
			"x-dead-letter-routing-key": q.tasks + ".dlq", "x-max-priority": int32(10)})
		require.NoError(b, err)
		_, err = ch.QueueDeclare(q.results, true, false, false, false, amqp091.Table{"x-dead-letter-exchange": q.exchange + ".dlx",
			"x-dead-letter-routing-key": "eventpipe.dropped", "x-max-length": int64(100_000), "x-message-ttl": int64(7 * 24 * 3600 * 1000)})
		require.NoError(b, err)
	}
	require.NoError(b, ch.Confirm(false))
	events, _ := orderEvents("bench-"+strconv.Itoa(n), n)
	var last *amqp091.DeferredConfirmation
	for i, e := range events {
		last, err = ch.PublishWithDeferredConfirm(q.exchange, "order.created", false, false, amqp091.Publishing{
			DeliveryMode: amqp091.Persistent, ContentType: "application/json", Body: []byte(e)})
		require.NoError(b, err)
		if i%1000 == 999 {
			require.True(b, last.Wait(), "preload confirm")
		}
	}
	require.True(b, last.Wait(), "preload confirm")
}

// waitResults polls the results queue's depth until it holds n messages
// (eventpipe declares the queue with its first result).
func (q *benchQueues) waitResults(b *testing.B, n int) {
	deadline := time.Now().Add(max(2*time.Minute, time.Duration(n)*5*time.Millisecond))
	var ch *amqp091.Channel
	defer func() {
		if ch != nil {
			_ = ch.Close()
		}
	}()
	got := 0
	for time.Now().Before(deadline) {
		if ch == nil || ch.IsClosed() {
			var err error
			ch, err = q.conn.Channel() // a passive declare of a missing queue closes it
			require.NoError(b, err)
		}
		if info, err := ch.QueueDeclarePassive(q.results, true, false, false, false, nil); err == nil {
			if got = info.Messages; got >= n {
				return
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	b.Fatalf("results queue holds %d of %d messages", got, n)
}

// rawHop consumes from and publishes each body to `to` with confirms,
// pipelined: up to prefetch messages in flight, each delivery acked once
// its publish is confirmed.
func rawHop(ctx context.Context, url, from, to string, prefetch int) error {
	cconn, err := amqp091.Dial(url)
	if err != nil {
		return err
	}
	defer cconn.Close()
	pconn, err := amqp091.Dial(url)
	if err != nil {
		return err
	}
	defer pconn.Close()
	cch, err := cconn.Channel()
	if err != nil {
		return err
	}
	if err := cch.Qos(prefetch, 0, false); err != nil {
		return err
	}
	pch, err := pconn.Channel()
	if err != nil {
		return err
	}
	if err := pch.Confirm(false); err != nil {
		return err
	}
	confirms := pch.NotifyPublish(make(chan amqp091.Confirmation, 2*prefetch))
	var mu sync.Mutex
	pending := map[uint64]uint64{} // publish tag -> delivery tag
	go func() {
		for c := range confirms {
			mu.Lock()
			dtag := pending[c.DeliveryTag]
			delete(pending, c.DeliveryTag)
			mu.Unlock()
			if c.Ack {
				_ = cch.Ack(dtag, false)
			} else {
				_ = cch.Nack(dtag, false, true)
			}
		}
	}()
	deliveries, err := cch.Consume(from, "", false, false, false, false, nil)
	if err != nil {
		return err
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case d, ok := <-deliveries:
			if !ok {
				return fmt.Errorf("deliveries of %s closed", from)
			}
			mu.Lock()
			pending[pch.GetNextPublishSeqNo()] = d.DeliveryTag
			mu.Unlock()
			if err := pch.PublishWithContext(ctx, "", to, true, false, amqp091.Publishing{
				DeliveryMode: amqp091.Persistent, ContentType: "application/json", Body: d.Body}); err != nil {
				return err
			}
		}
	}
}

// benchMeasure is the process's and RabbitMQ's CPU time and the wall clock
// at the start of a timed part.
type benchMeasure struct {
	start     time.Time
	cpu       time.Duration
	brokerPID int
	brokerCPU time.Duration
}

type benchResult struct {
	eventsPerSec, cpuPerEvent, brokerPerEvent float64
}

func startMeasure() benchMeasure {
	pid := beamPID()
	return benchMeasure{start: time.Now(), cpu: processCPU(), brokerPID: pid, brokerCPU: pidCPU(pid)}
}

func (m benchMeasure) report(b *testing.B, n int) benchResult {
	elapsed := time.Since(m.start)
	cpu := processCPU() - m.cpu
	r := benchResult{
		eventsPerSec: float64(n) / elapsed.Seconds(),
		cpuPerEvent:  float64(cpu.Microseconds()) / float64(n),
	}
	b.ReportMetric(r.eventsPerSec, "events/s")
	b.ReportMetric(r.cpuPerEvent, "cpu_µs/event")
	if m.brokerPID > 0 {
		r.brokerPerEvent = float64((pidCPU(m.brokerPID) - m.brokerCPU).Microseconds()) / float64(n)
		b.ReportMetric(r.brokerPerEvent, "rabbitmq_cpu_µs/event")
	}
	return r
}

// processCPU is this process's user + system CPU time.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// beamPID finds RabbitMQ's Erlang VM (beam.smp) in /proc, 0 if none.
func beamPID() int {
	dirs, _ := os.ReadDir("/proc")
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		comm, err := os.ReadFile(filepath.Join("/proc", d.Name(), "comm"))
		if err == nil && strings.TrimSpace(string(comm)) == "beam.smp" {
			return pid
		}
	}
	return 0
}

// pidCPU is utime + stime of pid from /proc/<pid>/stat (clock ticks of
// 1/100 s, Linux's USER_HZ).
func pidCPU(pid int) time.Duration {
	if pid <= 0 {
		return 0
	}
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name, which is in parentheses.
	s := string(raw)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(fields) < 13 {
		return 0
	}
	utime, _ := strconv.ParseInt(fields[11], 10, 64)
	stime, _ := strconv.ParseInt(fields[12], 10, 64)
	return time.Duration(utime+stime) * 10 * time.Millisecond
}
