//go:build faults

package faults_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/eventpipe/eventpipe/task"
)

// hostileRules add to the ledger rule:
//   - three "costly" rules on big.blob, each the most expensive concatenation
//     the default budget accepts (10 copies of a 1 MiB field: about 54 MiB
//     and 110 ms by the estimate), which run for real on every big event;
//   - thirty "bomb" rules on big.bomb, each within the condition budget (two
//     patterns over a 1 MiB field, about 185 ms) and together over the
//     default event budget (5 s), so every big.bomb event is poisoned with
//     a budget reason before anything runs.
func hostileRules() string {
	var b strings.Builder
	b.WriteString(ledgerRule)
	concat := "len(payload.s" + strings.Repeat(" + payload.s", 9) + ") > 0"
	for i := range 3 {
		fmt.Fprintf(&b, "  - ruleId: \"costly-%d\"\n    eventType: \"big.blob\"\n    taskType: \"shell\"\n    condition: %q\n"+
			"    parameters:\n      script: \"{{script}}\"\n      args: [\"{{ledger}}\"]\n", i, concat)
	}
	for i := range 30 {
		fmt.Fprintf(&b, "  - ruleId: \"bomb-%d\"\n    eventType: \"big.bomb\"\n    taskType: \"shell\"\n"+
			"    condition: 'payload.s matches \"[a-z]+@[a-z]+\\\\.com\" || payload.s matches \"[0-9]+-[0-9]+\\\\.x\"'\n"+
			"    parameters:\n      script: \"{{script}}\"\n      args: [\"{{ledger}}\"]\n", i)
	}
	return b.String()
}

// TestHostileRule is the adversarial pass's attack on a running process:
// the 339-term concatenation written into the rules file (refused on
// reload, the rules stay), the most expensive accepted conditions over
// 1 MiB events (evaluated, their tasks run), and rules whose sum is over the
// event budget (their 1 MiB events poisoned with a budget reason), between
// ordinary events. The process must stay up throughout, and every ordinary
// event's task run.
func TestHostileRule(t *testing.T) {
	const ordinary = 100
	for _, kind := range brokers {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, kind, options{rules: hostileRules(), kafkaMaxMessageBytes: 8 << 20})
			p := e.start()

			rulesFile := filepath.Join(e.dir, "rules.yaml")
			good, err := os.ReadFile(rulesFile)
			require.NoError(t, err)
			bomb := "len(payload.s" + strings.Repeat(" + payload.s", 338) + ") > 0"
			hostile := string(good) + fmt.Sprintf("  - ruleId: \"bomb\"\n    eventType: \"big.blob\"\n    taskType: \"log\"\n    condition: %q\n", bomb)
			require.NoError(t, os.WriteFile(rulesFile, []byte(hostile), 0o600))
			require.Eventually(t, func() bool { return p.logCount("rules file refused; the previous rules stay active") > 0 },
				time.Minute, 100*time.Millisecond, "the 339-term rule is refused on reload%s", logTails([]*pipeline{p}))
			assert.Contains(t, p.tail(50), "on an event of 1.0 MiB this condition may allocate 56.3 GiB")

			before, want1 := e.faultEvents("before", ordinary/2)
			after, want2 := e.faultEvents("after", ordinary/2)
			want := append(want1, want2...)
			e.publish(before)
			blob := strings.Repeat("x", 1_000_000)
			const big = 6
			for i := range big {
				id := fmt.Sprintf("%s-blob-%d", e.id, i)
				for r := range 3 {
					want = append(want, task.ID(id, fmt.Sprintf("costly-%d", r)))
				}
				e.rawBig(fmt.Sprintf(`{"messageId":%q,"eventType":"big.blob","payload":{"s":%q}}`, id, blob))
				e.rawBig(fmt.Sprintf(`{"messageId":"%s-bomb-%d","eventType":"big.bomb","payload":{"s":%q}}`, e.id, i, blob))
			}
			e.publish(after)
			sent := ordinary + 2*big

			if lost := e.tryDone(want, 3*time.Minute); lost > 0 {
				e.record(8, "hostile rule + 1 MiB events", sent, want, "tasks missing")
				t.Fatalf("%d of %d tasks not executed within 3m (process exited: %v)%s", lost, len(want), p.exited(), logTails([]*pipeline{p}))
			}
			rows := e.waitDLQ(big, time.Minute, p)
			bombs := 0
			for _, r := range rows {
				if strings.Contains(r.Payload, "big.bomb") {
					bombs++
					assert.Equal(t, "permanent", r.ReasonKind)
					assert.Contains(t, r.Reason, "evaluation budget exceeded for event")
					assert.Contains(t, r.Reason, `the 30 rules of type "big.bomb" may take`)
					assert.Contains(t, r.Reason, "over rules.budget.event_time (5s); nothing was evaluated")
				}
			}
			assert.Equal(t, big, bombs, "every big.bomb event poisoned with a budget reason")
			assert.Len(t, rows, big, "nothing else poisoned")
			require.False(t, p.exited(), "the process is alive%s", logTails([]*pipeline{p}))
			assert.Equal(t, 1, p.logCount("eventpipe running"), "never restarted")
			_, err = p.term(e.opts.shutdown + 5*time.Second)
			require.NoError(t, err)
			tl := e.record(8, "hostile rule + 1 MiB events", sent, want,
				fmt.Sprintf("339-term rule refused on reload; 3 costly rules ran over %d × 1 MiB events; %d × 1 MiB events over the event budget poisoned (budget reason); process alive, never restarted", big, big))
			assert.Zero(t, tl.lost)
		})
	}
}

