package rules_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/eventpipe/eventpipe/permanent"
	"github.com/eventpipe/eventpipe/rules"
)

// doublingLets is `let a0="xxxxxxxxxxxxxxxx"; let a1=a0+a0; ...; let aN=...`
// followed by tail: 16 bytes doubled n times.
func doublingLets(n int, tail string) string {
	var b strings.Builder
	b.WriteString(`let a0="xxxxxxxxxxxxxxxx"; `)
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&b, "let a%d=a%d+a%d; ", i, i-1, i-1)
	}
	return b.String() + tail
}

// nested wraps inner in n calls: open+inner+close, n times.
func nested(n int, open, inner, close string) string {
	return strings.Repeat(open, n) + inner + strings.Repeat(close, n)
}

// Each of these conditions, when run, allocates more than a machine has
// (Go's fatal "out of memory" kills the process) or pins a CPU for hours;
// the ones marked verified did so before they were refused. Compile must
// refuse them without running anything.
func TestCompile_refuses_conditions_that_grow_without_bound(t *testing.T) {
	t.Parallel()
	x := func(n int) string { return strings.Repeat("x", n) }
	tests := []struct {
		name string
		cond string
		want string
	}{
		// Verified: 8 GB string, fatal.
		{name: "let_doubling", cond: doublingLets(28, "len(a28)>0"), want: "1:5: let is not allowed"},
		// Verified: a 64 MB string scanned per item, 1.7 s each.
		{name: "let_string_scanned_per_item", cond: doublingLets(22, `all(1..20, {indexOf(a22, "aab") < 0})`), want: "let is not allowed"},
		{name: "let_alone", cond: "let a = payload.amount; a > 1000", want: "1:5: let is not allowed: a condition is one boolean expression"},
		// Verified: 4 GB allocated before expr's own check, fatal.
		{name: "repeat", cond: `repeat("` + x(4000) + `", 999999) != ""`, want: "1:1: repeat() is not allowed in conditions: its result is its argument times a count"},
		{name: "repeat_through_pipe", cond: `payload.s | repeat(1000) != ""`, want: "repeat() is not allowed"},
		// Verified: fatal.
		{name: "replace_nested", cond: `replace(replace(replace("` + x(1000) + `", "x", "` + x(1000) + `"), "x", "` + x(1000) + `"), "x", "` + x(1000) + `") != ""`,
			want: "1:1: replace() is not allowed in conditions"},
		{name: "join", cond: `join(split(payload.s, ""), payload.s) != ""`, want: "join() is not allowed"},
		{name: "concat", cond: `len(concat(payload.a, payload.b)) > 0`, want: "concat() is not allowed"},
		{name: "flatten", cond: `len(flatten(payload.a)) > 0`, want: "flatten() is not allowed"},
		{name: "toJSON", cond: `toJSON(payload) != ""`, want: "toJSON() is not allowed"},
		// Verified: fatal.
		{name: "toBase64_nested", cond: nested(90, "toBase64(", "messageId", ")") + ` != ""`, want: "1:1: toBase64() is not allowed"},
		{name: "uniq", cond: `len(uniq(payload.ids)) == len(payload.ids)`, want: "uniq() is not allowed"},
		// Verified: fatal; reduce is a predicate, which DisableBuiltin misses.
		{name: "reduce_doubling", cond: `reduce(1..60, #acc + #acc, "x") != ""`, want: "1:1: reduce() is not allowed in conditions: the accumulator can double"},
		// Verified: fatal.
		{name: "chained_maps_doubling", cond: nested(30, "map(", `["xxxxxxxx"]`, ", #+#)") + ` != []`,
			want: "map keeps its body's result for every element, so the body may only pick a part of the element (#, .field, #[0]) or compute a number or boolean, not # + # (+ also joins strings)"},
		// Verified: fatal with a 1 MiB event.
		{name: "map_keeps_an_outer_value", cond: `string(map(1..10000, payload)) != ""`, want: "1:22: map keeps its body's result for every element"},
		// Verified: fatal with a 1 MiB event.
		{name: "map_builds_a_string", cond: `map(1..10000, payload.s + "x") != []`, want: `not payload.s + "x" (+ also joins strings)`},
		// Verified: fatal with a 200,000-number event array.
		{name: "median_of_a_list_kept_per_item", cond: `median(map(1..2000, payload.a)) > 0`, want: "not payload.a (a value from outside the element)"},
		{name: "map_builds_a_list", cond: `len(map(payload.items, [#, #])) > 0`, want: "not [#, #] (a new list or map)"},
		{name: "map_string_of_outer_value", cond: `len(map(payload.items, upper(payload.s))) > 0`, want: "not payload.s (a value from outside the element)"},
		{name: "groupBy_key_joins_strings", cond: `len(groupBy(payload.items, .sku + .name)) > 0`, want: "groupBy keeps its body's result"},
		{name: "sortBy_key_outer_value", cond: `sortBy(payload.items, payload.s)[0] != nil`, want: "sortBy keeps its body's result"},
		// Verified: fatal (each level prints a list twice the size of its input).
		{name: "string_of_split_nested", cond: nested(40, "string(split(", "messageId", `, ""))`) + ` != ""`,
			want: "string() of a list or map is not allowed in conditions"},
		// Verified: fatal ("2" prints the day, "22").
		{name: "format_with_a_computed_layout", cond: nested(60, `date("2025-12-22").Format(`, `"2"`, ")") + ` != ""`,
			want: "1:20: Format's layout must be a string literal"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			require.LessOrEqual(t, len(tt.cond), 4096, "the condition must fit the length limit to test the refusal")
			s, err := rules.Compile([]rules.Rule{{RuleID: "r", EventType: "x", TaskType: "log", Condition: tt.cond}})
			require.Error(t, err)
			assert.Nil(t, s)
			var fe *rules.FieldError
			require.ErrorAs(t, err, &fe)
			assert.Equal(t, "r", fe.RuleID)
			assert.Equal(t, "condition", fe.Field)
			assert.Contains(t, err.Error(), `rule "r": condition: `)
			assert.Contains(t, err.Error(), tt.want)
		})
	}
}

