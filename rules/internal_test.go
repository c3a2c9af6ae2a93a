package rules

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/expr-lang/expr/builtin"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/eventpipe/eventpipe/event"
)

func conditionRule(t testing.TB, cond string) (*compiledRule, *env) {
	t.Helper()
	s, err := Compile([]Rule{{RuleID: "r", EventType: "order.created", TaskType: "log", Condition: cond}})
	require.NoError(t, err)
	ev := &event.Event{MessageID: "m", EventType: "order.created", Timestamp: time.Now(), Priority: event.PriorityHigh,
		Payload:  map[string]any{"amount": 1200.0, "currency": "CNY", "customer": map[string]any{"tier": "gold"}},
		Metadata: map[string]any{"traceId": "t"}}
	return s.rules[0], newEnv(ev)
}

// TestCondition_evaluation_allocates_once_per_field_read proves the pooled
// VM adds no allocation of its own: the only ones left are expr's reflect
// reads, one 16-byte box per payload key or string field read, so the
// typical one-field condition allocates once.
func TestCondition_evaluation_allocates_once_per_field_read(t *testing.T) {
	// Not parallel: AllocsPerRun counts every goroutine's allocations.
	tests := []struct {
		name      string
		cond      string
		maxAllocs float64
	}{
		{name: "payload_number", cond: "payload.amount > 1000", maxAllocs: 1},
		{name: "envelope_string", cond: `eventType == "order.created"`, maxAllocs: 1},
		{name: "constant", cond: `true`, maxAllocs: 0},
		{name: "payload_and_envelope", cond: `payload.amount > 1000 && priority == "HIGH"`, maxAllocs: 2},
		{name: "nested_payload", cond: `payload.customer.tier == "gold"`, maxAllocs: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, e := conditionRule(t, tt.cond)
			ok, err := r.eval(e)
			require.NoError(t, err)
			require.True(t, ok)
			allocs := testing.AllocsPerRun(1000, func() { _, _ = r.eval(e) })
			assert.LessOrEqual(t, allocs, tt.maxAllocs)
		})
	}
}

func BenchmarkCondition(b *testing.B) {
	r, e := conditionRule(b, "payload.amount > 1000")
	b.ReportAllocs()
	for b.Loop() {
		if ok, err := r.eval(e); err != nil || !ok {
			b.Fatal(ok, err)
		}
	}
}

// TestBuiltins_are_all_reviewed fails when an expr upgrade adds a builtin
// nobody has checked for how much it can grow its input (see cost.go).
func TestBuiltins_are_all_reviewed(t *testing.T) {
	t.Parallel()
	allowed := setOf(allowedBuiltins...)
	for _, name := range builtin.Names {
		_, refused := refusedBuiltins[name]
		assert.True(t, allowed[name] != refused, "builtin %q must be in exactly one of allowedBuiltins and refusedBuiltins", name)
	}
	for _, names := range []map[string]bool{allowed, scalarBuiltins, sameSizeBuiltins, partBuiltins, keepsBody} {
		for name := range names {
			assert.Contains(t, builtin.Index, name, "%q is not an expr builtin", name)
			assert.NotContains(t, refusedBuiltins, name)
		}
	}
	for name := range refusedBuiltins {
		assert.Contains(t, builtin.Index, name, "%q is not an expr builtin", name)
	}
}

func TestMatchWords_agrees_with_a_recursive_definition(t *testing.T) {
	t.Parallel()
	var ref func(p, w []string) bool
	ref = func(p, w []string) bool {
		if len(p) == 0 {
			return len(w) == 0
		}
		switch p[0] {
		case "#":
			for i := 0; i <= len(w); i++ {
				if ref(p[1:], w[i:]) {
					return true
				}
			}
			return false
		case "*":
			return len(w) > 0 && ref(p[1:], w[1:])
		}
		return len(w) > 0 && w[0] == p[0] && ref(p[1:], w[1:])
	}
	alphabet := []string{"a", "b", "*", "#"}
	var patterns [][]string
	var gen func(prefix []string, n int)
	gen = func(prefix []string, n int) {
		patterns = append(patterns, append([]string(nil), prefix...))
		if n == 0 {
			return
		}
		for _, w := range alphabet {
			gen(append(prefix, w), n-1)
		}
	}
	gen(nil, 4)
	types := [][]string{{"a"}, {"b"}, {"a", "b"}, {"b", "a"}, {"a", "a", "b"}, {"a", "b", "a", "b"}, {"b", "b", "b", "a", "a"}}
	for _, p := range patterns {
		if len(p) == 0 {
			continue
		}
		for _, w := range types {
			assert.Equal(t, ref(p, w), matchWords(p, w), "pattern %v type %v", p, w)
		}
	}
}

