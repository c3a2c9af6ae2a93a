package rules_test

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/eventpipe/eventpipe/event"
	"github.com/eventpipe/eventpipe/permanent"
	"github.com/eventpipe/eventpipe/rules"
	"github.com/eventpipe/eventpipe/task"
)

// designEvent is the sample event of DESIGN.md with the given amount.
func designEvent(amount float64) *event.Event {
	return &event.Event{
		MessageID:   "msg-20250906-123456",
		EventType:   "order.created",
		Timestamp:   time.Date(2025, 9, 6, 10, 30, 0, 0, time.UTC),
		Source:      "order-service",
		Destination: "schedule-platform",
		Priority:    event.PriorityHigh,
		Payload: map[string]any{"orderId": "order-12345", "customerId": "customer-67890",
			"amount": amount, "currency": "CNY"},
		Metadata: map[string]any{"traceId": "trace-abcdef-123456", "version": "1.0", "schema": "order.created.v1"},
	}
}

func paymentEvent(status string) *event.Event {
	return &event.Event{
		MessageID: "msg-pay-1",
		EventType: "payment.completed",
		Priority:  event.PriorityMedium,
		Payload:   map[string]any{"orderId": "order-12345", "status": status},
		Metadata:  map[string]any{"traceId": "trace-pay"},
	}
}

// seedRules are the two rules of the seed, loaded from the example file.
func seedRules(t *testing.T) []rules.Rule {
	t.Helper()
	rs, err := rules.LoadFile("../examples/rules.yaml")
	require.NoError(t, err)
	require.GreaterOrEqual(t, len(rs), 2)
	return rs[:2]
}

func compile(t *testing.T, rs ...rules.Rule) *rules.Set {
	t.Helper()
	s, err := rules.Compile(rs)
	require.NoError(t, err)
	return s
}

func ptr[T any](v T) *T { return &v }

func TestLoadFile_loads_seed_rules_unchanged(t *testing.T) {
	t.Parallel()
	want := []rules.Rule{
		{
			RuleID:      "order-created-trigger",
			RuleName:    "订单创建触发数据同步",
			EventType:   "order.created",
			Condition:   "payload.amount > 1000",
			TaskName:    "high-value-order-processing",
			TaskType:    "shell",
			Parameters:  map[string]any{"script": "/scripts/process-high-value-order.sh", "timeout": 3600},
			Priority:    "HIGH",
			Enabled:     ptr(true),
			Description: "处理高价值订单的后续流程",
		},
		{
			RuleID:    "payment-completed-trigger",
			EventType: "payment.completed",
			Condition: `payload.status == "SUCCESS"`,
			TaskName:  "inventory-update",
			TaskType:  "http",
			Parameters: map[string]any{
				"url":    "https://inventory.example.com/api/v1/inventory/update",
				"method": "POST",
				"body":   map[string]any{"orderId": "${payload.orderId}"},
			},
			Priority: "MEDIUM",
			Enabled:  ptr(true),
		},
	}
	assert.Equal(t, want, seedRules(t))
}

func TestSet_seed_acceptance(t *testing.T) {
	t.Parallel()
	s := compile(t, seedRules(t)...)

	t.Run("design_sample_event_makes_no_task_and_explains_false_condition", func(t *testing.T) {
		t.Parallel()
		tasks, err := s.Match(designEvent(999.99))
		require.NoError(t, err)
		assert.Empty(t, tasks)

		rep := s.Explain(designEvent(999.99))
		assert.Empty(t, rep.Tasks)
		require.Len(t, rep.Explanations, 2)
		x := rep.Explanations[0]
		assert.Equal(t, "order-created-trigger", x.RuleID)
		assert.True(t, x.Enabled)
		assert.True(t, x.TypeMatched)
		require.NotNil(t, x.ConditionResult)
		assert.False(t, *x.ConditionResult)
		assert.Empty(t, x.Error)
		assert.Nil(t, x.Task)
		y := rep.Explanations[1]
		assert.Equal(t, "payment-completed-trigger", y.RuleID)
		assert.False(t, y.TypeMatched)
		assert.Nil(t, y.ConditionResult, "a rule of another type is not evaluated")
	})

	t.Run("high_value_order_makes_processing_task", func(t *testing.T) {
		t.Parallel()
		before := time.Now().UTC()
		tasks, err := s.Match(designEvent(1200))
		require.NoError(t, err)
		require.Len(t, tasks, 1)
		got := tasks[0]
		assert.Equal(t, task.ID("msg-20250906-123456", "order-created-trigger"), got.TaskID)
		assert.Equal(t, "high-value-order-processing", got.TaskName)
		assert.Equal(t, "shell", got.TaskType)
		assert.Equal(t, "HIGH", got.Priority)
		assert.Equal(t, map[string]any{"script": "/scripts/process-high-value-order.sh", "timeout": 3600}, got.Parameters)
		assert.Equal(t, 3600, got.Timeout)
		assert.Equal(t, "order-created-trigger", got.RuleID)
		assert.Equal(t, "msg-20250906-123456", got.EventID)
		assert.Equal(t, "order.created", got.EventType)
		assert.Equal(t, "trace-abcdef-123456", got.TraceID)
		assert.Equal(t, "msg-20250906-123456", got.PartitionKey, "partition key defaults to the event id")
		assert.False(t, got.CreatedAt.Before(before))
		assert.Equal(t, time.UTC, got.CreatedAt.Location())
	})

	t.Run("successful_payment_makes_inventory_update", func(t *testing.T) {
		t.Parallel()
		tasks, err := s.Match(paymentEvent("SUCCESS"))
		require.NoError(t, err)
		require.Len(t, tasks, 1)
		assert.Equal(t, "inventory-update", tasks[0].TaskName)
		assert.Equal(t, "http", tasks[0].TaskType)
		assert.Equal(t, "MEDIUM", tasks[0].Priority)
		assert.Equal(t, map[string]any{
			"url":    "https://inventory.example.com/api/v1/inventory/update",
			"method": "POST",
			"body":   map[string]any{"orderId": "order-12345"},
		}, tasks[0].Parameters)
		assert.Equal(t, "trace-pay", tasks[0].TraceID)
	})

	t.Run("failed_payment_makes_nothing", func(t *testing.T) {
		t.Parallel()
		tasks, err := s.Match(paymentEvent("FAILED"))
		require.NoError(t, err)
		assert.Empty(t, tasks)
	})
}

