//go:build faults

package faults_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/google/uuid"
	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
	"gopkg.in/yaml.v3"

	"github.com/eventpipe/eventpipe/task"
)

// Broker kinds the scenarios run on.
const (
	kafka = "kafka"
	amqp  = "amqp"
)

var brokers = []string{kafka, amqp}

// ledgerRule is the rule every scenario has: each fault.* event makes one
// shell task that appends to the ledger.
const ledgerRule = `  - ruleId: "ledger"
    eventType: "fault.#"
    taskName: "ledger-${eventId}"
    taskType: "shell"
    parameters:
      script: "{{script}}"
      args: ["{{ledger}}"]
`

// options shape a scenario's pipeline.
type options struct {
	// dedup is the task de-duplication store: memory (default) or redis.
	dedup string
	// rules are the rules below `taskTriggerRules:`; {{script}}, {{ledger}},
	// {{slow}} and {{dir}} (the scenario's directory) are replaced. Default: ledgerRule.
	rules string
	// allowed is the shell allowlist; default ledger.sh.
	allowed []string
	// Kafka partitions of the events and tasks topics; default 4 and 8.
	eventPartitions, taskPartitions int
	// Handler concurrency; default 4 (trigger) and 8 (executor).
	trigger, executor int
	// shutdown is shutdown_timeout; default 10s.
	shutdown time.Duration
	// kafkaMaxMessageBytes is kfake's message.max.bytes; 0 = its default.
	kafkaMaxMessageBytes int
	// prefetch is broker.amqp.prefetch, the messages in flight per queue
	// and process; default 256 (eventpipe's).
	prefetch int
	// publishTimeout is broker.kafka/amqp.publish_timeout; default 30s.
	publishTimeout time.Duration
	// extra are further config keys: a map is merged into the key's map
	// (extra["rules"]["budget"] adds rules.budget), any other value
	// replaces the key's.
	extra map[string]any
}

// env is one scenario on one broker: unique topics, exchange and consumer
// group, a rules file, a ledger, and for Kafka a kfake process of its own.
type env struct {
	t       *testing.T
	kind    string
	id      string
	dir     string
	opts    options
	kafka   *kfakeProc
	cfgPath string
	ledger  string
	slow    string // the slow flag file of ledger.sh
	events  string // topic names
	tasks   string
	results string
	started time.Time
	n       int // pipelines started, for names
}

func newEnv(t *testing.T, kind string, opts options) *env {
	t.Helper()
	if kind == amqp {
		need(t, "RabbitMQ", amqpMissing)
	}
	if opts.dedup == "redis" {
		need(t, "Redis", redisMissing)
	}
	id := "faults-" + uuid.NewString()[:8]
	dir := t.TempDir()
	e := &env{
		t: t, kind: kind, id: id, dir: dir, opts: opts,
		ledger: filepath.Join(dir, "ledger"), slow: filepath.Join(dir, "slow"),
		events: id + "-business-events", tasks: id + "-schedule-tasks", results: id + "-task-results",
		started: time.Now(),
	}
	if e.opts.rules == "" {
		e.opts.rules = ledgerRule
	}
	if len(e.opts.allowed) == 0 {
		e.opts.allowed = []string{ledgerScript}
	}
	e.opts.dedup = cmpOr(e.opts.dedup, "memory")
	e.opts.eventPartitions = cmpOr(e.opts.eventPartitions, 4)
	e.opts.taskPartitions = cmpOr(e.opts.taskPartitions, 8)
	e.opts.trigger = cmpOr(e.opts.trigger, 4)
	e.opts.executor = cmpOr(e.opts.executor, 8)
	e.opts.shutdown = cmpOr(e.opts.shutdown, 10*time.Second)
	e.opts.prefetch = cmpOr(e.opts.prefetch, 256)
	e.opts.publishTimeout = cmpOr(e.opts.publishTimeout, 30*time.Second)
	if kind == kafka {
		e.kafka = startKfake(t, dir, opts.kafkaMaxMessageBytes)
	} else {
		t.Cleanup(e.deleteAMQP)
	}
	rules := strings.NewReplacer("{{script}}", ledgerScript, "{{ledger}}", e.ledger, "{{slow}}", e.slow, "{{dir}}", dir).
		Replace("taskTriggerRules:\n" + e.opts.rules)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "rules.yaml"), []byte(rules), 0o600))
	e.writeConfig()
	return e
}

