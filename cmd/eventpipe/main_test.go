package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/eventpipe/eventpipe/rules"
)

// eventpipe runs the CLI in-process from the repository root.
func eventpipe(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = run(t.Context(), args, strings.NewReader(""), &out, &errOut)
	return code, out.String(), errOut.String()
}

func repoFile(name string) string { return filepath.Join("..", "..", name) }

func TestRulesValidate_lists_every_problem_with_rule_ids_and_exits_1(t *testing.T) {
	t.Parallel()
	code, _, stderr := eventpipe(t, "rules", "validate", repoFile("examples/rules-invalid.yaml"))
	assert.Equal(t, 1, code)
	for _, want := range []string{
		`rule "misspelled-key": unknown key "conditon"`,
		`rule "non-boolean-condition"`, "boolean",
		`rule "syntax-error"`, "1:30",
	} {
		assert.Contains(t, stderr, want)
	}
}

func TestRulesValidate_accepts_the_example_rules(t *testing.T) {
	t.Parallel()
	code, stdout, stderr := eventpipe(t, "rules", "validate", repoFile("examples/rules.yaml"))
	assert.Equal(t, 0, code, stderr)
	assert.Contains(t, stdout, "rules OK")
}

func TestRulesTest_seed_scenarios(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	sample, err := os.ReadFile(repoFile("examples/events/order-created.json"))
	require.NoError(t, err)
	require.Contains(t, string(sample), "999.99")
	high := filepath.Join(dir, "order-1200.json")
	require.NoError(t, os.WriteFile(high, bytes.Replace(sample, []byte("999.99"), []byte("1200"), 1), 0o600))

	tests := []struct {
		name      string
		event     string
		wantTask  string // "" = the seed rule makes no task
		wantRule  string
		condition *bool
	}{
		{name: "amount_999_makes_no_task", event: repoFile("examples/events/order-created.json"),
			wantRule: "order-created-trigger", condition: ptr(false)},
		{name: "amount_1200_makes_high_value_task", event: high,
			wantTask: "high-value-order-processing", wantRule: "order-created-trigger", condition: ptr(true)},
		{name: "payment_success_makes_inventory_update", event: repoFile("examples/events/payment-completed.json"),
			wantTask: "inventory-update", wantRule: "payment-completed-trigger", condition: ptr(true)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			code, stdout, stderr := eventpipe(t, "rules", "test", "--rules", repoFile("examples/rules.yaml"), "--event", tt.event, "--json")
			require.Equal(t, 0, code, stderr)
			var report rules.Report
			require.NoError(t, json.Unmarshal([]byte(stdout), &report))
			var expl *rules.Explanation
			for i := range report.Explanations {
				if report.Explanations[i].RuleID == tt.wantRule {
					expl = &report.Explanations[i]
				}
			}
			require.NotNil(t, expl, "explanation of %s", tt.wantRule)
			assert.True(t, expl.TypeMatched)
			require.NotNil(t, expl.ConditionResult)
			assert.Equal(t, *tt.condition, *expl.ConditionResult)
			var names []string
			for _, tk := range report.Tasks {
				if tk.RuleID == tt.wantRule {
					names = append(names, tk.TaskName)
				}
			}
			if tt.wantTask == "" {
				assert.Empty(t, names)
				return
			}
			assert.Equal(t, []string{tt.wantTask}, names)
		})
	}
}

func TestRulesTest_text_output_names_the_false_condition(t *testing.T) {
	t.Parallel()
	code, stdout, _ := eventpipe(t, "rules", "test", "--rules", repoFile("examples/rules.yaml"),
		"--event", repoFile("examples/events/order-created.json"))
	require.Equal(t, 0, code)
	line := lineWith(stdout, "order-created-trigger")
	assert.Contains(t, line, "`payload.amount > 1000` is false")
}

func TestRulesTest_high_value_parameters_are_rendered(t *testing.T) {
	t.Parallel()
	code, stdout, _ := eventpipe(t, "rules", "test", "--rules", repoFile("examples/rules.yaml"),
		"--event", repoFile("examples/events/order-created-high.json"), "--json")
	require.Equal(t, 0, code)
	var report rules.Report
	require.NoError(t, json.Unmarshal([]byte(stdout), &report))
	for _, tk := range report.Tasks {
		if tk.TaskName == "high-value-order-processing" {
			assert.Equal(t, "/scripts/process-high-value-order.sh", tk.Parameters["script"])
			assert.Equal(t, 3600, tk.Timeout)
			assert.Equal(t, "HIGH", tk.Priority)
			return
		}
	}
	t.Fatalf("no high-value-order-processing task in %s", stdout)
}

func TestRulesTest_invalid_input_exits_1(t *testing.T) {
	t.Parallel()
	code, _, stderr := eventpipe(t, "rules", "test", "--rules", repoFile("examples/rules.yaml"),
		"--event", repoFile("examples/events/invalid-missing-type.json"))
	assert.Equal(t, 1, code)
	assert.Contains(t, stderr, `"eventType"`)
}

func TestUsage_errors_exit_2(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		args []string
	}{
		{name: "no_args", args: nil},
		{name: "unknown_command", args: []string{"frobnicate"}},
		{name: "rules_without_subcommand", args: []string{"rules"}},
		{name: "validate_without_files", args: []string{"rules", "validate"}},
		{name: "test_without_event", args: []string{"rules", "test", "--rules", "x.yaml"}},
		{name: "unknown_flag", args: []string{"rules", "test", "--nope"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			code, _, _ := eventpipe(t, tt.args...)
			assert.Equal(t, 2, code)
		})
	}
}

func TestVersion(t *testing.T) {
	t.Parallel()
	code, stdout, _ := eventpipe(t, "version")
	assert.Equal(t, 0, code)
	assert.True(t, strings.HasPrefix(stdout, "eventpipe "))
}

func ptr[T any](v T) *T { return &v }

func lineWith(s, sub string) string {
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			return l
		}
	}
	return ""
}

func TestSplitInput(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		in        string
		wantWhere []string
		wantErr   bool
	}{
		{name: "one_pretty_event", in: "{\n  \"eventType\": \"a\"\n}\n", wantWhere: []string{"event"}},
		{name: "array", in: `[{"eventType":"a"},{"eventType":"b"}]`, wantWhere: []string{"element 0", "element 1"}},
		{name: "json_lines_with_blank_and_broken_line", in: "{\"eventType\":\"a\"}\n\n{broken\n{\"eventType\":\"c\"}\n",
			wantWhere: []string{"line 1", "line 3", "line 4"}},
		{name: "empty", in: " \n", wantErr: true},
		{name: "array_of_non_objects", in: `[1,2]`, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := splitInput([]byte(tt.in))
			if tt.wantErr {
				assert.Error(t, err)
				return
			}
			require.NoError(t, err)
			var where []string
			for _, s := range got {
				where = append(where, s.where)
			}
			assert.Equal(t, tt.wantWhere, where)
		})
	}
}

func TestRulesValidate_refuses_unknown_task_types_unless_named(t *testing.T) {
	t.Parallel()
	file := repoFile("examples/custom-executor/rules.yaml") // taskType "email", registered in Go code
	code, _, stderr := eventpipe(t, "rules", "validate", file)
	assert.Equal(t, 1, code)
	assert.Contains(t, stderr, `unknown executor "email"`)

	code, stdout, stderr := eventpipe(t, "rules", "validate", "--task-types", "email,sms", file)
	assert.Equal(t, 0, code, stderr)
	assert.Contains(t, stdout, "1 rules OK")
}