// FuzzRender checks that any template either fails to parse or renders to
// a value or an error, in every mode, without panicking.
func FuzzRender(f *testing.F) {
	for _, s := range []string{"", "plain", "${payload.v}", "x${payload.v}y", "${payload.a.b:-d}", "$${x}", "${",
		"${eventId}/${timestamp}", "${metadata.m.0}", "${payload.v:-}", "${foo}", "${payload..x}", "-${payload.v}"} {
		for _, v := range []string{`"s"`, `1.5`, `-3`, `true`, `null`, `{"b":[1,"x"]}`, `[{"a":1}]`, `"-rf"`, `".."`} {
			f.Add(s, v)
		}
	}
	f.Fuzz(func(t *testing.T, tmpl, value string) {
		var v any
		if json.Unmarshal([]byte(value), &v) != nil {
			v = value
		}
		tp, err := parseTemplate(tmpl)
		if err != nil {
			return
		}
		e := &env{MessageID: "m", EventType: "t", Timestamp: "2025-09-06T10:30:00Z",
			Payload:  map[string]any{"v": v, "a": map[string]any{"b": v}},
			Metadata: map[string]any{"m": []any{v}}}
		for _, m := range []mode{modePlain, modeURL, modeArg} {
			out, err := tp.render(e, m)
			if err == nil && !tp.lone {
				_, isString := out.(string)
				require.True(t, isString, "a template with text renders to a string")
			}
		}
		if !tp.hasPlaceholders() {
			s, err := tp.renderString(e, modePlain)
			require.NoError(t, err)
			require.Equal(t, strings.ReplaceAll(tmpl, "$${", "${"), s)
		}
	})
}

// FuzzParse checks that the loader never panics and that whatever it
// accepts survives MarshalYAML and Parse again.
func FuzzParse(f *testing.F) {
	f.Add([]byte("taskTriggerRules:\n  - ruleId: a\n    eventType: order.*\n    taskType: log\n    parameters: {m: \"${eventId}\", n: [1, 2.5, true, null]}\n"))
	f.Add([]byte("taskTriggerRules:\n  - {ruleId: a, eventType: x, taskType: log, condition: 'payload.a > 1', enabled: false, priority: low}\n"))
	f.Add([]byte("taskTriggerRules:\n  - &r {ruleId: a, eventType: x, taskType: log}\n  - *r\n"))
	f.Add([]byte("a: [\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		rs, err := Parse(data, "f.yaml")
		if err != nil {
			return
		}
		out, err := MarshalYAML(rs)
		require.NoError(t, err)
		back, err := Parse(out, "out.yaml")
		require.NoError(t, err, "%s", out)
		want, err := json.Marshal(rs)
		require.NoError(t, err)
		got, err := json.Marshal(back)
		require.NoError(t, err)
		require.JSONEq(t, string(want), string(got))
	})
}

// The gate lets n evaluations in; the next waits until one leaves or its
// context ends, and says why it gave up.
func TestGate_bounds_concurrent_evaluations(t *testing.T) {
	t.Parallel()
	g := NewGate(2)
	require.NoError(t, g.acquire(t.Context()))
	require.NoError(t, g.acquire(t.Context()))
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Millisecond)
	defer cancel()
	err := g.acquire(ctx)
	require.Error(t, err)
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Contains(t, err.Error(), "wait for an evaluation slot (2 busy)")
	g.release()
	require.NoError(t, g.acquire(t.Context()), "a slot left is taken again")
}