func TestSet_matches_design_sample_json_parsed_by_event_package(t *testing.T) {
	t.Parallel()
	sample := `{"messageId":"msg-20250906-123456","eventType":"order.created","timestamp":"2025-09-06T10:30:00Z",
		"source":"order-service","destination":"schedule-platform","priority":"HIGH",
		"payload":{"orderId":"order-12345","customerId":"customer-67890","amount":1200,"currency":"CNY"},
		"metadata":{"traceId":"trace-abcdef-123456","version":"1.0","schema":"order.created.v1"}}`
	ev, err := event.Parse([]byte(sample))
	require.NoError(t, err)
	tasks, err := compile(t, seedRules(t)...).Match(ev)
	require.NoError(t, err)
	require.Len(t, tasks, 1)
	assert.Equal(t, "high-value-order-processing", tasks[0].TaskName)
}

func TestLoadFile_reports_every_problem_of_invalid_example(t *testing.T) {
	t.Parallel()
	rs, err := rules.LoadFile("../examples/rules-invalid.yaml")
	require.Error(t, err)
	assert.Nil(t, rs)
	msg := err.Error()
	for _, want := range []string{
		`rules-invalid.yaml:7: rule "misspelled-key": unknown key "conditon"`,
		`rules-invalid.yaml:12: rule "non-boolean-condition": condition: 1:16: expected a boolean condition`,
		`rules-invalid.yaml:17: rule "syntax-error": condition: 1:30: unexpected token EOF`,
	} {
		assert.Contains(t, msg, want)
	}
	var fe *rules.FieldError
	require.ErrorAs(t, err, &fe)
	assert.Equal(t, 7, fe.Line)
}

func TestLoadFile_loads_every_example_rule(t *testing.T) {
	t.Parallel()
	rs, err := rules.LoadFile("../examples/rules.yaml")
	require.NoError(t, err)
	_, err = rules.Compile(rs, rules.WithTaskTypes("shell", "http", "log"))
	require.NoError(t, err)
}

func TestLoadFile_names_missing_file(t *testing.T) {
	t.Parallel()
	_, err := rules.LoadFile(filepath.Join(t.TempDir(), "absent.yaml"))
	require.Error(t, err)
	assert.ErrorIs(t, err, os.ErrNotExist)
}

func TestParse_rejects_bad_files_with_line_rule_and_key(t *testing.T) {
	t.Parallel()
	const ok = "    eventType: order.created\n    taskType: log\n"
	tests := []struct {
		name      string
		yaml      string
		want      []string
		wantCount int // of joined errors, when checked
	}{
		{name: "yaml_syntax_error", yaml: "taskTriggerRules: [", want: []string{"r.yaml: yaml:"}},
		{name: "unknown_top_level_key", yaml: "rules: []\n", want: []string{`r.yaml:1: unknown key "rules"`}},
		{name: "top_level_not_a_mapping", yaml: "- a\n", want: []string{"r.yaml:1: expected a mapping"}},
		{name: "rules_not_a_list", yaml: "taskTriggerRules: 3\n", want: []string{"r.yaml:1: taskTriggerRules: expected a list"}},
		{name: "rule_not_a_mapping", yaml: "taskTriggerRules:\n  - x\n", want: []string{"r.yaml:2: rule #1: expected a rule"},
			wantCount: 1},
		{name: "duplicate_top_level_key", yaml: "taskTriggerRules: []\ntaskTriggerRules: []\n",
			want: []string{`r.yaml:2: duplicate key "taskTriggerRules"`}},
		{name: "unknown_rule_key", yaml: "taskTriggerRules:\n  - ruleId: a\n" + ok + "    conditon: x\n",
			want: []string{`r.yaml:5: rule "a": unknown key "conditon"`}},
		{name: "missing_rule_id_named_by_position", yaml: "taskTriggerRules:\n  - eventType: x\n    taskType: log\n",
			want: []string{"r.yaml:2: rule #1: ruleId: required"}},
		{name: "duplicate_key", yaml: "taskTriggerRules:\n  - ruleId: a\n" + ok + "    taskType: log\n",
			want: []string{`r.yaml:5: rule "a": duplicate key "taskType"`}},
		{name: "duplicate_rule_id_on_second_rule", yaml: "taskTriggerRules:\n  - ruleId: a\n" + ok + "  - ruleId: a\n" + ok,
			want: []string{`r.yaml:5: rule "a": ruleId: duplicate ruleId "a"`}},
		{name: "enabled_not_bool", yaml: "taskTriggerRules:\n  - ruleId: a\n" + ok + "    enabled: maybe\n",
			want: []string{`r.yaml:5: rule "a": enabled: must be true or false, got "maybe"`}},
		{name: "enabled_list", yaml: "taskTriggerRules:\n  - ruleId: a\n" + ok + "    enabled: [true]\n",
			want: []string{`r.yaml:5: rule "a": enabled: must be true or false, got a mapping or list`}},
		{name: "updated_at_not_time", yaml: "taskTriggerRules:\n  - ruleId: a\n" + ok + "    updatedAt: yesterday\n",
			want: []string{`r.yaml:5: rule "a": updatedAt: must be an RFC 3339 time, got "yesterday"`}},
		{name: "parameters_not_mapping", yaml: "taskTriggerRules:\n  - ruleId: a\n" + ok + "    parameters: [1]\n",
			want: []string{`r.yaml:5: rule "a": parameters: must be a mapping`}},
		{name: "string_field_given_a_list", yaml: "taskTriggerRules:\n  - ruleId: a\n" + ok + "    condition: [x]\n",
			want: []string{`r.yaml:5: rule "a": condition: must be a string`}},
		{name: "version_not_number", yaml: "taskTriggerRules:\n  - ruleId: a\n" + ok + "    version: x\n",
			want: []string{`r.yaml:5: rule "a": version: must be a whole number`}},
		{name: "merge_key_in_parameters", yaml: "taskTriggerRules:\n  - ruleId: a\n" + ok + "    parameters:\n      <<: {a: 1}\n",
			want: []string{`r.yaml:6: rule "a": parameters: keys must be plain strings`}},
		{name: "bad_placeholder_on_its_line", yaml: "taskTriggerRules:\n  - ruleId: a\n" + ok + "    parameters:\n      x: 1\n      msg: \"${foo}\"\n",
			want: []string{`r.yaml:7: rule "a": parameters.msg: ${foo}: unknown placeholder "foo"`}},
		{name: "bad_list_item_on_its_line", yaml: "taskTriggerRules:\n  - ruleId: a\n" + ok + "    parameters:\n      l:\n        - ok\n        - \"${payload\"\n",
			want: []string{`r.yaml:8: rule "a": parameters.l[1]: unterminated placeholder`}},
		{name: "every_problem_of_every_rule", yaml: "taskTriggerRules:\n  - ruleId: a\n    eventType: order..x\n    priority: urgent\n  - ruleId: b\n    taskType: log\n",
			want: []string{`r.yaml:3: rule "a": eventType:`, `r.yaml:2: rule "a": taskType: required`,
				`r.yaml:4: rule "a": priority: "urgent" must be HIGH, MEDIUM or LOW`, `r.yaml:5: rule "b": eventType: required`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rs, err := rules.Parse([]byte(tt.yaml), "r.yaml")
			require.Error(t, err)
			assert.Nil(t, rs)
			for _, w := range tt.want {
				assert.Contains(t, err.Error(), w)
			}
			if tt.wantCount > 0 {
				assert.Len(t, strings.Split(err.Error(), "\n"), tt.wantCount)
			}
		})
	}
}

