package rules_test

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/eventpipe/eventpipe/event"
	"github.com/eventpipe/eventpipe/permanent"
	"github.com/eventpipe/eventpipe/rules"
)

// The adversarial pass's conditions are refused in a rules file too, with
// file, line, rule, position and reason.
func TestParse_refuses_hostile_conditions_with_line_position_and_reason(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		cond string
		want string
	}{
		{name: "concatenation_339_terms", cond: "len(payload.s" + strings.Repeat(" + payload.s", 338) + ") > 0",
			want: `rules.yaml:5: rule "hostile": condition: 1:5: on an event of 1.0 MiB this condition may allocate 56.3 GiB`},
		{name: "pattern_from_the_event", cond: `payload.s matches payload.p`,
			want: `rules.yaml:5: rule "hostile": condition: 1:19: the pattern of matches must be a string literal`},
		{name: "counted_repetition", cond: `payload.s matches "(x|xx){500}y"`,
			want: `rules.yaml:5: rule "hostile": condition: 1:19: the regular expression compiles to 3003 instructions`},
		{name: "quadratic_body", cond: `all(payload.items, indexOf(payload.s, .k) >= 0)`,
			want: `(rules.budget.condition_time) per condition; most of it in all(payload.items`},
		{name: "not_boolean", cond: `payload.amount`,
			want: `rules.yaml:5: rule "hostile": condition: 1:1: expected a boolean condition, but payload.amount may be any value`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			file := fmt.Sprintf("taskTriggerRules:\n  - ruleId: hostile\n    eventType: x\n    taskType: log\n    condition: %q\n", tt.cond)
			_, err := rules.Parse([]byte(file), "rules.yaml")
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.want)
		})
	}
}

// Each budget field is named by its YAML key when out of range.
func TestBudget_Validate_names_each_key(t *testing.T) {
	t.Parallel()
	b := rules.Budget{ConditionMemory: 10, ConditionTime: time.Microsecond, EventTime: time.Nanosecond,
		MaxRegexpProgram: 1, MaxRules: -1, ConcurrentEvaluations: -1}
	err := b.Validate()
	require.Error(t, err)
	for _, key := range []string{"rules.budget.condition_memory must be at least 1 MiB (1048576), got 10",
		"rules.budget.condition_time", "rules.budget.event_time", "rules.budget.max_regexp_program",
		"rules.budget.max_rules", "rules.budget.concurrent_evaluations"} {
		assert.Contains(t, err.Error(), key)
	}
}

func TestCompile_refuses_more_rules_than_max_rules(t *testing.T) {
	t.Parallel()
	rs := []rules.Rule{{RuleID: "a", EventType: "x", TaskType: "log"}, {RuleID: "b", EventType: "x", TaskType: "log"}}
	_, err := rules.Compile(rs, rules.WithBudget(rules.Budget{MaxRules: 1}))
	require.Error(t, err)
	assert.EqualError(t, err, "2 rules, more than 1 (rules.budget.max_rules)")
}

// expensive is an accepted condition that costs about 9 ms per 1 KiB of
// payload.s by the estimate (a pattern of 11 instructions, times 10).
var expensive = strings.TrimSuffix(strings.Repeat(`payload.s matches "[a-z]+@[a-z]+\\.com" || `, 10), " || ")

func bigEvent(id string, size int) (*event.Event, int) {
	return &event.Event{MessageID: id, EventType: "x", Payload: map[string]any{"s": strings.Repeat("x", size)}}, size + 100
}

