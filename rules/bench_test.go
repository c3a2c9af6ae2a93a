package rules_test

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/eventpipe/eventpipe/event"
	"github.com/eventpipe/eventpipe/rules"
)

// benchRules makes 10 rules for each of types event types. Rule i of a type
// fires when payload.amount > i*200, so an amount of 1000 fires 5 of 10.
func benchRules(types int) []rules.Rule {
	rs := make([]rules.Rule, 0, types*10)
	for ty := range types {
		for i := range 10 {
			rs = append(rs, rules.Rule{
				RuleID:     fmt.Sprintf("rule-%d-%d", ty, i),
				EventType:  fmt.Sprintf("domain%d.created", ty),
				Condition:  fmt.Sprintf("payload.amount > %d", i*200),
				TaskName:   "process-${payload.orderId}",
				TaskType:   "log",
				Parameters: map[string]any{"orderId": "${payload.orderId}", "timeout": 30},
			})
		}
	}
	return rs
}

// BenchmarkEngineMatch shows that matching cost depends on the rules of the
// event's type, not on the total: rules=10 holds only the event type's 10
// rules, rules=10000 the same 10 among 10,000 rules of 1,000 types.
//
// The 10,000-rule set is built first and stays in memory during both runs.
// Otherwise rules=10 would also run with a heap a dozen MB smaller, and the
// garbage collector, which marks the whole live heap while Match allocates
// its tasks, would make the comparison about heap size instead of lookup cost.
func BenchmarkEngineMatch(b *testing.B) {
	ev := &event.Event{
		MessageID: "msg-1", EventType: "domain0.created", Timestamp: time.Now(), Priority: event.PriorityHigh,
		Payload:  map[string]any{"orderId": "order-1", "amount": 1000.0},
		Metadata: map[string]any{"traceId": "trace-1"},
	}
	large, err := rules.Compile(benchRules(1000))
	if err != nil {
		b.Fatal(err)
	}
	small, err := rules.Compile(benchRules(1))
	if err != nil {
		b.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		set  *rules.Set
	}{{"rules=10", small}, {"rules=10000", large}} {
		e := rules.NewEngine(tc.set)
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				tasks, err := e.Match(ev)
				if err != nil || len(tasks) != 5 {
					b.Fatal(len(tasks), err)
				}
			}
		})
	}
	runtime.KeepAlive(large)
}