func TestParse_accepts_empty_files_and_aliases(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		yaml string
		want int
	}{
		{name: "empty_file", yaml: "", want: 0},
		{name: "comment_only", yaml: "# nothing\n", want: 0},
		{name: "null_list", yaml: "taskTriggerRules:\n", want: 0},
		{name: "anchored_parameters_shared", yaml: "taskTriggerRules:\n" +
			"  - {ruleId: a, eventType: x, taskType: log, parameters: &p {m: hi}}\n" +
			"  - {ruleId: b, eventType: y, taskType: log, parameters: *p}\n", want: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rs, err := rules.Parse([]byte(tt.yaml), "r.yaml")
			require.NoError(t, err)
			assert.Len(t, rs, tt.want)
		})
	}
}

func TestParse_null_values_mean_absent(t *testing.T) {
	t.Parallel()
	rs, err := rules.Parse([]byte("taskTriggerRules:\n  - ruleId: a\n    eventType: x\n    taskType: log\n"+
		"    enabled: ~\n    version: null\n    parameters:\n    condition:\n"), "r.yaml")
	require.NoError(t, err)
	require.Len(t, rs, 1)
	assert.Nil(t, rs[0].Enabled)
	assert.True(t, rs[0].IsEnabled())
	assert.Zero(t, rs[0].Version)
	assert.Nil(t, rs[0].Parameters)
	assert.Empty(t, rs[0].Condition)
}

func TestParse_stops_alias_bombs(t *testing.T) {
	t.Parallel()
	var b strings.Builder
	b.WriteString("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n")
	for i := 1; i < 9; i++ {
		b.WriteString("a" + string(rune('0'+i)) + ": &a" + string(rune('0'+i)) + " [")
		for j := range 10 {
			if j > 0 {
				b.WriteString(", ")
			}
			b.WriteString("*a" + string(rune('0'+i-1)))
		}
		b.WriteString("]\n")
	}
	doc := "taskTriggerRules:\n  - ruleId: a\n    eventType: x\n    taskType: log\n    parameters:\n" +
		indent(b.String(), "      ")
	_, err := rules.Parse([]byte(doc), "bomb.yaml")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "too many YAML nodes")
}

func indent(s, prefix string) string {
	lines := strings.Split(strings.TrimSuffix(s, "\n"), "\n")
	for i := range lines {
		lines[i] = prefix + lines[i]
	}
	return strings.Join(lines, "\n") + "\n"
}

func TestMarshalYAML_round_trips(t *testing.T) {
	t.Parallel()
	rs, err := rules.LoadFile("../examples/rules.yaml")
	require.NoError(t, err)
	rs[0].Version = 3
	rs[0].UpdatedAt = time.Date(2025, 9, 6, 10, 30, 0, 0, time.UTC)
	rs[1].PartitionKey = "${payload.orderId}"
	out, err := rules.MarshalYAML(rs)
	require.NoError(t, err)
	assert.True(t, strings.HasPrefix(string(out), "taskTriggerRules:\n"))
	back, err := rules.Parse(out, "out.yaml")
	require.NoError(t, err)
	assert.Equal(t, rs, back)

	empty, err := rules.MarshalYAML(nil)
	require.NoError(t, err)
	back, err = rules.Parse(empty, "empty.yaml")
	require.NoError(t, err)
	assert.Empty(t, back)
}

