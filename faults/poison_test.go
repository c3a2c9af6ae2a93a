//go:build faults

package faults_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"
	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/eventpipe/eventpipe/task"
)

// poisonRules add to the ledger rule a rule whose template needs a value
// the events lack, and one whose condition fails at run time.
const poisonRules = ledgerRule + `  - ruleId: "tmpl"
    eventType: "poison.template"
    taskName: "tmpl-${eventId}"
    taskType: "shell"
    parameters:
      script: "{{script}}"
      args: ["{{ledger}}"]
      customer: "${payload.customer.id}"
  - ruleId: "cond"
    eventType: "poison.condition"
    condition: "len(payload.items) > 0"
    taskName: "cond-${eventId}"
    taskType: "shell"
    parameters:
      script: "{{script}}"
      args: ["{{ledger}}"]
`

// poisonInput is one message a foreign producer sends that must be poisoned.
type poisonInput struct {
	name    string
	toTasks bool   // sent to the tasks topic rather than the events topic
	body    []byte // contains marker, by which its poison copy is found
	marker  string
	headers amqp091.Table // RabbitMQ only
	reason  []string      // substrings of reason_poisoned
	// metadata the poison copy must carry (headers made strings)
	metadata map[string]string
}

// TestPoison sends every kind of poison a producer can send between
// well-formed events. Each must land on the right .dlq with its reason, the
// well-formed events around them must all run, and the handlers' counters
// must add up: received = acked + poisoned, nothing nacked or redelivered.
func TestPoison(t *testing.T) {
	const valid = 200 // before and after the poison, half each
	for _, kind := range brokers {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, kind, options{rules: poisonRules, kafkaMaxMessageBytes: 8 << 20})
			mark := func(what string) string { return e.id + "-" + what }
			unknownTask := task.Task{TaskID: mark("unknown-task"), TaskName: "x", TaskType: "nope", RuleID: "none", EventID: mark("none")}
			inputs := []poisonInput{
				{name: "invalid JSON", marker: mark("json"),
					body:   []byte(`{"messageId":"` + mark("json") + `","eventType":"fault.order","payload":{"n":`),
					reason: []string{"JSON"}},
				{name: "missing eventType", marker: mark("notype"),
					body:   []byte(`{"messageId":"` + mark("notype") + `","payload":{}}`),
					reason: []string{"eventType"}},
				{name: "payload is an array", marker: mark("array"),
					body:   []byte(`{"messageId":"` + mark("array") + `","eventType":"fault.order","payload":[1,2]}`),
					reason: []string{"payload"}},
				{name: "2 MiB event", marker: mark("big"),
					body: []byte(`{"messageId":"` + mark("big") + `","eventType":"fault.order","payload":{"blob":"` +
						strings.Repeat("x", 2<<20) + `"}}`),
					reason: []string{"bytes"}},
				{name: "invalid UTF-8", marker: mark("utf8"),
					body:   []byte(`{"messageId":"` + mark("utf8") + `","eventType":"fault.order","payload":{"s":"` + "\xff\xfe" + `"}}`),
					reason: []string{"UTF-8"}},
				{name: "template error", marker: mark("tmpl"),
					body:   []byte(`{"messageId":"` + mark("tmpl") + `","eventType":"poison.template","payload":{}}`),
					reason: []string{`rule "tmpl"`, "payload.customer.id", "missing value"}},
				{name: "condition fails at run time", marker: mark("cond"),
					body:   []byte(`{"messageId":"` + mark("cond") + `","eventType":"poison.condition","payload":{"items":5}}`),
					reason: []string{`rule "cond"`, "evaluation failed", "len"}},
				{name: "unknown taskType", marker: mark("unknown-task"), toTasks: true,
					body: mustJSON(t, unknownTask), reason: []string{`unknown executor "nope"`}},
			}
			// The tasks of well-formed events, including the foreign ones below.
			before, want1 := e.faultEvents("before", valid/2)
			after, want2 := e.faultEvents("after", valid/2)
			want := append(want1, want2...)
			sent := valid + len(inputs)

			p := e.start()
			e.publish(before)
			for _, in := range inputs {
				topic := e.events
				if in.toTasks {
					topic = e.tasks
				}
				if kind == kafka {
					e.rawKafka(topic, nil, in.body, nil)
				} else {
					key := "fault.order"
					if in.toTasks {
						key = e.tasks
					}
					e.rawAMQP(key, in.body, in.headers)
				}
			}
			// Foreign producers' own habits, which must not poison a good event.
			foreign := mark("foreign")
			foreignEvent := []byte(`{"messageId":"` + foreign + `","eventType":"fault.order","payload":{}}`)
			want = append(want, task.ID(foreign, "ledger"))
			sent++
			var headerCase poisonInput
			if kind == kafka {
				// No Watermill UUID header, a record key, a binary header.
				e.rawKafka(e.events, []byte("key-1"), foreignEvent, []sarama.RecordHeader{{Key: []byte("bin"), Value: []byte{0, 0xff, 1}}})
			} else {
				// Numeric, boolean, float, timestamp and table headers (watermill#65).
				headers := amqp091.Table{"x-count": int32(3), "x-big": int64(1) << 40, "x-ok": true, "x-ratio": 1.5,
					"x-at": time.Date(2025, 9, 6, 10, 30, 0, 0, time.UTC), "x-nested": amqp091.Table{"a": int32(1)}}
				e.rawAMQP("fault.order", foreignEvent, headers)
				// The same headers on an event that is poison: they survive as strings.
				headerCase = poisonInput{name: "numeric AMQP headers on an invalid event", marker: mark("headers"),
					body:    []byte(`{"messageId":"` + mark("headers") + `","payload":{}}`),
					headers: headers, reason: []string{"eventType"},
					metadata: map[string]string{"x-count": "3", "x-big": "1099511627776", "x-ok": "true", "x-ratio": "1.5",
						"x-at": "2025-09-06T10:30:00Z", "x-nested": `{"a":1}`}}
				e.rawAMQP("fault.order", headerCase.body, headers)
				inputs = append(inputs, headerCase)
				sent++
			}
			e.publish(after)

			if lost := e.tryDone(want, time.Minute); lost > 0 {
				e.record(5, "poison inputs between well-formed events", sent, want, "the stream stopped")
				t.Fatalf("the stream stopped: %d of %d well-formed events' tasks not executed within 1m%s",
					lost, len(want), logTails([]*pipeline{p}))
			}
			rows := e.waitDLQ(len(inputs), time.Minute, p)
			e.waitQuiet(2 * time.Second)

			for _, in := range inputs {
				t.Run(in.name, func(t *testing.T) {
					var got *dlqRow
					for i := range rows {
						if strings.Contains(rows[i].Payload, in.marker) {
							got = &rows[i]
						}
					}
					require.NotNil(t, got, "no poison message holds %s", in.marker)
					origin, handler := e.events, "trigger"
					if in.toTasks {
						origin, handler = e.tasks, "executor"
					}
					assert.Equal(t, origin+".dlq", got.Topic)
					assert.Equal(t, origin, got.Origin)
					// The router handler's name: trigger-1, executor-5, ...
					assert.True(t, strings.HasPrefix(got.Handler, handler), "handler %q", got.Handler)
					assert.Equal(t, "permanent", got.ReasonKind)
					for _, want := range in.reason {
						assert.Contains(t, got.Reason, want)
					}
					assert.Equal(t, len(in.body), got.PayloadBytes, "the payload is kept whole")
					for k, v := range in.metadata {
						assert.Equal(t, v, got.Metadata[k], "metadata %s", k)
					}
				})
			}

			// received = acked + poisoned, per handler, from the process's own counters.
			tasksSent := len(want) + 1 // the unknown task
			eventsSent := sent - 1
			for _, h := range []struct {
				name               string
				received, poisoned int
			}{
				{name: "trigger", received: eventsSent, poisoned: len(inputs) - 1},
				{name: "executor", received: tasksSent, poisoned: 1},
			} {
				label := `handler="` + h.name + `"`
				received := p.metric(t, "message_processed_total", label)
				failed := p.metric(t, "message_errors_total", label)
				poisoned := p.metric(t, "message_poisoned_total", label)
				acked := received - failed
				assert.Equal(t, float64(h.received), received, "%s: every message received once (no redelivery loop)", h.name)
				assert.Equal(t, float64(h.poisoned), poisoned, "%s: poisoned", h.name)
				assert.Equal(t, received, acked+poisoned, "%s: received = acked + poisoned (nothing nacked)", h.name)
				t.Logf("%s: received %.0f = acked %.0f + poisoned %.0f", h.name, received, acked, poisoned)
			}
			_, err := p.term(e.opts.shutdown + 5*time.Second)
			require.NoError(t, err)
			tl := e.record(5, "poison inputs between well-formed events", sent, want,
				fmt.Sprintf("%d poison inputs, each on its .dlq with its reason; received = acked + poisoned", len(inputs)))
			assert.Zero(t, tl.lost)
			assert.Empty(t, tl.unexpected, "no task of a poison event ran")
		})
	}
}

// waitDLQ waits until n poison messages wait and returns them.
func (e *env) waitDLQ(n int, timeout time.Duration, p *pipeline) []dlqRow {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		rows := e.dlq()
		if len(rows) >= n {
			return rows
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("want %d poison messages within %s, got %d\n%s", n, timeout, len(rows), p.tail(25))
		}
		time.Sleep(time.Second)
	}
}
