package integration_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/eventpipe/eventpipe/config"
	"github.com/eventpipe/eventpipe/executor"
	"github.com/eventpipe/eventpipe/pipeline"
	"github.com/eventpipe/eventpipe/task"
)

// BenchmarkKafka compares, in one run on one kfake broker process (so the
// broker's CPU is not counted as ours), eventpipe with its shipped defaults
// against a bare franz-go client doing the least a stream processor does
// with the same events:
//
//	raw        consume business-events in a group, produce one record per
//	           event to another topic (12 partitions each), commit
//	eventpipe  event → rule → task → log executor → result (two stages:
//	           two consumes, three produces per event)
//
// The events are preloaded; one op is one event, timed from start until the
// last output record is acknowledged. Each reports events/s, its process
// CPU per event (cpu-µs/event) and the broker's (broker-cpu-µs/event).
// make bench runs it with -benchtime 50000x and prints the ratio.
func BenchmarkKafka(b *testing.B) {
	kb := startKfakeProcess(b)
	b.Run("raw", func(b *testing.B) { benchKafkaRaw(b, kb) })
	b.Run("eventpipe", func(b *testing.B) {
		benchKafkaPipeline(b, kb, nil, func(brokers []string, cfg *config.Config, n int) {
			produceEvents(b, brokers, cfg.Topics.Events, n)
		}, nil)
	})
}

// BenchmarkKafkaSlowTasks runs tasks that take 10 ms each (many keys, a
// 6-partition tasks topic) through the executor at concurrency 8, 64 and
// 256: tasks/s should approach concurrency / 10 ms, whatever the partition
// count. The tasks are preloaded on the tasks topic; one op is one task.
func BenchmarkKafkaSlowTasks(b *testing.B) {
	kb := startKfakeProcess(b)
	for _, n := range []int{8, 64, 256} {
		b.Run("concurrency_"+strconv.Itoa(n), func(b *testing.B) {
			sleep := executor.Func(func(ctx context.Context, _ *task.Task) ([]byte, error) {
				select {
				case <-time.After(10 * time.Millisecond):
					return nil, nil
				case <-ctx.Done():
					return nil, ctx.Err()
				}
			})
			benchKafkaPipeline(b, kb, func(c *config.Config) { c.Executor.Concurrency = n },
				func(brokers []string, cfg *config.Config, count int) {
					produceTasks(b, brokers, cfg.Topics.Tasks, count)
				}, []pipeline.Option{pipeline.WithExecutor("sleep", sleep)})
			b.ReportMetric(float64(n)/0.010, "ideal-tasks/s")
		})
	}
}

// kfakeProcess is a kfake broker running as a child process.
type kfakeProcess struct {
	addr string
	pid  int
}

// startKfakeProcess builds and starts faults/cmd/kfake.
func startKfakeProcess(b *testing.B) kfakeProcess {
	b.Helper()
	bin := filepath.Join(b.TempDir(), "kfake")
	build := exec.Command("go", "build", "-o", bin, "../faults/cmd/kfake")
	build.Stderr = os.Stderr
	require.NoError(b, build.Run(), "build kfake")
	cmd := exec.Command(bin, "-port", "0")
	out, err := cmd.StdoutPipe()
	require.NoError(b, err)
	cmd.Stderr = os.Stderr
	require.NoError(b, cmd.Start())
	b.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	require.NoError(b, err, "kfake did not start")
	go func() { _, _ = io.Copy(io.Discard, out) }()
	f := strings.Fields(line) // kfake listening on HOST:PORT ...
	require.GreaterOrEqual(b, len(f), 4, "kfake said %q", line)
	return kfakeProcess{addr: f[3], pid: cmd.Process.Pid}
}

// cpuMeter measures this process's CPU and the broker's over the timed part.
type cpuMeter struct {
	self, broker time.Duration
	brokerPID    int
}