func TestCompile_rejects_invalid_rules_naming_rule_and_field(t *testing.T) {
	t.Parallel()
	base := func(mod func(*rules.Rule)) rules.Rule {
		r := rules.Rule{RuleID: "r1", EventType: "order.created", TaskType: "log"}
		mod(&r)
		return r
	}
	tests := []struct {
		name string
		rule rules.Rule
		opts []rules.Option
		want string
	}{
		{name: "missing_rule_id", rule: base(func(r *rules.Rule) { r.RuleID = "" }), want: "rule #1: ruleId: required"},
		{name: "rule_id_with_space", rule: base(func(r *rules.Rule) { r.RuleID = "a b" }), want: `ruleId: "a b" must be 1 to 128 characters`},
		{name: "rule_id_too_long", rule: base(func(r *rules.Rule) { r.RuleID = strings.Repeat("a", 129) }), want: "rule #1: ruleId:"},
		{name: "missing_event_type", rule: base(func(r *rules.Rule) { r.EventType = "" }), want: `rule "r1": eventType: required`},
		{name: "star_inside_word", rule: base(func(r *rules.Rule) { r.EventType = "order.cre*" }), want: "must be whole words"},
		{name: "hash_inside_word", rule: base(func(r *rules.Rule) { r.EventType = "order#" }), want: "must be whole words"},
		{name: "empty_word", rule: base(func(r *rules.Rule) { r.EventType = "order..created" }), want: "empty word"},
		{name: "trailing_dot", rule: base(func(r *rules.Rule) { r.EventType = "order." }), want: "empty word"},
		{name: "space_in_type", rule: base(func(r *rules.Rule) { r.EventType = "order created" }), want: "space or control"},
		{name: "missing_task_type", rule: base(func(r *rules.Rule) { r.TaskType = "" }), want: "taskType: required"},
		{name: "unknown_task_type", rule: base(func(r *rules.Rule) { r.TaskType = "email" }), opts: []rules.Option{rules.WithTaskTypes("log", "shell")},
			want: `taskType: unknown executor "email" (known: log, shell)`},
		{name: "no_task_types_known", rule: base(func(r *rules.Rule) {}), opts: []rules.Option{rules.WithTaskTypes()},
			want: `taskType: unknown executor "log" (known: none registered)`},
		{name: "bad_priority", rule: base(func(r *rules.Rule) { r.Priority = "URGENT" }), want: `priority: "URGENT" must be HIGH, MEDIUM or LOW`},
		{name: "condition_syntax_error_with_position", rule: base(func(r *rules.Rule) { r.Condition = "payload.amount >" }), want: "condition: 1:16: unexpected token EOF"},
		{name: "condition_syntax_error_on_second_line", rule: base(func(r *rules.Rule) { r.Condition = "true &&\n  payload.x ==" }), want: "condition: 2:"},
		{name: "condition_unknown_name", rule: base(func(r *rules.Rule) { r.Condition = "amount > 1" }), want: "condition: 1:1: unknown name amount"},
		{name: "condition_arithmetic_is_not_boolean", rule: base(func(r *rules.Rule) { r.Condition = "payload.amount + 1" }), want: "condition: 1:16: expected a boolean condition"},
		{name: "condition_string_is_not_boolean", rule: base(func(r *rules.Rule) { r.Condition = "eventType" }), want: "condition: 1:1: expected bool, but got string"},
		{name: "condition_number_literal_is_not_boolean", rule: base(func(r *rules.Rule) { r.Condition = "1" }), want: "condition: 1:1: expected bool, but got int"},
		{name: "condition_ternary_number_is_not_boolean", rule: base(func(r *rules.Rule) { r.Condition = "payload.a ? 1 : payload.b" }), want: "expected"},
		{name: "condition_too_long", rule: base(func(r *rules.Rule) { r.Condition = strings.Repeat("true && ", 600) + "true" }), want: "condition: longer than 4096 bytes"},
		{name: "unknown_placeholder_root", rule: base(func(r *rules.Rule) { r.Parameters = map[string]any{"m": "${foo}"} }), want: `parameters.m: ${foo}: unknown placeholder "foo"`},
		{name: "field_of_scalar_root", rule: base(func(r *rules.Rule) { r.TaskName = "${eventId.x}" }), want: "taskName: ${eventId.x}: eventId has no fields"},
		{name: "unterminated_placeholder", rule: base(func(r *rules.Rule) { r.PartitionKey = "${payload.a" }), want: "partitionKey: unterminated placeholder"},
		{name: "nested_placeholder_in_default", rule: base(func(r *rules.Rule) { r.PartitionKey = "${payload.a:-${eventId}}" }), want: "a default cannot hold a placeholder"},
		{name: "empty_path_word", rule: base(func(r *rules.Rule) { r.Parameters = map[string]any{"m": "${payload..a}"} }), want: "bad path"},
		{name: "nested_list_placeholder", rule: base(func(r *rules.Rule) { r.Parameters = map[string]any{"l": []any{map[string]any{"x": "${nope}"}}} }), want: "parameters.l[0].x: ${nope}"},
		{name: "unsupported_parameter_type", rule: base(func(r *rules.Rule) { r.Parameters = map[string]any{"m": map[any]any{1: "x"}} }), want: "parameters.m: unsupported value of type map[interface {}]interface {}"},
		{name: "timeout_zero", rule: base(func(r *rules.Rule) { r.Parameters = map[string]any{"timeout": 0} }), want: "parameters.timeout: must be a whole number of seconds between 1 and"},
		{name: "timeout_fraction", rule: base(func(r *rules.Rule) { r.Parameters = map[string]any{"timeout": 1.5} }), want: "parameters.timeout:"},
		{name: "timeout_word", rule: base(func(r *rules.Rule) { r.Parameters = map[string]any{"timeout": "soon"} }), want: `parameters.timeout: must be a positive whole number of seconds, got "soon"`},
		{name: "timeout_object", rule: base(func(r *rules.Rule) { r.Parameters = map[string]any{"timeout": map[string]any{}} }), want: "got an object or array"},
		{name: "shell_command_placeholder", rule: base(func(r *rules.Rule) {
			r.TaskType = "shell"
			r.Parameters = map[string]any{"command": "/bin/${payload.cmd}"}
		}), want: "parameters.command: placeholders are not allowed here"},
		{name: "shell_script_placeholder", rule: base(func(r *rules.Rule) {
			r.TaskType = "shell"
			r.Parameters = map[string]any{"script": "${payload.script:-/bin/true}"}
		}), want: "parameters.script: placeholders are not allowed here"},
		{name: "shell_args_as_string_template", rule: base(func(r *rules.Rule) {
			r.TaskType = "shell"
			r.Parameters = map[string]any{"command": "/bin/echo", "args": "${payload.args}"}
		}), want: "parameters.args: must be a list of arguments"},
		{name: "shell_args_nested_list", rule: base(func(r *rules.Rule) {
			r.TaskType = "shell"
			r.Parameters = map[string]any{"command": "/bin/echo", "args": []any{[]any{"${payload.a}"}}}
		}), want: "parameters.args[0]: an argument must be a string"},
		{name: "http_url_host_placeholder", rule: base(func(r *rules.Rule) {
			r.TaskType = "http"
			r.Parameters = map[string]any{"url": "https://${payload.host}/x"}
		}), want: "parameters.url: placeholders are not allowed in the scheme or host"},
		{name: "http_url_host_suffix_placeholder", rule: base(func(r *rules.Rule) {
			r.TaskType = "http"
			r.Parameters = map[string]any{"url": "https://api.example.com${payload.rest}"}
		}), want: "scheme or host"},
		{name: "http_url_scheme_placeholder", rule: base(func(r *rules.Rule) {
			r.TaskType = "http"
			r.Parameters = map[string]any{"url": "${payload.scheme}://example.com/x"}
		}), want: "scheme or host"},
		{name: "http_url_lone_placeholder", rule: base(func(r *rules.Rule) {
			r.TaskType = "http"
			r.Parameters = map[string]any{"url": "${payload.url}"}
		}), want: "scheme or host"},
		{name: "http_url_userinfo_placeholder", rule: base(func(r *rules.Rule) {
			r.TaskType = "http"
			r.Parameters = map[string]any{"url": "https://${payload.u}@example.com/"}
		}), want: "scheme or host"},
		{name: "http_url_not_a_string", rule: base(func(r *rules.Rule) {
			r.TaskType = "http"
			r.Parameters = map[string]any{"url": []any{"${payload.u}"}}
		}), want: "parameters.url: must be a string"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s, err := rules.Compile([]rules.Rule{tt.rule}, tt.opts...)
			require.Error(t, err)
			assert.Nil(t, s)
			assert.Contains(t, err.Error(), tt.want)
			var fe *rules.FieldError
			assert.ErrorAs(t, err, &fe)
		})
	}
}

func TestCompile_joins_every_problem_of_every_rule(t *testing.T) {
	t.Parallel()
	_, err := rules.Compile([]rules.Rule{
		{RuleID: "a", EventType: "x", TaskType: "log", Condition: "payload.amount +"},
		{RuleID: "b", EventType: "x.#y", TaskType: "", Priority: "nope"},
		{RuleID: "a", EventType: "x", TaskType: "log"},
	})
	require.Error(t, err)
	var joined interface{ Unwrap() []error }
	require.ErrorAs(t, err, &joined)
	var got []string
	for _, e := range joined.Unwrap() {
		got = append(got, e.Error())
	}
	require.Len(t, got, 5, got)
	assert.Contains(t, got[0], `rule "a": condition:`)
	assert.Contains(t, got[1], `rule "b": eventType:`)
	assert.Contains(t, got[2], `rule "b": taskType: required`)
	assert.Contains(t, got[3], `rule "b": priority:`)
	assert.Equal(t, `rule "a": ruleId: duplicate ruleId "a"`, got[4])
}

