package rules

import (
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/eventpipe/eventpipe/event"
)

// fuzzEventBytes is the event size the fuzz budget assumes: small, so each
// evaluation is quick and many run.
const fuzzEventBytes = 4 << 10

// FuzzConditionBudget runs conditions × events and checks that no accepted
// condition allocates more than the cost model allowed it for the event's
// size, nor runs far longer: the estimate is the promise the load-time check
// relies on, so an evaluation over it is a hole in the model.
//
// Memory is measured as the bytes the process allocated during the
// evaluation (runtime.MemStats.TotalAlloc), against the estimate plus 64 KiB
// of fixed cost (the environment, the VM's stack, the result). Time is
// checked loosely (4× the estimate plus 200 ms): fuzzing shares the CPU.
func FuzzConditionBudget(f *testing.F) {
	events := []string{
		`{"eventType":"x","payload":{"s":"xxxxxxxxxxxxxxxx","n":1,"items":[{"k":"a","p":1},{"k":"b","p":2}]}}`,
		`{"eventType":"x","payload":{"s":"` + strings.Repeat("ab", 1800) + `","items":[]}}`,
		`{"eventType":"x","payload":{"items":[` + strings.TrimSuffix(strings.Repeat(`{"k":"x"},`, 350), ",") + `]}}`,
		`{"eventType":"x","payload":{"a":[` + strings.TrimSuffix(strings.Repeat(`1,`, 1900), ",") + `]},"metadata":{"tags":"a,b,c"}}`,
	}
	conds := []string{
		`payload.s + payload.s + payload.s != ""`,
		`payload.s matches "(a|b)+c"`,
		`any(payload.items, upper(.k) == "A")`,
		`len(split(payload.s, "")) > 3`,
		`all(payload.items, indexOf(payload.s, .k) >= 0)`,
		`len(map(payload.items, .k)) > 0 && len(sort(map(payload.a, #))) > 0`,
		`len(groupBy(payload.items, lower(.k))) > 1`,
		`"b" in split(metadata.tags, ",")`,
		`fromJSON(toJSON(payload)) != nil`,
		`len(fromJSON(payload.s) ?? []) > 0`,
		`len(1..50000) > 0`,
		`sum(payload.a) > 1`,
		`string(payload.n) + payload.s contains "x"`,
	}
	for _, c := range conds {
		for _, e := range events {
			f.Add(c, e)
		}
	}
	budget := Budget{MaxEventBytes: fuzzEventBytes}
	budget.SetDefaults()
	parser := event.Parser{MaxBytes: fuzzEventBytes}
	f.Fuzz(func(t *testing.T, cond, raw string) {
		s, err := Compile([]Rule{{RuleID: "r", EventType: "x", TaskType: "log", Condition: cond}}, WithBudget(budget))
		if err != nil {
			return
		}
		ev, err := parser.Parse([]byte(raw))
		if err != nil {
			return
		}
		ev.EventType = "x"
		r := s.rules[0]
		est := r.cost.at(len(raw))
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		start := time.Now()
		_, _ = s.Evaluate(t.Context(), ev, Evaluation{Size: len(raw)})
		took := time.Since(start)
		runtime.ReadMemStats(&after)
		allocated := int64(after.TotalAlloc - before.TotalAlloc)
		require.LessOrEqual(t, allocated, est.Memory+64<<10,
			"condition %q on a %d-byte event allocated %d bytes, estimated %d", cond, len(raw), allocated, est.Memory)
		require.LessOrEqual(t, took, 4*est.Time+200*time.Millisecond,
			"condition %q on a %d-byte event took %s, estimated %s", cond, len(raw), took, est.Time)
	})
}
