package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/eventpipe/eventpipe/broker"
	"github.com/eventpipe/eventpipe/config"
	"github.com/eventpipe/eventpipe/middleware"
)

// kafkaDLQConfig starts an in-process kfake and writes a config for it
// with topics of their own; it returns the file and a broker on it.
func kafkaDLQConfig(t *testing.T) (string, *broker.Kafka) {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1))
	require.NoError(t, err)
	t.Cleanup(c.Close)
	id := strings.ReplaceAll(strings.ToLower(t.Name()), "/", "-")
	yaml := fmt.Sprintf(`broker:
  kind: kafka
  kafka:
    brokers: [%q]
    consumer_group: %q
topics: {events: %s-events, tasks: %s-tasks, results: %s-results}
`, c.ListenAddrs()[0], id, id, id, id)
	file := filepath.Join(t.TempDir(), "eventpipe.yaml")
	require.NoError(t, os.WriteFile(file, []byte(yaml), 0o600))
	cfg := loadConfig(t, file)
	k, err := broker.NewKafka(cfg.Broker.Kafka, cfg.Topics, nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = k.Close() })
	return file, k
}

func poisonMessage(id, origin, handler, kind, reason, payload string) *message.Message {
	m := message.NewMessage(id, []byte(payload))
	m.Metadata.Set(broker.MetaTopicPoisoned, origin)
	m.Metadata.Set(broker.MetaHandlerPoisoned, handler)
	m.Metadata.Set(broker.MetaReasonKind, kind)
	m.Metadata.Set(broker.MetaReasonPoisoned, reason)
	return m
}

func TestDLQ_poison_metadata_keys_are_the_middleware_ones(t *testing.T) {
	t.Parallel()
	assert.Equal(t, middleware.ReasonKindKey, broker.MetaReasonKind)
}

func TestDLQ_usage_errors_exit_2(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		args []string
		want string
	}{
		{name: "no subcommand", args: []string{"dlq"}, want: "list or replay"},
		{name: "unknown subcommand", args: []string{"dlq", "purge"}, want: `unknown dlq subcommand "purge"`},
		{name: "stray argument", args: []string{"dlq", "list", "extra"}, want: `unexpected argument "extra"`},
		{name: "negative limit", args: []string{"dlq", "list", "--limit", "-1"}, want: "--limit must be >= 0, got -1"},
		{name: "unknown flag", args: []string{"dlq", "replay", "--force"}, want: "force"},
		{name: "empty topic", args: []string{"dlq", "list", "--topic", " "}, want: "empty value"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			code, _, stderr := eventpipe(t, tt.args...)
			assert.Equal(t, 2, code)
			assert.Contains(t, stderr, tt.want)
		})
	}
}

func TestDLQ_on_the_embedded_broker_asks_the_running_process(t *testing.T) {
	t.Parallel()
	file := filepath.Join(t.TempDir(), "embedded.yaml")
	require.NoError(t, os.WriteFile(file, []byte("broker:\n  kind: embedded\nhttp:\n  addr: 127.0.0.1:1\n"), 0o600))
	for _, sub := range []string{"list", "replay"} {
		code, _, stderr := eventpipe(t, "dlq", sub, "--config", file)
		assert.Equal(t, 1, code, sub)
		assert.Contains(t, stderr, "is `eventpipe run` serving on http://127.0.0.1:1?", sub)
	}
}