func TestCompile_accepts_safe_templates(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		rule rules.Rule
	}{
		{name: "shell_args_placeholders", rule: rules.Rule{RuleID: "a", EventType: "x", TaskType: "shell",
			Parameters: map[string]any{"command": "/bin/echo", "args": []any{"--id=${payload.id}", "${payload.id}", 3}}}},
		{name: "http_url_path_and_query_placeholders", rule: rules.Rule{RuleID: "a", EventType: "x", TaskType: "http",
			Parameters: map[string]any{"url": "https://h.example/orders/${payload.id}?c=${payload.c}"}}},
		{name: "other_types_may_template_anything", rule: rules.Rule{RuleID: "a", EventType: "x", TaskType: "log",
			Parameters: map[string]any{"command": "${payload.c}", "url": "${payload.u}"}}},
		{name: "timeout_as_template", rule: rules.Rule{RuleID: "a", EventType: "x", TaskType: "log",
			Parameters: map[string]any{"timeout": "${payload.t:-30}"}}},
		{name: "timeout_numeric_string", rule: rules.Rule{RuleID: "a", EventType: "x", TaskType: "log",
			Parameters: map[string]any{"timeout": "30"}}},
		{name: "lower_case_priority", rule: rules.Rule{RuleID: "a", EventType: "x", TaskType: "log", Priority: "low"}},
		{name: "rule_id_punctuation", rule: rules.Rule{RuleID: "team:a.b_c-1", EventType: "x", TaskType: "log"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := rules.Compile([]rules.Rule{tt.rule})
			assert.NoError(t, err)
		})
	}
}

func TestSet_type_patterns(t *testing.T) {
	t.Parallel()
	tests := []struct {
		pattern string
		typ     string
		want    bool
	}{
		{"order.*", "order.created", true},
		{"order.*", "order", false},
		{"order.*", "order.created.v2", false},
		{"order.#", "order", true},
		{"order.#", "order.created", true},
		{"order.#", "order.created.v2", true},
		{"order.#", "orders.created", false},
		{"order.#", "payment.order", false},
		{"#", "order.created", true},
		{"#", "x", true},
		{"*", "x", true},
		{"*", "x.y", false},
		{"*.created", "order.created", true},
		{"*.created", "order.paid", false},
		{"*.created", "created", false},
		{"a.#.b", "a.b", true},
		{"a.#.b", "a.x.y.b", true},
		{"a.#.b", "a.x.y.c", false},
		{"#.b.#", "a.b.c", true},
		{"#.b.#", "a.c", false},
		{"a.*.#", "a", false},
		{"a.*.#", "a.x", true},
		{"order.created", "order.created", true},
		{"order.created", "order.created.v2", false},
	}
	for _, tt := range tests {
		t.Run(tt.pattern+"_vs_"+tt.typ, func(t *testing.T) {
			t.Parallel()
			s := compile(t, rules.Rule{RuleID: "p", EventType: tt.pattern, TaskType: "log"})
			ev := &event.Event{MessageID: "m", EventType: tt.typ}
			tasks, err := s.Match(ev)
			require.NoError(t, err)
			assert.Equal(t, tt.want, len(tasks) == 1, "Match")
			rep := s.Explain(ev)
			require.Len(t, rep.Explanations, 1)
			assert.Equal(t, tt.want, rep.Explanations[0].TypeMatched, "Explain")
			// A second lookup of the same type comes from the cache.
			again, err := s.Match(ev)
			require.NoError(t, err)
			assert.Len(t, again, len(tasks))
		})
	}
}

func TestSet_keeps_file_order_across_exact_and_pattern_rules(t *testing.T) {
	t.Parallel()
	s := compile(t,
		rules.Rule{RuleID: "1-all", EventType: "#", TaskType: "log"},
		rules.Rule{RuleID: "2-exact", EventType: "order.created", TaskType: "log"},
		rules.Rule{RuleID: "3-other", EventType: "payment.completed", TaskType: "log"},
		rules.Rule{RuleID: "4-star", EventType: "order.*", TaskType: "log"},
		rules.Rule{RuleID: "5-exact-again", EventType: "order.created", TaskType: "log"},
		rules.Rule{RuleID: "6-suffix", EventType: "*.created", TaskType: "log"},
	)
	ids := func(typ string) []string {
		tasks, err := s.Match(&event.Event{MessageID: "m", EventType: typ})
		require.NoError(t, err)
		var out []string
		for _, tk := range tasks {
			out = append(out, tk.RuleID)
		}
		return out
	}
	assert.Equal(t, []string{"1-all", "2-exact", "4-star", "5-exact-again", "6-suffix"}, ids("order.created"))
	assert.Equal(t, []string{"1-all", "4-star"}, ids("order.paid"))
	assert.Equal(t, []string{"1-all", "6-suffix"}, ids("user.created"))
	assert.Equal(t, []string{"1-all", "3-other"}, ids("payment.completed"))
}

func TestSet_disabled_rules_never_match(t *testing.T) {
	t.Parallel()
	s := compile(t,
		rules.Rule{RuleID: "off", EventType: "order.created", TaskType: "log", Enabled: ptr(false)},
		rules.Rule{RuleID: "off-pattern", EventType: "order.#", TaskType: "log", Enabled: ptr(false)},
		rules.Rule{RuleID: "on-by-default", EventType: "order.created", TaskType: "log"},
	)
	tasks, err := s.Match(designEvent(5))
	require.NoError(t, err)
	require.Len(t, tasks, 1)
	assert.Equal(t, "on-by-default", tasks[0].RuleID)

	rep := s.Explain(designEvent(5))
	require.Len(t, rep.Explanations, 3)
	assert.False(t, rep.Explanations[0].Enabled)
	assert.True(t, rep.Explanations[0].TypeMatched)
	assert.Nil(t, rep.Explanations[0].ConditionResult)
	assert.False(t, rep.Explanations[1].Enabled)
	assert.True(t, rep.Explanations[2].Enabled)
	assert.Len(t, rep.Tasks, 1)
	assert.Len(t, s.Rules(), 3, "disabled rules stay in the set")
}