// Conditions that stay within what a condition may cost compile and run.
func TestCompile_accepts_bounded_conditions(t *testing.T) {
	t.Parallel()
	ev := designEvent(1200)
	ev.Payload["items"] = []any{
		map[string]any{"sku": "a", "price": 10.0, "qty": 2.0, "category": "books", "tags": []any{"new"}},
		map[string]any{"sku": "b", "price": 30.0, "qty": 1.0, "category": "games"},
	}
	ev.Payload["a"] = 2.0
	ev.Payload["b"] = 3.0
	ev.Metadata["tags"] = "vip,eu"
	conds := []string{
		`"vip" in split(metadata.tags, ",")`,
		`any(map(payload.items, .sku), # == "b")`,
		`mean(map(payload.items, .price * .qty)) == 25`,
		`sum(payload.items, .price * .qty) == 50`,
		`max(map(payload.items, .price + 1)) == 31`,
		`sortBy(payload.items, .price, "desc")[0].sku == "b"`,
		`len(groupBy(payload.items, lower(.category))) == 2`,
		`map(payload.items, .tags?.[0] ?? "none") == ["new", "none"]`,
		`map(payload.items, .price > 20 ? "high" : "low") == ["low", "high"]`,
		`map(payload.items, #index) == [0, 1]`,
		`map(payload.items, string(.price)) == ["10", "30"]`,
		`filter(payload.items, .category == payload.items[1].category)[0].sku == "b"`,
		`payload.a + payload.b == 5`,
		`payload.currency + "-" + payload.orderId == "CNY-order-12345"`,
		`string(payload.amount) == "1200"`,
		`upper(lower(payload.currency)) == "CNY"`,
		`date(timestamp).Format("2006") == "2025"`,
		`trimPrefix(messageId, "msg-") startsWith "2025"`,
		`len(keys(payload)) > 3 && len(sort(map(payload.items, .price))) == 2`,
	}
	for _, c := range conds {
		t.Run(c, func(t *testing.T) {
			t.Parallel()
			s := compile(t, rules.Rule{RuleID: "r", EventType: "order.created", TaskType: "log", Condition: c})
			tasks, err := s.Match(ev)
			require.NoError(t, err)
			assert.Len(t, tasks, 1, "the condition is true for the event")
		})
	}
}

