//go:build faults

package faults_test

import (
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/eventpipe/eventpipe/task"
)

// sigtermRules make one shell task per event that, while the slow flag
// exists, sleeps payload.sleep seconds; the task's own timeout is longer
// than any sleep, so only shutdown cuts a task off.
const sigtermRules = `  - ruleId: "ledger"
    eventType: "fault.#"
    taskName: "slow-${eventId}"
    taskType: "shell"
    parameters:
      script: "{{script}}"
      args: ["{{ledger}}", "{{slow}}", "${payload.sleep}"]
      timeout: 300
`

// TestSIGTERM sends SIGTERM while 100 slow tasks run: half need 5 s (they
// finish during the drain), half need 60 s (longer than the 10 s
// shutdown_timeout). The process must exit within the shutdown timeout,
// poison nothing (the cut-off tasks end with context.Canceled, which is
// never poisoned), and after a restart every task has finished: the ones
// cut off were redelivered, and the ones that finished in the drain are
// not run again (the in-memory de-duplication store, the default, is
// empty after the restart: only their acknowledgement prevents it).
//
// All 100 must run at once: executor concurrency 100 (on Kafka over the
// default 8 partitions: many tasks in flight per partition); on RabbitMQ
// prefetch 100 (the process's one consumer of the queue hands out prefetch
// messages at once).
func TestSIGTERM(t *testing.T) {
	const tasks, shutdown = 100, 10 * time.Second
	const quick, slow = 5, 60 // seconds; quick ends well before the drain deadline (shutdown_timeout - 2 s)
	for _, kind := range brokers {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, kind, options{rules: sigtermRules, executor: tasks, shutdown: shutdown, prefetch: tasks})
			require.NoError(t, os.WriteFile(e.slow, nil, 0o600))
			evs, want := e.slowEvents(tasks, func(i int) int {
				if i%2 == 0 {
					return quick
				}
				return slow
			})
			p := e.start()
			if kind == kafka {
				e.waitGroupStable(e.id+"."+e.tasks, 1, 2*time.Minute)
			}
			e.publish(evs)
			spread := e.waitStarted(tasks, 2*time.Minute, p)
			inFlight := e.running()

			elapsed, err := p.term(2 * shutdown)
			require.NoError(t, err, "SIGTERM exit\n%s", p.tail(20))
			finishedInDrain := len(done(e.readLedger()))
			assert.LessOrEqual(t, elapsed, shutdown+time.Second, "exit within shutdown_timeout (+1 s for the process to end)")
			assert.Zero(t, p.logCount("message poisoned"), "nothing poisoned on shutdown")

			require.NoError(t, os.Remove(e.slow)) // redelivered tasks run fast
			p2 := e.start()
			e.waitDone(want, 2*time.Minute, p2)
			e.waitQuiet(3 * time.Second)
			_, err = p2.term(shutdown + 5*time.Second)
			require.NoError(t, err)

			tl := e.record(6, "SIGTERM with 100 slow tasks in flight, restart", tasks, want,
				fmt.Sprintf("%d in flight at SIGTERM (all started within %.1fs); exited in %.1fs (shutdown_timeout %s); %d finished during the drain, %d cut off and redelivered",
					inFlight, spread.Seconds(), elapsed.Seconds(), shutdown, finishedInDrain, tasks-finishedInDrain))
			assert.Equal(t, tasks, inFlight, "all tasks in flight at SIGTERM")
			assert.Equal(t, tasks/2, finishedInDrain, "the quick half finishes during the drain")
			assert.Zero(t, tl.lost, "every task finished or was redelivered")
			// A task runs once unless the process dies mid-task: a task that
			// finished during a graceful drain must have been acked for good.
			assert.Zero(t, tl.runs-tl.executed, "tasks that finished during the drain ran again after the restart")
			assert.Empty(t, tl.unexpected)
			assert.Empty(t, e.dlq(), "nothing poisoned for context.Canceled")
		})
	}
}

// slowEvents returns n fault.slow events with payload.sleep from sleep(i),
// and the ledger task id each one makes.
func (e *env) slowEvents(n int, sleep func(i int) int) ([]event, []string) {
	var evs []event
	var want []string
	for i := range n {
		id := fmt.Sprintf("%s-term-%d", e.id, i)
		evs = append(evs, event{id: id,
			json: fmt.Sprintf(`{"messageId":%q,"eventType":"fault.slow","payload":{"sleep":%d}}`, id, sleep(i))})
		want = append(want, task.ID(id, "ledger"))
	}
	return evs, want
}

// running returns how many tasks started and have not finished.
func (e *env) running() int {
	n := 0
	for _, en := range e.readLedger() {
		switch en.kind {
		case "start":
			n++
		case "done":
			n--
		}
	}
	return n
}

// waitStarted waits until n tasks wrote their start line and returns the
// time from the first start seen to the last.
func (e *env) waitStarted(n int, timeout time.Duration, p *pipeline) time.Duration {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	var first time.Time
	for {
		started := 0
		for _, en := range e.readLedger() {
			if en.kind == "start" {
				started++
			}
		}
		if started > 0 && first.IsZero() {
			first = time.Now()
		}
		if started >= n {
			return time.Since(first)
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("%d of %d tasks started within %s\n%s", started, n, timeout, p.tail(25))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitGroupStable waits until the Kafka consumer group is stable with n
// members (processes) that each own a partition, so no rebalance moves a
// task that runs.
func (e *env) waitGroupStable(group string, n int, timeout time.Duration) {
	e.t.Helper()
	admin, err := sarama.NewClusterAdmin([]string{e.kafka.addr}, sarama.NewConfig())
	require.NoError(e.t, err)
	defer admin.Close()
	deadline := time.Now().Add(timeout)
	state := ""
	for time.Now().Before(deadline) {
		descs, err := admin.DescribeConsumerGroups([]string{group})
		if err == nil && len(descs) == 1 {
			d := descs[0]
			owning := 0
			for _, m := range d.Members {
				if a, err := m.GetMemberAssignment(); err == nil && a != nil {
					for _, parts := range a.Topics {
						if len(parts) > 0 {
							owning++
							break
						}
					}
				}
			}
			state = fmt.Sprintf("%s, %d members, %d owning partitions", d.State, len(d.Members), owning)
			if d.State == "Stable" && len(d.Members) == n && owning == n {
				return
			}
		}
		time.Sleep(500 * time.Millisecond)
	}
	e.t.Fatalf("consumer group %s not stable with %d members within %s: %s", group, n, timeout, state)
}