// An event whose rules' estimate at its size is over rules.budget.event_time
// is poisoned before anything runs, with a reason naming the budget; a
// small event of the same rules is evaluated.
func TestSet_Evaluate_poisons_an_event_over_the_event_budget(t *testing.T) {
	t.Parallel()
	// Each rule fits the condition budget; together they do not fit the
	// event's.
	var rs []rules.Rule
	for i := range 3 {
		rs = append(rs, rules.Rule{RuleID: fmt.Sprintf("costly-%d", i), EventType: "x", TaskType: "log", Condition: expensive})
	}
	s, err := rules.Compile(rs, rules.WithBudget(rules.Budget{EventTime: 100 * time.Millisecond,
		ConditionTime: 100 * time.Millisecond, MaxEventBytes: 64 << 10}))
	require.NoError(t, err)

	ev, size := bigEvent("big", 60<<10)
	tasks, err := s.Evaluate(t.Context(), ev, rules.Evaluation{Size: size})
	require.Error(t, err)
	assert.Empty(t, tasks)
	assert.True(t, permanent.Is(err))
	var be *rules.BudgetError
	require.ErrorAs(t, err, &be)
	assert.Equal(t, "big", be.EventID)
	assert.Contains(t, err.Error(), `evaluation budget exceeded for event big: the 3 rules of type "x" may take`)
	assert.Contains(t, err.Error(), `over rules.budget.event_time (100ms); nothing was evaluated`)

	small, size := bigEvent("small", 100)
	_, err = s.Evaluate(t.Context(), small, rules.Evaluation{Size: size})
	require.NoError(t, err)

	rep, err := s.ExplainContext(t.Context(), ev, rules.Evaluation{Size: 60 << 10})
	require.NoError(t, err)
	require.Len(t, rep.Explanations, 3)
	assert.Contains(t, rep.Explanations[0].Error, "evaluation budget exceeded", "a dry run reports the budget too")
}

// guard records marks; it checks every Mark is undone.
type guard struct {
	mu     sync.Mutex
	marked map[string]bool
	marks  int
}

func (g *guard) Mark(id string) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.marked[id] = true
	g.marks++
	return nil
}

func (g *guard) Unmark(id string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.marked, id)
}

// Only events whose estimate is large are marked, so ordinary events touch
// no disk; every mark is removed once the evaluation ends.
func TestSet_Evaluate_marks_only_expensive_events(t *testing.T) {
	t.Parallel()
	s, err := rules.Compile([]rules.Rule{
		{RuleID: "costly", EventType: "x", TaskType: "log", Condition: expensive},
		{RuleID: "cheap", EventType: "y", TaskType: "log", Condition: `payload.s == "x"`},
	})
	require.NoError(t, err)
	g := &guard{marked: map[string]bool{}}
	ev, size := bigEvent("big", 64<<10)
	_, err = s.Evaluate(t.Context(), ev, rules.Evaluation{Size: size, Guard: g})
	require.NoError(t, err)
	assert.Equal(t, 1, g.marks, "an event estimated at 50 ms or more is marked")
	assert.Empty(t, g.marked, "and unmarked after")

	cheap, size := bigEvent("cheap", 64<<10)
	cheap.EventType = "y"
	_, err = s.Evaluate(t.Context(), cheap, rules.Evaluation{Size: size, Guard: g})
	require.NoError(t, err)
	assert.Equal(t, 1, g.marks, "a cheap event is not marked")
}

// A RuleCheck (an executor's parameter spec, say) refuses a rule like the
// rules package's own checks do, naming rule and field.
func TestCompile_runs_rule_checks(t *testing.T) {
	t.Parallel()
	onlyEcho := rules.WithRuleCheck(func(r *rules.Rule) []*rules.FieldError {
		if r.TaskType == "shell" && r.Parameters["command"] != "/bin/echo" {
			return []*rules.FieldError{{Field: "parameters.command", Reason: "not on executors.shell.allowed_commands"}}
		}
		return nil
	})
	_, err := rules.Compile([]rules.Rule{
		{RuleID: "ok", EventType: "x", TaskType: "shell", Parameters: map[string]any{"command": "/bin/echo"}},
		{RuleID: "ls", EventType: "x", TaskType: "shell", Parameters: map[string]any{"command": "/bin/ls"}},
	}, onlyEcho)
	require.Error(t, err)
	assert.EqualError(t, err, `rule "ls": parameters.command: not on executors.shell.allowed_commands`)
}