// The memory budget lets a condition work on event arrays of a few
// thousand elements and stops one that builds a list item by item for a
// million steps with a permanent error naming the rule.
func TestSet_condition_memory_budget(t *testing.T) {
	t.Parallel()
	items := func(n int) []any {
		out := make([]any, n)
		for i := range out {
			out[i] = map[string]any{"sku": fmt.Sprintf("s%d", i), "price": float64(i), "qty": 1.0, "category": fmt.Sprint(i % 7)}
		}
		return out
	}
	tests := []struct {
		name    string
		cond    string
		items   int
		wantErr bool
	}{
		{name: "a_dozen_lists_over_5000_items", items: 5000, cond: `mean(map(payload.items, .price)) > 0 && ` +
			`any(map(payload.items, .sku), # == "s4999") && sortBy(payload.items, .price, "desc")[0].price == 4999 && ` +
			`len(groupBy(payload.items, .category)) == 7 && count(filter(payload.items, .qty > 0), .price > 10) > 0 && ` +
			`max(map(filter(payload.items, .price > 100), .price * .qty)) > 0 && len(sort(map(payload.items, .price))) == 5000 && ` +
			`all(map(payload.items, .qty), # == 1) && len(filter(payload.items, .price >= 0)) == 5000 && ` +
			`none(map(payload.items, .category), # == "x") && len(1..20000) == 20000`},
		{name: "range_of_a_million", items: 1, cond: `all(1..1000000, {# > 0})`, wantErr: true},
		{name: "range_of_200000", items: 1, cond: `all(1..200000, {# > 0})`, wantErr: true},
		{name: "two_lists_over_60000_items", items: 60000, cond: `mean(map(payload.items, .price)) > 0 && any(map(payload.items, .sku), # == "s1")`, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			// A dozen list passes over an event array of 1 MiB (512k
			// items) may cost 140 MiB and 1.4 s: over the default
			// condition budget, which this test is not about.
			s, err := rules.Compile([]rules.Rule{{RuleID: "r", EventType: "order.created", TaskType: "log", Condition: tt.cond}},
				rules.WithBudget(rules.Budget{ConditionMemory: 256 << 20, ConditionTime: 2 * time.Second}))
			require.NoError(t, err)
			ev := designEvent(1200)
			ev.Payload["items"] = items(tt.items)
			tasks, err := s.Match(ev)
			if !tt.wantErr {
				require.NoError(t, err)
				assert.Len(t, tasks, 1)
				return
			}
			require.Error(t, err)
			assert.Empty(t, tasks)
			assert.True(t, permanent.Is(err), "the same event fails the same way again")
			assert.Contains(t, err.Error(), `rule "r": condition: evaluation failed at 1:`)
			assert.Contains(t, err.Error(), "memory budget exceeded (a condition may build at most 100000 list items per event")
		})
	}
}

// string() of a list known only at run time fails the evaluation instead
// of printing it; one known at compile time is refused then.
func TestSet_string_of_a_list_fails_at_run_time(t *testing.T) {
	t.Parallel()
	s := compile(t, rules.Rule{RuleID: "r", EventType: "order.created", TaskType: "log", Condition: `string(first([split(payload.currency, "")])) != ""`})
	tasks, err := s.Match(designEvent(1200))
	require.Error(t, err)
	assert.Empty(t, tasks)
	assert.True(t, permanent.Is(err))
	assert.Contains(t, err.Error(), `rule "r": condition: evaluation failed at 1:1: string() of a list or map is not allowed in conditions`)

	for _, c := range []string{`string(payload) != ""`, `string(split(payload.currency, "")) != ""`} {
		_, err := rules.Compile([]rules.Rule{{RuleID: "r", EventType: "x", TaskType: "log", Condition: c}})
		require.Error(t, err, c)
		assert.Contains(t, err.Error(), "string() of a list or map is not allowed in conditions", c)
	}

	ev := designEvent(1200)
	ev.Payload["paid"] = true
	for _, c := range []string{`string(payload.amount) == "1200"`, `string(payload.paid) == "true"`, `string(payload.currency) == "CNY"`,
		`string(duration("90m")) == "1h30m0s"`, `string(payload.missing) == "<nil>"`, `string(date(timestamp)) startsWith "2025-09-06"`} {
		s := compile(t, rules.Rule{RuleID: "r", EventType: "order.created", TaskType: "log", Condition: c})
		tasks, err := s.Match(ev)
		require.NoError(t, err, c)
		assert.Len(t, tasks, 1, c)
	}
}