func TestSet_renders_templates(t *testing.T) {
	t.Parallel()
	ev := &event.Event{
		MessageID: "m-1",
		EventType: "order.created",
		Timestamp: time.Date(2025, 9, 6, 10, 30, 0, 0, time.UTC),
		Source:    "order-service",
		Priority:  event.PriorityLow,
		Payload: map[string]any{
			"id": "o-1", "amount": 1200.0, "big": 1e6, "frac": 999.99, "n": -3.0, "paid": true,
			"zero": "", "null": nil,
			"customer": map[string]any{"name": "Ann", "tags": []any{"vip", "new"}},
			"items":    []any{map[string]any{"sku": "s-1"}},
		},
		Metadata: map[string]any{"traceId": "tr-1", "version": "1.0"},
	}
	tests := []struct {
		name string
		tmpl any
		want any
	}{
		{name: "literal_string", tmpl: "plain $ text", want: "plain $ text"},
		{name: "escaped_placeholder", tmpl: "$${payload.id}", want: "${payload.id}"},
		{name: "constant_number", tmpl: 5, want: 5},
		{name: "envelope_fields", tmpl: "${eventId} ${eventType} ${timestamp} ${source} ${priority}",
			want: "m-1 order.created 2025-09-06T10:30:00Z order-service LOW"},
		{name: "lone_string", tmpl: "${payload.id}", want: "o-1"},
		{name: "lone_number_keeps_type", tmpl: "${payload.amount}", want: 1200.0},
		{name: "lone_bool_keeps_type", tmpl: "${payload.paid}", want: true},
		{name: "lone_object_keeps_type", tmpl: "${payload.customer}", want: map[string]any{"name": "Ann", "tags": []any{"vip", "new"}}},
		{name: "lone_array_keeps_type", tmpl: "${payload.customer.tags}", want: []any{"vip", "new"}},
		{name: "lone_empty_string_is_present", tmpl: "${payload.zero:-dflt}", want: ""},
		{name: "array_index", tmpl: "${payload.items.0.sku}", want: "s-1"},
		{name: "metadata", tmpl: "${metadata.traceId}", want: "tr-1"},
		{name: "integral_number_without_exponent", tmpl: "n=${payload.big}", want: "n=1000000"},
		{name: "fraction_in_string", tmpl: "n=${payload.frac}", want: "n=999.99"},
		{name: "negative_in_string", tmpl: "n=${payload.n}", want: "n=-3"},
		{name: "bool_in_string", tmpl: "paid=${payload.paid}", want: "paid=true"},
		{name: "object_in_string_as_json", tmpl: "c=${payload.customer}", want: `c={"name":"Ann","tags":["vip","new"]}`},
		{name: "default_when_missing", tmpl: "${payload.coupon:-none}", want: "none"},
		{name: "default_when_null", tmpl: "${payload.null:-none}", want: "none"},
		{name: "empty_default", tmpl: "[${payload.coupon:-}]", want: "[]"},
		{name: "default_through_non_object", tmpl: "${payload.id.x:-d}", want: "d"},
		{name: "default_index_out_of_range", tmpl: "${payload.items.5:-d}", want: "d"},
		{name: "nested_map_and_list", tmpl: map[string]any{"a": []any{"${payload.id}", map[string]any{"b": "${payload.amount}"}}},
			want: map[string]any{"a": []any{"o-1", map[string]any{"b": 1200.0}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := compile(t, rules.Rule{RuleID: "r", EventType: "order.created", TaskType: "log",
				Parameters: map[string]any{"v": tt.tmpl}})
			tasks, err := s.Match(ev)
			require.NoError(t, err)
			require.Len(t, tasks, 1)
			assert.Equal(t, tt.want, tasks[0].Parameters["v"])
		})
	}
}

func TestSet_tasks_do_not_share_parameter_maps(t *testing.T) {
	t.Parallel()
	s := compile(t, rules.Rule{RuleID: "r", EventType: "x", TaskType: "log",
		Parameters: map[string]any{"nested": map[string]any{"k": "v"}}})
	a, err := s.Match(&event.Event{MessageID: "1", EventType: "x"})
	require.NoError(t, err)
	a[0].Parameters["nested"].(map[string]any)["k"] = "changed"
	b, err := s.Match(&event.Event{MessageID: "2", EventType: "x"})
	require.NoError(t, err)
	assert.Equal(t, "v", b[0].Parameters["nested"].(map[string]any)["k"])
}

func TestSet_missing_value_is_permanent_error_naming_rule_path_and_placeholder(t *testing.T) {
	t.Parallel()
	s := compile(t,
		rules.Rule{RuleID: "needs-coupon", EventType: "order.created", TaskType: "log",
			Parameters: map[string]any{"body": map[string]any{"coupon": "${payload.coupon}"}}},
		rules.Rule{RuleID: "fine", EventType: "order.created", TaskType: "log"},
	)
	tasks, err := s.Match(designEvent(5))
	require.Error(t, err)
	assert.True(t, permanent.Is(err))
	assert.Contains(t, err.Error(), `rule "needs-coupon": parameters.body.coupon: ${payload.coupon}: missing value`)
	require.Len(t, tasks, 1, "other rules still make their tasks")
	assert.Equal(t, "fine", tasks[0].RuleID)

	rep := s.Explain(designEvent(5))
	require.Len(t, rep.Explanations, 2)
	assert.Contains(t, rep.Explanations[0].Error, "missing value")
	require.NotNil(t, rep.Explanations[0].ConditionResult)
	assert.True(t, *rep.Explanations[0].ConditionResult)
	assert.Nil(t, rep.Explanations[0].Task)
}

func TestSet_render_errors(t *testing.T) {
	t.Parallel()
	ev := &event.Event{MessageID: "m", EventType: "x", Payload: map[string]any{
		"flag": "-rf", "neg": -1.0, "obj": map[string]any{"a": 1.0}, "dots": "..", "slash": "a/b?c",
		"t": "abc", "tnum": 45.0, "tstr": "60", "name": "",
	}}
	tests := []struct {
		name    string
		rule    rules.Rule
		wantErr string
		check   func(t *testing.T, tk task.Task)
	}{
		{name: "shell_arg_value_becoming_flag", rule: rules.Rule{TaskType: "shell",
			Parameters: map[string]any{"command": "/bin/echo", "args": []any{"${payload.flag}"}}},
			wantErr: `parameters.args[0]: value "-rf" starts with '-' and would become a flag`},
		{name: "shell_arg_negative_number_becoming_flag", rule: rules.Rule{TaskType: "shell",
			Parameters: map[string]any{"command": "/bin/echo", "args": []any{"${payload.neg}"}}},
			wantErr: `parameters.args[0]: value "-1" starts with '-'`},
		{name: "shell_arg_flag_after_empty_value", rule: rules.Rule{TaskType: "shell",
			Parameters: map[string]any{"command": "/bin/echo", "args": []any{"${payload.name}${payload.flag}"}}},
			wantErr: `parameters.args[0]: value "-rf" starts with '-'`},
		{name: "shell_arg_object", rule: rules.Rule{TaskType: "shell",
			Parameters: map[string]any{"command": "/bin/echo", "args": []any{"${payload.obj}"}}},
			wantErr: "parameters.args[0]: ${payload.obj}: an argument must be a string, number or bool, got an object"},
		{name: "shell_arg_value_inside_author_flag", rule: rules.Rule{TaskType: "shell",
			Parameters: map[string]any{"command": "/bin/echo", "args": []any{"--name=${payload.flag}", "x${payload.flag}"}}},
			check: func(t *testing.T, tk task.Task) {
				assert.Equal(t, []any{"--name=-rf", "x-rf"}, tk.Parameters["args"])
			}},
		{name: "http_url_values_escaped", rule: rules.Rule{TaskType: "http",
			Parameters: map[string]any{"url": "https://h.example/o/${payload.slash}?q=${payload.slash}&f=${payload.flag}"}},
			check: func(t *testing.T, tk task.Task) {
				assert.Equal(t, "https://h.example/o/a%2Fb%3Fc?q=a%2Fb%3Fc&f=-rf", tk.Parameters["url"])
			}},
		{name: "http_url_dot_dot_segment", rule: rules.Rule{TaskType: "http",
			Parameters: map[string]any{"url": "https://h.example/o/${payload.dots}"}},
			wantErr: `parameters.url: ${payload.dots}: value ".." would change the url path`},
		{name: "timeout_template_not_a_number", rule: rules.Rule{TaskType: "log",
			Parameters: map[string]any{"timeout": "${payload.t}"}},
			wantErr: `parameters.timeout: must be a positive whole number of seconds, got "abc"`},
		{name: "timeout_template_number", rule: rules.Rule{TaskType: "log",
			Parameters: map[string]any{"timeout": "${payload.tnum}"}},
			check: func(t *testing.T, tk task.Task) { assert.Equal(t, 45, tk.Timeout) }},
		{name: "timeout_template_numeric_string", rule: rules.Rule{TaskType: "log",
			Parameters: map[string]any{"timeout": "${payload.tstr}"}},
			check: func(t *testing.T, tk task.Task) { assert.Equal(t, 60, tk.Timeout) }},
		{name: "task_name_missing_value", rule: rules.Rule{TaskType: "log", TaskName: "n-${payload.nope}"},
			wantErr: `taskName: ${payload.nope}: missing value`},
		{name: "task_name_empty", rule: rules.Rule{TaskType: "log", TaskName: "${payload.name}"},
			wantErr: "taskName: renders to an empty string"},
		{name: "partition_key_missing_value", rule: rules.Rule{TaskType: "log", PartitionKey: "${payload.nope}"},
			wantErr: "partitionKey: ${payload.nope}: missing value"},
		{name: "partition_key_template", rule: rules.Rule{TaskType: "log", PartitionKey: "k-${payload.tstr}"},
			check: func(t *testing.T, tk task.Task) { assert.Equal(t, "k-60", tk.PartitionKey) }},
		{name: "task_name_default_is_rule_id", rule: rules.Rule{TaskType: "log"},
			check: func(t *testing.T, tk task.Task) { assert.Equal(t, "r", tk.TaskName) }},
		{name: "task_name_number_formatted", rule: rules.Rule{TaskType: "log", TaskName: "${payload.tnum}"},
			check: func(t *testing.T, tk task.Task) { assert.Equal(t, "45", tk.TaskName) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tt.rule.RuleID, tt.rule.EventType = "r", "x"
			s := compile(t, tt.rule)
			tasks, err := s.Match(ev)
			if tt.wantErr != "" {
				require.Error(t, err)
				assert.True(t, permanent.Is(err))
				assert.Contains(t, err.Error(), `rule "r": `+tt.wantErr)
				assert.Empty(t, tasks)
				return
			}
			require.NoError(t, err)
			require.Len(t, tasks, 1)
			tt.check(t, tasks[0])
		})
	}
}

func TestSet_condition_runtime_error_is_permanent_and_names_rule(t *testing.T) {
	t.Parallel()
	s := compile(t,
		rules.Rule{RuleID: "compare", EventType: "order.created", TaskType: "log", Condition: "payload.amount > 1000"},
		rules.Rule{RuleID: "ok", EventType: "order.created", TaskType: "log"},
	)
	ev := designEvent(0)
	ev.Payload["amount"] = "a lot"
	tasks, err := s.Match(ev)
	require.Error(t, err)
	assert.True(t, permanent.Is(err))
	assert.Contains(t, err.Error(), `rule "compare": condition: evaluation failed at 1:`)
	require.Len(t, tasks, 1)
	assert.Equal(t, "ok", tasks[0].RuleID)

	rep := s.Explain(ev)
	assert.Nil(t, rep.Explanations[0].ConditionResult)
	assert.Contains(t, rep.Explanations[0].Error, "evaluation failed")
}

func TestSet_conditions_see_every_env_field(t *testing.T) {
	t.Parallel()
	conds := []string{
		`payload.amount > 1000 && payload.currency == "CNY"`,
		`metadata.version == "1.0"`,
		`eventType == "order.created"`,
		`source == "order-service"`,
		`messageId startsWith "msg-"`,
		`timestamp == "2025-09-06T10:30:00Z"`,
		`timestamp > "2025-01-01"`,
		`priority == "HIGH"`,
		`payload.coupon == nil`,
		`(payload.discount ?? 0) == 0`,
		`"order-12345" in map([payload], .orderId)`,
	}
	for _, c := range conds {
		t.Run(c, func(t *testing.T) {
			t.Parallel()
			s := compile(t, rules.Rule{RuleID: "r", EventType: "order.created", TaskType: "log", Condition: c})
			tasks, err := s.Match(designEvent(1200))
			require.NoError(t, err)
			assert.Len(t, tasks, 1)
		})
	}
}

func TestSet_priority(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		rule     string
		event    event.Priority
		expected string
	}{
		{name: "rule_priority_wins", rule: "HIGH", event: event.PriorityLow, expected: "HIGH"},
		{name: "rule_priority_any_case", rule: "low", event: event.PriorityHigh, expected: "LOW"},
		{name: "empty_takes_event_priority", rule: "", event: event.PriorityHigh, expected: "HIGH"},
		{name: "empty_everywhere_is_medium", rule: "", event: "", expected: "MEDIUM"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := compile(t, rules.Rule{RuleID: "r", EventType: "x", TaskType: "log", Priority: tt.rule})
			tasks, err := s.Match(&event.Event{MessageID: "m", EventType: "x", Priority: tt.event})
			require.NoError(t, err)
			require.Len(t, tasks, 1)
			assert.Equal(t, tt.expected, tasks[0].Priority)
		})
	}
}