func TestDLQ_list_shows_reason_origin_and_payload_without_consuming(t *testing.T) {
	t.Parallel()
	file, k := kafkaDLQConfig(t)
	cfg := loadConfig(t, file)
	events, tasks := cfg.Topics.Events, cfg.Topics.Tasks
	pub := k.Publisher()
	require.NoError(t, pub.Publish(cfg.Topics.Poison(events),
		poisonMessage("ev-1", events, "trigger", "permanent", "decode event ev-1: invalid JSON\nat byte 3", `{"broken`),
		poisonMessage("ev-2", events, "trigger", "permanent", "rule \"r1\": template error", `{"eventType":"x"}`)))
	require.NoError(t, pub.Publish(cfg.Topics.Poison(tasks),
		poisonMessage("task-1", tasks, "executor", "permanent", `unknown executor "nope"`, strings.Repeat("x", 200))))

	for range 2 { // the second run sees the same: listing consumed nothing
		code, stdout, stderr := eventpipe(t, "dlq", "list", "--config", file)
		require.Equal(t, 0, code, stderr)
		lines := strings.Split(strings.TrimSpace(stdout), "\n")
		require.Len(t, lines, 5, stdout) // header, 3 rows, summary
		assert.Regexp(t, `^TOPIC\s+POSITION\s+UUID\s+KIND\s+ORIGIN\s+HANDLER\s+REASON\s+PAYLOAD$`, lines[0])
		assert.Regexp(t, `ev-1\s+permanent\s+`+events+`\s+trigger\s+decode event ev-1: invalid JSON at byte 3\s+"\{\\"broken"$`, lines[1],
			"a multi-line reason is one line")
		assert.Contains(t, lines[3], `unknown executor "nope"`)
		assert.Contains(t, lines[3], `…(200 bytes)`, "a long payload is cut")
		assert.Equal(t, cfg.Topics.Poison(events)+": 2 waiting, 2 shown; "+cfg.Topics.Poison(tasks)+": 1 waiting, 1 shown", lines[4])
	}

	tests := []struct {
		name    string
		args    []string
		wantIDs []string
	}{
		{name: "reason filter matches the reason text in any case", args: []string{"--reason", "TEMPLATE"}, wantIDs: []string{"ev-2"}},
		{name: "reason filter matches the reason kind", args: []string{"--reason", "permanent"}, wantIDs: []string{"ev-1", "ev-2", "task-1"}},
		{name: "topic by its origin name", args: []string{"--topic", tasks}, wantIDs: []string{"task-1"}},
		{name: "topic by its poison name", args: []string{"--topic", cfg.Topics.Poison(events)}, wantIDs: []string{"ev-1", "ev-2"}},
		{name: "limit per topic", args: []string{"--limit", "1"}, wantIDs: []string{"ev-1", "task-1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"dlq", "list", "--config", file, "--json"}, tt.args...)
			code, stdout, stderr := eventpipe(t, args...)
			require.Equal(t, 0, code, stderr)
			var ids []string
			sc := bufio.NewScanner(strings.NewReader(stdout))
			for sc.Scan() {
				var row dlqJSON
				require.NoError(t, json.Unmarshal(sc.Bytes(), &row), sc.Text())
				ids = append(ids, row.UUID)
				assert.NotEmpty(t, row.Origin)
				assert.NotContains(t, row.Metadata, broker.MetaReasonPoisoned, "poison metadata has fields of its own")
			}
			assert.Equal(t, tt.wantIDs, ids)
		})
	}
}

func TestDLQ_replay_sends_matching_messages_to_their_origin_once(t *testing.T) {
	t.Parallel()
	file, k := kafkaDLQConfig(t)
	cfg := loadConfig(t, file)
	events := cfg.Topics.Events
	dlq := cfg.Topics.Poison(events)
	require.NoError(t, k.Publisher().Publish(dlq,
		poisonMessage("ev-1", events, "trigger", "permanent", "invalid JSON", `{`),
		poisonMessage("ev-2", events, "trigger", "permanent", "template error", `{}`)))

	code, stdout, stderr := eventpipe(t, "dlq", "replay", "--config", file, "--reason", "template", "--dry-run")
	require.Equal(t, 0, code, stderr)
	assert.Contains(t, stdout, "would replay ev-2 from "+dlq+" to "+events+" (permanent: template error)")
	assert.Contains(t, stdout, "would replay 1 poison messages")
	msgs, waiting, err := k.ListPoison(t.Context(), dlq, 0)
	require.NoError(t, err)
	assert.Equal(t, 2, waiting, "a dry run changes nothing")
	assert.Len(t, msgs, 2)

	code, stdout, stderr = eventpipe(t, "dlq", "replay", "--config", file, "--reason", "template")
	require.Equal(t, 0, code, stderr)
	assert.Contains(t, stdout, "replayed ev-2 from "+dlq+" to "+events)
	assert.Contains(t, stdout, "replayed 1 poison messages")

	code, stdout, stderr = eventpipe(t, "dlq", "replay", "--config", file, "--reason", "template")
	require.Equal(t, 0, code, stderr)
	assert.Contains(t, stdout, "replayed 0 poison messages", "a replayed message is not replayed twice")

	code, stdout, stderr = eventpipe(t, "dlq", "list", "--config", file, "--json", "--topic", events)
	require.Equal(t, 0, code, stderr)
	assert.Equal(t, 1, strings.Count(stdout, "\n"), stdout)
	assert.Contains(t, stdout, `"uuid":"ev-1"`)
}

