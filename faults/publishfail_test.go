//go:build faults

package faults_test

import (
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Task publishing fails for outage: longer than publishTimeout (how long
// the broker layer retries a publish), so the trigger handler's attempt
// fails and the event is delivered to it again (message_retries_total),
// and shorter than its four attempts (retry.max_retries 3) after which the
// event would be poisoned.
const (
	outage         = 12 * time.Second
	publishTimeout = 5 * time.Second
)

// TestPublishTasksFails makes the broker refuse every task the trigger
// publishes for 12 s, while the events topic keeps working: the events
// whose tasks could not be published are redelivered, nothing is lost or
// poisoned, and no task of theirs runs during the outage.
//
// How the refusal is real:
//   - Kafka: the kfake broker answers every produce request for the tasks
//     topic with NOT_ENOUGH_REPLICAS, as a broker does while the topic has
//     fewer in-sync replicas than min.insync.replicas with acks=all.
//   - RabbitMQ: a policy on the tasks queue, max-length 0 with overflow
//     reject-publish: RabbitMQ nacks every publish to it (publisher
//     confirms). A max-length policy also drops what the queue holds, so
//     it is applied once the first 1,000 events are done and the queue is
//     empty (checked), not in the middle of the flow.
func TestPublishTasksFails(t *testing.T) {
	const before, during = 1000, 1000
	for _, kind := range brokers {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			if kind == amqp {
				need(t, "rabbitmqctl", rabbitctlMissing)
			}
			e := newEnv(t, kind, options{publishTimeout: publishTimeout})
			evs1, want1 := e.faultEvents("before", before)
			evs2, want2 := e.faultEvents("during", during)
			p := e.start()
			e.publish(evs1)
			e.waitDone(want1, 2*time.Minute, p)
			e.waitQuiet(time.Second)

			restore := e.refuseTasks()
			t.Cleanup(func() { _ = restore() })
			began := time.Now()
			e.publish(evs2)
			time.Sleep(outage - time.Since(began))
			ranDuring := count(e.readLedger(), want2).executed
			require.NoError(t, restore())

			want := append(want1, want2...)
			e.waitDone(want, 3*time.Minute, p)
			e.waitQuiet(3 * time.Second)
			retries := p.metric(t, "message_retries_total", `handler="trigger"`)
			_, err := p.term(e.opts.shutdown + 5*time.Second)
			require.NoError(t, err)

			tl := e.record(3, fmt.Sprintf("publishing tasks fails for %s (publish_timeout %s)", outage, publishTimeout), before+during, want,
				fmt.Sprintf("%d tasks ran during the outage; trigger redeliveries (message_retries_total) %d", ranDuring, int(retries)))
			assert.Zero(t, ranDuring, "the fault must stop task publishing")
			assert.Positive(t, retries, "events whose tasks could not be published are delivered again")
			assert.Zero(t, tl.lost, "tasks lost")
			assert.Empty(t, tl.unexpected)
			assert.Empty(t, e.dlq(), "an outage shorter than the retries poisons nothing")
		})
	}
}

// refuseTasks makes the broker refuse publishes to the tasks topic and
// returns the function that ends the refusal (safe to call twice).
func (e *env) refuseTasks() (restore func() error) {
	e.t.Helper()
	if e.kind == kafka {
		_, err := e.kafka.refuseProduce(e.tasks, true)
		require.NoError(e.t, err)
		cleared := false
		return func() error {
			if cleared {
				return nil
			}
			cleared = true
			answer, err := e.kafka.refuseProduce(e.tasks, false)
			e.t.Logf("kfake: %s", answer)
			return err
		}
	}
	conn, err := amqp091.Dial(amqpURL)
	require.NoError(e.t, err)
	ch, err := conn.Channel()
	require.NoError(e.t, err)
	q, err := ch.QueueDeclarePassive(e.tasks, true, false, false, false, nil)
	_ = conn.Close()
	require.NoError(e.t, err)
	require.Zero(e.t, q.Messages, "the tasks queue must be empty before a max-length policy (it would drop them)")
	policy := e.id + "-refuse-tasks"
	ctl := func(args ...string) error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		out, err := exec.CommandContext(ctx, "rabbitmqctl", append([]string{"-q"}, args...)...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("rabbitmqctl %v: %w: %s", args, err, out)
		}
		return nil
	}
	require.NoError(e.t, ctl("set_policy", "--apply-to", "queues", policy, "^"+regexp.QuoteMeta(e.tasks)+"$",
		`{"max-length":0,"overflow":"reject-publish"}`))
	cleared := false
	return func() error {
		if cleared {
			return nil
		}
		cleared = true
		return ctl("clear_policy", policy)
	}
}