func TestSet_task_ids_are_deterministic(t *testing.T) {
	t.Parallel()
	s := compile(t, seedRules(t)...)
	a, err := s.Match(designEvent(2000))
	require.NoError(t, err)
	b, err := s.Match(designEvent(2000))
	require.NoError(t, err)
	require.Len(t, a, 1)
	require.Len(t, b, 1)
	assert.Equal(t, a[0].TaskID, b[0].TaskID)
	assert.Equal(t, task.ID("msg-20250906-123456", "order-created-trigger"), a[0].TaskID)
}

func TestSet_odd_input_does_not_panic(t *testing.T) {
	t.Parallel()
	s := compile(t,
		rules.Rule{RuleID: "cond", EventType: "#", TaskType: "log", Condition: "payload.a.b.c == 1"},
		rules.Rule{RuleID: "tmpl", EventType: "#", TaskType: "log",
			Parameters: map[string]any{"v": "${payload.a.b:-d}", "w": "${metadata.x.y:-d}", "s": "${source:-none}"}},
		rules.Rule{RuleID: "any", EventType: "#", TaskType: "log", Condition: "len(payload) >= 0"},
	)
	events := []*event.Event{
		{},
		{EventType: "x"},
		{EventType: "x", Payload: map[string]any{"a": "str"}},
		{EventType: "x", Payload: map[string]any{"a": []any{1.0}}},
		{EventType: "x", Payload: map[string]any{"a": map[string]any{"b": nil}}},
		{EventType: "x", Payload: map[string]any{"a": map[string]any{"b": map[string]any{"c": 1.0}}}},
		{EventType: "....", Metadata: map[string]any{"x": 3.0}},
	}
	for i, ev := range events {
		assert.NotPanics(t, func() {
			_, _ = s.Match(ev)
			rep := s.Explain(ev)
			assert.Len(t, rep.Explanations, 3, "event %d", i)
		})
	}
	_, err := s.Match(nil)
	assert.True(t, permanent.Is(err))
	assert.NotPanics(t, func() { s.Explain(nil) })

	var nilSet *rules.Set
	tasks, err := nilSet.Match(designEvent(1))
	assert.NoError(t, err)
	assert.Empty(t, tasks)
	assert.Empty(t, nilSet.Explain(designEvent(1)).Explanations)
	assert.Nil(t, nilSet.Rules())
}