func cmpOr[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

// writeConfig writes the pipeline config for the current options.
func (e *env) writeConfig() {
	e.t.Helper()
	cfg := map[string]any{
		"broker": map[string]any{
			"kind": e.kind,
			"kafka": map[string]any{
				"consumer_group":  e.id,
				"partitions":      map[string]int{e.events: e.opts.eventPartitions, e.tasks: e.opts.taskPartitions},
				"publish_timeout": e.opts.publishTimeout.String(),
			},
			"amqp": map[string]any{"url": amqpURL, "exchange": e.id + ".exchange", "prefetch": e.opts.prefetch,
				"publish_timeout": e.opts.publishTimeout.String()},
		},
		"topics":   map[string]any{"events": e.events, "tasks": e.tasks, "results": e.results},
		"http":     map[string]any{"addr": "127.0.0.1:0"},
		"rules":    map[string]any{"file": filepath.Join(e.dir, "rules.yaml")},
		"trigger":  map[string]any{"concurrency": e.opts.trigger},
		"executor": map[string]any{"concurrency": e.opts.executor},
		"retry":    map[string]any{"max_retries": 3, "initial_interval": "100ms", "max_interval": "2s"},
		"dedup":    map[string]any{"store": e.opts.dedup, "redis_url": redisURL, "ttl": "2h"},
		"executors": map[string]any{"shell": map[string]any{
			"allowed_commands": e.opts.allowed, "default_timeout": "2m",
		}},
		"log":              map[string]any{"format": "json", "level": "info"},
		"shutdown_timeout": e.opts.shutdown.String(),
		// Crash marks of this scenario's processes only.
		"data_dir": filepath.Join(e.dir, "data"),
	}
	if e.kafka != nil {
		cfg["broker"].(map[string]any)["kafka"].(map[string]any)["brokers"] = []string{e.kafka.addr}
	}
	for k, v := range e.opts.extra {
		into, ok1 := cfg[k].(map[string]any)
		from, ok2 := v.(map[string]any)
		if !ok1 || !ok2 {
			cfg[k] = v
			continue
		}
		for kk, vv := range from {
			into[kk] = vv
		}
	}
	b, err := yaml.Marshal(cfg)
	require.NoError(e.t, err)
	e.cfgPath = filepath.Join(e.dir, "eventpipe.yaml")
	require.NoError(e.t, os.WriteFile(e.cfgPath, b, 0o600))
}

// start runs one more pipeline process on this scenario's config.
func (e *env) start() *pipeline {
	e.t.Helper()
	e.n++
	name := fmt.Sprintf("pipeline-%d", e.n)
	return startPipeline(e.t, name, e.cfgPath, filepath.Join(e.dir, name+".log"))
}

// event is one event the scenario sends.
type event struct {
	id   string
	json string
}

// faultEvents returns n fault.order events and the ledger task id each
// one makes.
func (e *env) faultEvents(prefix string, n int) ([]event, []string) {
	evs, want := make([]event, n), make([]string, n)
	for i := range n {
		id := fmt.Sprintf("%s-%s-%d", e.id, prefix, i)
		evs[i] = event{id: id, json: fmt.Sprintf(`{"messageId":%q,"eventType":"fault.order","payload":{"n":%d},"metadata":{"traceId":"trace-%s"}}`, id, i, id)}
		want[i] = task.ID(id, "ledger")
	}
	return evs, want
}

// publish sends events with `eventpipe publish` (the real CLI, a producer
// like any other) and requires every one to be sent.
func (e *env) publish(evs []event) {
	e.t.Helper()
	var b strings.Builder
	for _, ev := range evs {
		b.WriteString(ev.json)
		b.WriteByte('\n')
	}
	file := filepath.Join(e.dir, "events-"+uuid.NewString()[:6]+".jsonl")
	require.NoError(e.t, os.WriteFile(file, []byte(b.String()), 0o600))
	code, stdout, stderr := cli(e.t, 3*time.Minute, "publish", "--config", e.cfgPath, file)
	require.Equal(e.t, 0, code, "eventpipe publish: %s%s", stdout, stderr)
	require.Contains(e.t, stdout, fmt.Sprintf("sent %d, failed 0", len(evs)))
}

// entry is one ledger line: "start|done <task id> <pipeline pid>".
type entry struct {
	kind string
	id   string
	pid  int
}

// readLedger returns the ledger's lines so far.
func (e *env) readLedger() []entry {
	e.t.Helper()
	data, err := os.ReadFile(e.ledger)
	if os.IsNotExist(err) {
		return nil
	}
	require.NoError(e.t, err)
	// A script may be appending while we read: a read can see part of its
	// line (ext4 reads do not wait for a concurrent write). Only lines ended
	// by a newline are complete; the trailing fragment is read next time.
	lines := strings.Split(string(data), "\n")
	lines = lines[:len(lines)-1]
	var out []entry
	for _, line := range lines {
		fs := strings.Fields(line)
		if len(fs) != 3 {
			e.t.Fatalf("ledger line %q is not \"kind id pid\"", line)
		}
		pid, err := strconv.Atoi(fs[2])
		require.NoError(e.t, err)
		out = append(out, entry{kind: fs[0], id: fs[1], pid: pid})
	}
	return out
}

// done returns how many times each task id finished ("done" lines).
func done(entries []entry) map[string]int {
	runs := map[string]int{}
	for _, en := range entries {
		if en.kind == "done" {
			runs[en.id]++
		}
	}
	return runs
}

// tally compares the ledger with the expected task ids.
type tally struct {
	expected, executed, runs, lost int
	unexpected                     []string // ids that ran but were never expected
	duplicated                     []string // expected ids that ran more than once
}

func count(entries []entry, want []string) tally {
	runs := done(entries)
	tl := tally{expected: len(want)}
	wanted := make(map[string]bool, len(want))
	for _, id := range want {
		wanted[id] = true
		n := runs[id]
		tl.runs += n
		if n == 0 {
			tl.lost++
			continue
		}
		tl.executed++
		if n > 1 {
			tl.duplicated = append(tl.duplicated, id)
		}
	}
	for id := range runs {
		if !wanted[id] {
			tl.unexpected = append(tl.unexpected, id)
		}
	}
	return tl
}

// waitDone waits until every id in want finished at least once; on
// timeout it fails t naming how many are missing, with the logs of ps.
func (e *env) waitDone(want []string, timeout time.Duration, ps ...*pipeline) {
	e.t.Helper()
	if lost := e.tryDone(want, timeout); lost > 0 {
		e.t.Fatalf("%d of %d tasks not executed within %s%s", lost, len(want), timeout, logTails(ps))
	}
}

// tryDone is waitDone that returns how many tasks are still missing.
func (e *env) tryDone(want []string, timeout time.Duration) int {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		tl := count(e.readLedger(), want)
		if tl.lost == 0 || time.Now().After(deadline) {
			return tl.lost
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func logTails(ps []*pipeline) string {
	var logs strings.Builder
	for _, p := range ps {
		fmt.Fprintf(&logs, "\n--- %s (pid %d) ---\n%s", p.name, p.pid(), p.tail(25))
	}
	return logs.String()
}

// waitProgress waits until n distinct tasks of want finished.
func (e *env) waitProgress(want []string, n int, timeout time.Duration, ps ...*pipeline) {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		tl := count(e.readLedger(), want)
		if tl.executed >= n {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("want %d tasks executed within %s, got %d%s", n, timeout, tl.executed, logTails(ps))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitQuiet waits until the ledger did not grow for quiet: redeliveries
// have settled.
func (e *env) waitQuiet(quiet time.Duration) {
	e.t.Helper()
	last, since := -1, time.Now()
	for time.Since(since) < quiet {
		n := len(e.readLedger())
		if n != last {
			last, since = n, time.Now()
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// dlqRow is one line of `eventpipe dlq list --json`.
type dlqRow struct {
	Topic        string            `json:"topic"`
	UUID         string            `json:"uuid"`
	ReasonKind   string            `json:"reasonKind"`
	Reason       string            `json:"reason"`
	Origin       string            `json:"origin"`
	Handler      string            `json:"handler"`
	Metadata     map[string]string `json:"metadata"`
	PayloadBytes int               `json:"payloadBytes"`
	Payload      string            `json:"payload"`
}

// dlq lists every poison message of the events and tasks topics with the
// real `eventpipe dlq list`.
func (e *env) dlq() []dlqRow {
	e.t.Helper()
	code, stdout, stderr := cli(e.t, 2*time.Minute, "dlq", "list", "--config", e.cfgPath, "--json", "--limit", "0")
	require.Equal(e.t, 0, code, "eventpipe dlq list: %s", stderr)
	var rows []dlqRow
	sc := bufio.NewScanner(strings.NewReader(stdout))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		var r dlqRow
		require.NoError(e.t, json.Unmarshal(sc.Bytes(), &r), sc.Text())
		rows = append(rows, r)
	}
	return rows
}

// midTask returns the ids of entries that finished their side effect
// without being recorded in the Redis de-duplication store: tasks the
// SIGKILL cut off between running and being marked done.
func (e *env) midTask(entries []entry) map[string]bool {
	e.t.Helper()
	opts, err := redis.ParseURL(redisURL)
	require.NoError(e.t, err)
	c := redis.NewClient(opts)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pipe := c.Pipeline()
	cmds := make([]*redis.IntCmd, len(entries))
	for i, en := range entries {
		cmds[i] = pipe.Exists(ctx, "eventpipe:dedup:"+en.id)
	}
	_, err = pipe.Exec(ctx)
	require.NoError(e.t, err)
	out := map[string]bool{}
	for i, cmd := range cmds {
		if cmd.Val() == 0 {
			out[entries[i].id] = true
		}
	}
	return out
}

// deleteAMQP removes the scenario's queues and exchanges, best effort.
func (e *env) deleteAMQP() {
	conn, err := amqp091.Dial(amqpURL)
	if err != nil {
		return
	}
	defer conn.Close()
	for _, q := range []string{e.events, e.tasks, e.results} {
		for _, name := range []string{q, q + ".dlq"} {
			if ch, err := conn.Channel(); err == nil { // a failed delete closes the channel
				_, _ = ch.QueueDelete(name, false, false, false)
				_ = ch.Close()
			}
		}
	}
	for _, ex := range []string{e.id + ".exchange", e.id + ".exchange.dlx"} {
		if ch, err := conn.Channel(); err == nil {
			_ = ch.ExchangeDelete(ex, false, false)
			_ = ch.Close()
		}
	}
}

// rawAMQP publishes a message as a foreign producer would: to the events
// exchange with a routing key, any headers, publisher confirms.
func (e *env) rawAMQP(routingKey string, body []byte, headers amqp091.Table) {
	e.t.Helper()
	conn, err := amqp091.Dial(amqpURL)
	require.NoError(e.t, err)
	defer conn.Close()
	ch, err := conn.Channel()
	require.NoError(e.t, err)
	require.NoError(e.t, ch.Confirm(false))
	exchange := e.id + ".exchange"
	if routingKey == e.tasks { // tasks go straight to their queue
		exchange = ""
	}
	dc, err := ch.PublishWithDeferredConfirm(exchange, routingKey, false, false,
		amqp091.Publishing{Body: body, Headers: headers, DeliveryMode: amqp091.Persistent})
	require.NoError(e.t, err)
	ok, err := dc.WaitContext(e.t.Context())
	require.NoError(e.t, err)
	require.True(e.t, ok, "RabbitMQ nacked the raw message")
}

// rawKafka produces a record as a foreign producer would: no Watermill
// headers unless given.
func (e *env) rawKafka(topic string, key, value []byte, headers []sarama.RecordHeader) {
	e.t.Helper()
	sc := sarama.NewConfig()
	sc.Producer.Return.Successes = true
	sc.Producer.RequiredAcks = sarama.WaitForAll
	sc.Producer.MaxMessageBytes = 8 << 20
	prod, err := sarama.NewSyncProducer([]string{e.kafka.addr}, sc)
	require.NoError(e.t, err)
	defer prod.Close()
	msg := &sarama.ProducerMessage{Topic: topic, Value: sarama.ByteEncoder(value), Headers: headers}
	if key != nil {
		msg.Key = sarama.ByteEncoder(key)
	}
	_, _, err = prod.SendMessage(msg)
	require.NoError(e.t, err)
}

// record adds the scenario's figures to the report and logs them.
func (e *env) record(order int, scenario string, sent int, want []string, notes string) tally {
	e.t.Helper()
	tl := count(e.readLedger(), want)
	poisoned := len(e.dlq())
	r := row{
		order: order, Scenario: scenario, Broker: e.kind, Sent: sent, Expected: tl.expected, Executed: tl.executed,
		Runs: tl.runs, Duplicates: tl.runs - tl.executed, Poisoned: poisoned, Lost: tl.lost,
		Seconds: time.Since(e.started).Seconds(), Notes: notes,
	}
	results.add(r)
	e.t.Logf("%s on %s: sent %d, expected %d, executed %d, executions %d, duplicates %d, poisoned %d, lost %d in %.0fs; %s",
		scenario, e.kind, r.Sent, r.Expected, r.Executed, r.Runs, r.Duplicates, r.Poisoned, r.Lost, r.Seconds, notes)
	return tl
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	require.NoError(t, err)
	return b
}