func TestDLQ_replay_without_topic_poisoned_goes_to_the_topic_named_by_the_poison_topic(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		pm     broker.PoisonMessage
		wantTo string
		wantOK bool
	}{
		{name: "topic_poisoned agrees with the poison topic", pm: broker.PoisonMessage{Topic: "a.dlq", Message: poisonMessage("1", "a", "h", "k", "r", "")},
			wantTo: "a", wantOK: true},
		{name: "topic_poisoned naming another topic is refused",
			pm: broker.PoisonMessage{Topic: "business-events.dlq", Message: poisonMessage("1", "schedule-tasks", "h", "k", "r", "")}},
		{name: "dead-lettered by RabbitMQ: the poison topic without the suffix",
			pm: broker.PoisonMessage{Topic: "a.dlq", Message: message.NewMessage("1", nil)}, wantTo: "a", wantOK: true},
		{name: "no way to tell", pm: broker.PoisonMessage{Topic: "a", Message: message.NewMessage("1", nil)}},
		{name: "the suffix alone names no topic", pm: broker.PoisonMessage{Topic: ".dlq", Message: message.NewMessage("1", nil)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			to, ok, why := origin(tt.pm, ".dlq")
			assert.Equal(t, tt.wantOK, ok, why)
			assert.Equal(t, tt.wantTo, to)
		})
	}
}

func loadConfig(t *testing.T, file string) *config.Config {
	t.Helper()
	cfg, err := config.Load(file)
	require.NoError(t, err)
	return cfg
}

func TestDLQ_replay_skips_a_truncated_poison_copy(t *testing.T) {
	t.Parallel()
	file, k := kafkaDLQConfig(t)
	cfg := loadConfig(t, file)
	events := cfg.Topics.Events
	dlq := cfg.Topics.Poison(events)
	cut := poisonMessage("big-1", events, "trigger", "permanent", "event too large", `{"eventType":"a","payload":{"x":"xx`)
	cut.Metadata.Set(broker.MetaPayloadTruncated, "2097152")
	require.NoError(t, k.Publisher().Publish(dlq, cut))

	code, stdout, stderr := eventpipe(t, "dlq", "replay", "--config", file)
	require.Equal(t, 0, code, stderr)
	assert.Contains(t, stderr, "skip big-1")
	assert.Contains(t, stderr, "2097152-byte payload")
	assert.Contains(t, stdout, "replayed 0 poison messages")
}

func TestDLQ_replay_skips_a_poison_copy_with_cut_metadata(t *testing.T) {
	t.Parallel()
	file, k := kafkaDLQConfig(t)
	cfg := loadConfig(t, file)
	events := cfg.Topics.Events
	dlq := cfg.Topics.Poison(events)
	cut := poisonMessage("hdr-1", events, "trigger", "permanent", "invalid JSON", `{"eventType":"a"}`)
	cut.Metadata.Set(broker.MetaMetadataTruncated, "blob,trace")
	require.NoError(t, k.Publisher().Publish(dlq, cut))

	code, stdout, stderr := eventpipe(t, "dlq", "replay", "--config", file)
	require.Equal(t, 0, code, stderr)
	assert.Contains(t, stderr, "skip hdr-1")
	assert.Contains(t, stderr, "metadata blob,trace was cut")
	assert.Contains(t, stdout, "replayed 0 poison messages")
}