// rawBig publishes one large event as a foreign producer.
func (e *env) rawBig(body string) {
	e.t.Helper()
	if e.kind == kafka {
		e.rawKafka(e.events, nil, []byte(body), nil)
		return
	}
	e.rawAMQP("big.event", []byte(body), nil)
}

// slowRule takes about 2.6 s over a 1 MiB field (two patterns of 183
// instructions), accepted under the raised budget of TestCrashDuringEvaluation.
const slowRule = `  - ruleId: "slow-match"
    eventType: "big.slow"
    taskType: "shell"
    condition: 'payload.s matches "(x|xx){30}y" || payload.s matches "(x|xx){30}z"'
    parameters:
      script: "{{script}}"
      args: ["{{ledger}}"]
`

// TestCrashDuringEvaluation kills the process (SIGKILL, as the kernel's
// out-of-memory killer would) while it evaluates a 1 MiB event, at the
// moment its crash mark appears, and restarts it: the event comes back and
// is poisoned with the crash reason instead of being evaluated again, and
// every ordinary event's task runs. No event can take the process down twice.
func TestCrashDuringEvaluation(t *testing.T) {
	const ordinary = 50
	for _, kind := range brokers {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, kind, options{rules: ledgerRule + slowRule, kafkaMaxMessageBytes: 8 << 20,
				extra: map[string]any{"rules": map[string]any{
					"budget": map[string]any{"condition_time": "10s", "event_time": "20s"}}}})
			marks := filepath.Join(e.dir, "data", "evaluating")
			p := e.start()
			evs, want := e.faultEvents("ordinary", ordinary)
			e.publish(evs[:ordinary/2])
			// The first half ran before the slow event arrives: the kill
			// then cuts off work in flight, not a process still starting.
			e.waitProgress(want, ordinary/2, 2*time.Minute, p)
			victim := e.id + "-slow"
			e.rawBig(fmt.Sprintf(`{"messageId":%q,"eventType":"big.slow","payload":{"s":%q}}`, victim, strings.Repeat("x", 1_000_000)))
			require.Eventually(t, func() bool {
				entries, _ := os.ReadDir(marks)
				return len(entries) > 0
			}, 2*time.Minute, 5*time.Millisecond, "the slow event is marked while evaluated%s", logTails([]*pipeline{p}))
			p.kill()
			t.Logf("killed pid %d while it evaluated %s", p.pid(), victim)

			p2 := e.start()
			rows := e.waitDLQ(1, 2*time.Minute, p2)
			require.Len(t, rows, 1)
			assert.Contains(t, rows[0].Payload, victim)
			assert.Equal(t, "permanent", rows[0].ReasonKind)
			assert.Contains(t, rows[0].Reason, "the process stopped (crash or kill) while evaluating this event's conditions")
			e.publish(evs[ordinary/2:])
			// 4 minutes, as in the SIGKILL scenario: on Kafka the killed
			// members stay in the tasks group until their session times
			// out, and a rejoin can take several rebalance rounds (kfake).
			e.waitDone(want, 4*time.Minute, p2)
			assert.False(t, p2.exited(), "the restarted process is alive")
			entries, err := os.ReadDir(marks)
			require.NoError(t, err)
			assert.Empty(t, entries, "the evidence is used once")
			_, err = p2.term(e.opts.shutdown + 5*time.Second)
			require.NoError(t, err)
			tl := e.record(9, "SIGKILL while evaluating a 1 MiB event, restart", ordinary+1, want,
				"killed when the event's crash mark appeared; on redelivery it was poisoned (crash reason), not evaluated again")
			assert.Zero(t, tl.lost)
		})
	}
}
