//go:build faults

package faults_test

import (
	"context"
	"fmt"
	"os/exec"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// brokerDown is how long a restarted broker stays down: long enough that
// clients see refused connections and give up their in-flight requests,
// not a blip.
const brokerDown = 3 * time.Second

// TestBrokerRestart restarts the broker under a running pipeline while it
// works through 3,000 events: nothing may be lost or poisoned. Kafka: the
// kfake process is stopped (it saves its log and offsets) and started
// again on the same port. RabbitMQ: `rabbitmqctl stop_app` / `start_app`
// (durable queues, persistent messages). Stopping the shared RabbitMQ
// disturbs every client of it, so no other RabbitMQ scenario runs at the
// same time (top-level tests run one after the other).
func TestBrokerRestart(t *testing.T) {
	const events = 3000
	for _, kind := range brokers {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			if kind == amqp {
				need(t, "rabbitmqctl", rabbitctlMissing)
			}
			e := newEnv(t, kind, options{})
			evs, want := e.faultEvents("restart", events)
			p := e.start()
			e.publish(evs)
			e.waitProgress(want, events*3/10, 3*time.Minute, p)

			atRestart := count(e.readLedger(), want).executed
			began := time.Now()
			if kind == kafka {
				require.NoError(t, e.kafka.restart(brokerDown))
			} else {
				require.NoError(t, restartRabbit(t.Context()))
			}
			restarted := time.Since(began)
			afterRestart := count(e.readLedger(), want).executed

			e.waitDone(want, 3*time.Minute, p)
			e.waitQuiet(3 * time.Second)
			assert.False(t, p.exited(), "the pipeline rides out a broker restart")
			retries := p.metric(t, "message_retries_total")
			_, err := p.term(e.opts.shutdown + 5*time.Second)
			require.NoError(t, err)

			tl := e.record(2, "broker restarted mid-run", events, want,
				fmt.Sprintf("restart began at %d tasks executed, took %.1fs (%d executed by then); %d handler retries",
					atRestart, restarted.Seconds(), afterRestart, int(retries)))
			assert.Zero(t, tl.lost, "tasks lost")
			assert.Empty(t, tl.unexpected)
			assert.Empty(t, e.dlq(), "a broker restart poisons nothing")
		})
	}
}

// restartRabbit stops and starts the RabbitMQ application on this host.
func restartRabbit(ctx context.Context) error {
	for i, cmd := range []string{"stop_app", "start_app"} {
		if i == 1 {
			time.Sleep(brokerDown)
		}
		c, cancel := context.WithTimeout(ctx, 2*time.Minute)
		out, err := exec.CommandContext(c, "rabbitmqctl", "-q", cmd).CombinedOutput()
		cancel()
		if err != nil {
			return fmt.Errorf("rabbitmqctl %s: %w: %s", cmd, err, out)
		}
	}
	return nil
}
