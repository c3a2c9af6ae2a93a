package integration_test

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/eventpipe/eventpipe/config"
	"github.com/eventpipe/eventpipe/pipeline"
	"github.com/eventpipe/eventpipe/task"
)

// costlyRules are three rules on big.blob whose conditions each fit the
// condition budget the test sets (two 11-instruction patterns over a 1 MiB
// field: about 185 ms by the estimate), and together do not fit the event
// budget; audit shows the stream goes on.
func costlyRules() string {
	var b strings.Builder
	b.WriteString(testRules)
	for i := range 3 {
		fmt.Fprintf(&b, "  - ruleId: \"costly-%d\"\n    eventType: \"big.blob\"\n    taskType: \"record\"\n"+
			"    condition: 'payload.s matches \"[a-z]+@[a-z]+\\\\.com\" || payload.s matches \"[0-9]+-[0-9]+\\\\.x\"'\n", i)
	}
	return b.String()
}

// bigEvent is an event of about size bytes of one string field.
func bigEvent(id string, size int) string {
	return fmt.Sprintf(`{"messageId":%q,"eventType":"big.blob","payload":{"s":%q}}`, id, strings.Repeat("x", size))
}

// The adversarial pass's rule and events, on each broker: the 339-term
// concatenation is refused at start with its reason (before, it was loaded
// and six ~1 MiB events killed the process at every restart on Kafka);
// rules that are each within the condition budget but together over the
// event budget poison every big event with a budget reason, while the
// process stays up and ready and later events still become tasks.
func TestHostileRules_refused_or_poisoned_with_a_budget_reason(t *testing.T) {
	t.Parallel()
	for _, tgt := range targets() {
		t.Run(tgt.name, func(t *testing.T) {
			t.Parallel()
			tgt.provider.require(t)

			hostile := newConfig(t, tgt)
			cond := "len(payload.s" + strings.Repeat(" + payload.s", 338) + ") > 0"
			file := testRules + fmt.Sprintf("  - ruleId: \"bomb\"\n    eventType: \"big.blob\"\n    taskType: \"record\"\n    condition: %q\n", cond)
			require.NoError(t, os.WriteFile(hostile.Rules.File, []byte(file), 0o600))
			hostile.DataDir = t.TempDir()
			_, err := pipeline.New(hostile, pipeline.WithBroker(tgt.open(t, hostile)), pipeline.WithLogger(testLogger()),
				pipeline.WithExecutor("record", newRecorder()), pipeline.WithExecutor("flaky", newRecorder()),
				pipeline.WithExecutor("broken", newRecorder()))
			require.Error(t, err)
			assert.Contains(t, err.Error(), `rule "bomb": condition: 1:5: on an event of 1.0 MiB this condition may allocate 56.3 GiB`)

			h := newHarness(t, tgt, func(c *config.Config) {
				c.Rules.Budget.ConditionTime = 250 * time.Millisecond
				c.Rules.Budget.EventTime = 250 * time.Millisecond
				c.DataDir = t.TempDir()
				require.NoError(t, os.WriteFile(c.Rules.File, []byte(costlyRules()), 0o600))
			}, nil)
			dlq := h.watch(h.cfg.Topics.Poison(h.cfg.Topics.Events))
			res := h.watch(h.cfg.Topics.Results)
			var big []string
			for i := range 6 {
				// Under Kafka's default 1 MB message limit, with the envelope.
				big = append(big, bigEvent(fmt.Sprintf("big-%d", i), 900_000))
			}
			for _, e := range big {
				// One at a time: concurrent publishes are batched into one
				// produce request over Kafka's 1 MB limit.
				h.publish(e)
			}
			poisoned := dlq.waitFor(t, 6, waitLong)
			for _, m := range poisoned {
				reason := m.Metadata.Get("reason_poisoned")
				assert.Contains(t, reason, "evaluation budget exceeded for event big-")
				assert.Contains(t, reason, `the 3 rules of type "big.blob" may take`)
				assert.Contains(t, reason, "over rules.budget.event_time (250ms); nothing was evaluated")
				assert.Equal(t, "permanent", m.Metadata.Get("reason_kind"))
			}

			h.publish(ev("after", "order.created"))
			got := results(t, res.waitFor(t, 1, waitLong))
			assert.Equal(t, task.ID("after", "audit"), got[0].TaskID, "the process is up and consuming")
			assert.NoError(t, h.p.Ready(t.Context()))
		})
	}
}