func startCPU(brokerPID int) cpuMeter {
	return cpuMeter{self: selfCPU(), broker: procCPU(brokerPID), brokerPID: brokerPID}
}

func (m cpuMeter) report(b *testing.B, n int, elapsed time.Duration) {
	self, broker := selfCPU()-m.self, procCPU(m.brokerPID)-m.broker
	b.ReportMetric(float64(n)/elapsed.Seconds(), "events/s")
	b.ReportMetric(float64(self.Microseconds())/float64(n), "cpu-µs/event")
	b.ReportMetric(float64(broker.Microseconds())/float64(n), "broker-cpu-µs/event")
}

func selfCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// procCPU reads utime+stime of pid from /proc (clock ticks of 10 ms).
func procCPU(pid int) time.Duration {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(raw)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}

func benchClient(b *testing.B, addr string, opts ...kgo.Opt) *kgo.Client {
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(addr)}, opts...)...)
	require.NoError(b, err)
	b.Cleanup(cl.Close)
	return cl
}

func createTopic(b *testing.B, cl *kgo.Client, topic string, partitions int32) {
	_, err := kadm.NewClient(cl).CreateTopic(b.Context(), partitions, 1, nil, topic)
	require.NoError(b, err)
}

// produceEvents preloads n seed-format events on topic, keyed by event id.
func produceEvents(b *testing.B, brokers []string, topic string, n int) {
	cl := benchClient(b, brokers[0])
	recs := make([]*kgo.Record, n)
	for i := range recs {
		id := fmt.Sprintf("bench-%d", i)
		recs[i] = &kgo.Record{Topic: topic, Key: []byte(id), Value: fmt.Appendf(nil,
			`{"messageId":%q,"eventType":"order.created","source":"bench","payload":{"orderId":"o-%d","amount":%d},"metadata":{"traceId":"t-%d"}}`,
			id, i, 200+i%1000, i)}
	}
	require.NoError(b, cl.ProduceSync(b.Context(), recs...).FirstErr())
}

// produceTasks preloads n tasks for the "sleep" executor, each its own key.
func produceTasks(b *testing.B, brokers []string, topic string, n int) {
	cl := benchClient(b, brokers[0])
	recs := make([]*kgo.Record, n)
	for i := range recs {
		t := task.Task{TaskID: fmt.Sprintf("slow-%d", i), TaskName: "slow", TaskType: "sleep", Priority: "MEDIUM",
			RuleID: "bench", EventID: fmt.Sprintf("e-%d", i), EventType: "bench", CreatedAt: time.Now()}
		raw, err := json.Marshal(t)
		require.NoError(b, err)
		recs[i] = &kgo.Record{Topic: topic, Key: []byte(t.TaskID), Value: raw,
			Headers: []kgo.RecordHeader{{Key: task.MetaTaskID, Value: []byte(t.TaskID)}}}
	}
	require.NoError(b, cl.ProduceSync(b.Context(), recs...).FirstErr())
}