func TestSet_rules_are_a_copy(t *testing.T) {
	t.Parallel()
	in := []rules.Rule{{RuleID: "r", EventType: "x", TaskType: "log", Parameters: map[string]any{"m": "a"}}}
	s := compile(t, in...)
	in[0].Parameters["m"] = "changed by caller"
	out := s.Rules()
	assert.Equal(t, "a", out[0].Parameters["m"])
	out[0].Parameters["m"] = "changed by reader"
	assert.Equal(t, "a", s.Rules()[0].Parameters["m"])
}

func TestReport_json_shape(t *testing.T) {
	t.Parallel()
	s := compile(t, seedRules(t)...)
	b, err := json.Marshal(s.Explain(designEvent(999.99)))
	require.NoError(t, err)
	var m map[string]any
	require.NoError(t, json.Unmarshal(b, &m))
	assert.Equal(t, []any{}, m["tasks"])
	xs := m["explanations"].([]any)
	require.Len(t, xs, 2)
	assert.Equal(t, map[string]any{"ruleId": "order-created-trigger", "enabled": true, "typeMatched": true,
		"conditionResult": false}, xs[0])
	assert.Equal(t, map[string]any{"ruleId": "payment-completed-trigger", "enabled": true, "typeMatched": false,
		"conditionResult": nil}, xs[1])
}

func TestEngine_swaps_rule_sets(t *testing.T) {
	t.Parallel()
	e := rules.NewEngine(nil)
	require.NotNil(t, e.Set())
	tasks, err := e.Match(designEvent(2000))
	require.NoError(t, err)
	assert.Empty(t, tasks, "an engine without rules makes nothing")

	s := compile(t, seedRules(t)...)
	e.Swap(s)
	assert.Same(t, s, e.Set())
	tasks, err = e.Match(designEvent(2000))
	require.NoError(t, err)
	assert.Len(t, tasks, 1)

	e.Swap(nil)
	tasks, err = e.Match(designEvent(2000))
	require.NoError(t, err)
	assert.Empty(t, tasks)
}

func TestEngine_match_is_safe_during_swaps(t *testing.T) {
	t.Parallel()
	a := compile(t, seedRules(t)...)
	b := compile(t, rules.Rule{RuleID: "x", EventType: "order.#", TaskType: "log"})
	e := rules.NewEngine(a)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 1000 {
			if i%2 == 0 {
				e.Swap(b)
			} else {
				e.Swap(a)
			}
		}
	}()
	for range 1000 {
		tasks, err := e.Match(&event.Event{MessageID: "m", EventType: "order.new.kind"})
		require.NoError(t, err)
		assert.LessOrEqual(t, len(tasks), 1)
	}
	<-done
}

func TestFieldError_format(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		err  *rules.FieldError
		want string
	}{
		{name: "full", err: &rules.FieldError{File: "rules.yaml", Line: 12, RuleID: "order-created-trigger", Reason: `unknown key "conditon"`},
			want: `rules.yaml:12: rule "order-created-trigger": unknown key "conditon"`},
		{name: "field", err: &rules.FieldError{RuleID: "r", Field: "condition", Reason: "bad"}, want: `rule "r": condition: bad`},
		{name: "position", err: &rules.FieldError{RuleID: "#2", Field: "ruleId", Reason: "required"}, want: `rule #2: ruleId: required`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			assert.Equal(t, tt.want, tt.err.Error())
			assert.False(t, errors.Is(tt.err, os.ErrNotExist))
		})
	}
}

func TestCompile_rejects_nested_predicates(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		cond    string
		wantErr bool
	}{
		{name: "one_predicate_is_fine", cond: `any(payload.items, {.sku == "x"})`},
		{name: "two_sibling_predicates_are_fine", cond: `any(payload.a, {# > 1}) && all(payload.b, {# < 5})`},
		{name: "nested_in_all", cond: `all(payload.a, {all(payload.a, {true})})`, wantErr: true},
		{name: "nested_in_filter_count", cond: `count(filter(payload.a, {any(payload.a, {# == 1})}), {true}) > 0`, wantErr: true},
		// expr's optimizer folds map(filter(...)) into one filter whose map
		// body ast.Walk does not visit; the check sees the condition as written.
		{name: "nested_in_map_of_filter", cond: `map(filter(payload.a, true), any(payload.a, true)) != []`, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := rules.Compile([]rules.Rule{{RuleID: "r", EventType: "x", TaskType: "log", Condition: tt.cond}})
			if !tt.wantErr {
				assert.NoError(t, err)
				return
			}
			require.Error(t, err)
			assert.Contains(t, err.Error(), `rule "r"`)
			assert.Contains(t, err.Error(), "inside another is not allowed")
		})
	}
}