// waitForRecords waits until topic holds n records.
func waitForRecords(b *testing.B, adm *kadm.Client, topic string, n int64, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for {
		ends, err := adm.ListEndOffsets(b.Context(), topic)
		var total int64
		if err == nil {
			ends.Each(func(o kadm.ListedOffset) { total += o.Offset })
		}
		if total >= n {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("%s holds %d of %d records after %s", topic, total, n, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func benchKafkaRaw(b *testing.B, kb kfakeProcess) {
	id := testID()
	in, out := "raw-"+id+"-in", "raw-"+id+"-out"
	admin := benchClient(b, kb.addr)
	createTopic(b, admin, in, 12)
	createTopic(b, admin, out, 12)
	produceEvents(b, []string{kb.addr}, in, b.N)
	adm := kadm.NewClient(admin)

	b.ReportAllocs()
	b.ResetTimer()
	cpu := startCPU(kb.pid)
	start := time.Now()
	cl := benchClient(b, kb.addr, kgo.ConsumerGroup("raw-"+id), kgo.ConsumeTopics(in),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.DisableAutoCommit(),
		kgo.RequiredAcks(kgo.AllISRAcks()))
	done := make(chan struct{})
	go func() {
		defer close(done)
		for produced := 0; produced < b.N; {
			fetches := cl.PollFetches(b.Context())
			if fetches.IsClientClosed() || b.Context().Err() != nil {
				return
			}
			recs := fetches.Records()
			outs := make([]*kgo.Record, len(recs))
			for i, r := range recs {
				outs[i] = &kgo.Record{Topic: out, Key: r.Key, Value: r.Value}
			}
			if err := cl.ProduceSync(b.Context(), outs...).FirstErr(); err != nil {
				b.Error(err)
				return
			}
			if err := cl.CommitRecords(b.Context(), recs...); err != nil {
				b.Error(err)
				return
			}
			produced += len(recs)
		}
	}()
	waitForRecords(b, adm, out, int64(b.N), max(time.Minute, time.Duration(b.N)*time.Millisecond))
	elapsed := time.Since(start)
	b.StopTimer()
	cpu.report(b, b.N, elapsed)
	<-done
}

// benchKafkaPipeline runs eventpipe on kb with its defaults (mutate may
// change them) after preload put b.N messages on its input, and times it
// until b.N results are published.
func benchKafkaPipeline(b *testing.B, kb kfakeProcess, mutate func(*config.Config),
	preload func([]string, *config.Config, int), opts []pipeline.Option) {
	id := testID()
	cfg := config.Default()
	cfg.Broker.Kind = config.BrokerKafka
	cfg.Broker.Kafka.Brokers = []string{kb.addr}
	cfg.Broker.Kafka.ConsumerGroup = "bench-" + id
	cfg.Topics.Events = "bench-" + id + "-business-events"
	cfg.Topics.Tasks = "bench-" + id + "-schedule-tasks"
	cfg.Topics.Results = "bench-" + id + "-task-results"
	cfg.Broker.Kafka.Partitions = map[string]int{cfg.Topics.Events: 12, cfg.Topics.Tasks: 6}
	cfg.HTTP.Addr = "127.0.0.1:0"
	cfg.Dedup.MaxEntries = b.N + 1
	rules := filepath.Join(b.TempDir(), "rules.yaml")
	require.NoError(b, os.WriteFile(rules, []byte(`taskTriggerRules:
  - ruleId: "bench-log"
    eventType: "order.*"
    taskName: "log-${payload.orderId}"
    taskType: "log"
    parameters: {message: "order ${payload.orderId} of ${payload.amount}"}
`), 0o600))
	cfg.Rules.File = rules
	if mutate != nil {
		mutate(cfg)
	}
	admin := benchClient(b, kb.addr)
	for topic, n := range map[string]int32{cfg.Topics.Events: 12, cfg.Topics.Tasks: 6, cfg.Topics.Results: 1} {
		createTopic(b, admin, topic, n)
	}
	preload(cfg.Broker.Kafka.Brokers, cfg, b.N)
	adm := kadm.NewClient(admin)
	quiet := slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelInfo}))

	b.ReportAllocs()
	b.ResetTimer()
	cpu := startCPU(kb.pid)
	start := time.Now()
	p, err := pipeline.New(cfg, append([]pipeline.Option{pipeline.WithLogger(quiet)}, opts...)...)
	require.NoError(b, err)
	ctx, cancel := context.WithCancel(b.Context())
	runDone := make(chan error, 1)
	go func() { runDone <- p.Run(ctx) }()
	waitForRecords(b, adm, cfg.Topics.Results, int64(b.N), max(time.Minute, time.Duration(b.N)*time.Millisecond))
	elapsed := time.Since(start)
	b.StopTimer()
	cpu.report(b, b.N, elapsed)
	cancel()
	require.NoError(b, <-runDone)
}
