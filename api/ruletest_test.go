package api_test

import (
	"encoding/json"
	"net/http"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/eventpipe/eventpipe/api"
	"github.com/eventpipe/eventpipe/rules"
)

const (
	highValueRule = `{"ruleId":"high-value","eventType":"order.created","condition":"payload.amount > 1000",
		"taskName":"process-${payload.orderId}","taskType":"log","parameters":{"order":"${payload.orderId}"}}`
	paidRule   = `{"ruleId":"paid","eventType":"order.paid","taskType":"log"}`
	orderEvent = `{"messageId":"msg-1","eventType":"order.created","payload":{"orderId":"o-1","amount":1500}}`
	smallOrder = `{"messageId":"msg-2","eventType":"order.created","payload":{"orderId":"o-2","amount":5}}`
)

// testReport mirrors rules.Report as JSON, to check the wire shape.
type testReport struct {
	Tasks []struct {
		TaskID     string         `json:"taskId"`
		TaskName   string         `json:"taskName"`
		RuleID     string         `json:"ruleId"`
		EventID    string         `json:"eventId"`
		Parameters map[string]any `json:"parameters"`
	} `json:"tasks"`
	Explanations []struct {
		RuleID          string `json:"ruleId"`
		Enabled         bool   `json:"enabled"`
		TypeMatched     bool   `json:"typeMatched"`
		ConditionResult *bool  `json:"conditionResult"`
	} `json:"explanations"`
}

func TestRulesTest_reports_tasks_and_explanations(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name           string
		body           string
		wantTaskNames  []string
		wantExplained  []string
		wantTypeMatch  []bool
		wantConditions []*bool
	}{
		{name: "single_matching_rule",
			body:          `{"rule":` + highValueRule + `,"eventMessage":` + orderEvent + `}`,
			wantTaskNames: []string{"process-o-1"}, wantExplained: []string{"high-value"},
			wantTypeMatch: []bool{true}, wantConditions: []*bool{ptr(true)}},
		{name: "condition_false_makes_no_task",
			body:          `{"rule":` + highValueRule + `,"eventMessage":` + smallOrder + `}`,
			wantTaskNames: []string{}, wantExplained: []string{"high-value"},
			wantTypeMatch: []bool{true}, wantConditions: []*bool{ptr(false)}},
		{name: "rules_array_explains_each_rule",
			body:          `{"rules":[` + highValueRule + `,` + paidRule + `],"eventMessage":` + orderEvent + `}`,
			wantTaskNames: []string{"process-o-1"}, wantExplained: []string{"high-value", "paid"},
			wantTypeMatch: []bool{true, false}, wantConditions: []*bool{ptr(true), nil}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			pub := &fakePublisher{}
			s := newServer(t, api.Config{}, api.Deps{Events: pub})

			res := do(t, s.Handler(), http.MethodPost, "/api/v1/task-trigger-rules/test", tt.body, jsonHeader)

			require.Equal(t, http.StatusOK, res.status, "body: %s", res.body)
			var raw map[string]json.RawMessage
			require.NoError(t, json.Unmarshal(res.body, &raw))
			assert.NotEqual(t, "null", string(raw["tasks"]), "tasks is a list even when empty")
			var got testReport
			require.NoError(t, json.Unmarshal(res.body, &got))
			names := []string{}
			for _, tk := range got.Tasks {
				names = append(names, tk.TaskName)
				assert.Equal(t, "msg-1", tk.EventID)
				assert.NotEmpty(t, tk.TaskID)
			}
			assert.Equal(t, tt.wantTaskNames, names)
			require.Len(t, got.Explanations, len(tt.wantExplained))
			for i, ex := range got.Explanations {
				assert.Equal(t, tt.wantExplained[i], ex.RuleID)
				assert.True(t, ex.Enabled)
				assert.Equal(t, tt.wantTypeMatch[i], ex.TypeMatched, "rule %s", ex.RuleID)
				assert.Equal(t, tt.wantConditions[i], ex.ConditionResult, "rule %s", ex.RuleID)
			}
			assert.Empty(t, pub.published(), "testing rules publishes nothing")
		})
	}
}

func TestRulesTest_rejects_invalid_input_naming_rule_and_field(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		body        string
		opts        []rules.Option
		wantError   string
		wantDetails []map[string]string // each key must match; "error" is checked with Contains
	}{
		{name: "condition_syntax_error_has_position",
			body:      `{"rule":{"ruleId":"r1","eventType":"a.b","taskType":"log","condition":"payload.amount >"},"eventMessage":` + orderEvent + `}`,
			wantError: "invalid rules",
			wantDetails: []map[string]string{
				{"ruleId": "r1", "field": "condition", "error": "1:16"},
			}},
		{name: "every_rule_problem_is_listed",
			body:      `{"rules":[` + highValueRule + `,{"taskType":"log"}],"eventMessage":` + orderEvent + `}`,
			wantError: "invalid rules",
			wantDetails: []map[string]string{
				{"ruleId": "#2", "field": "ruleId", "error": "required"},
				{"ruleId": "#2", "field": "eventType", "error": "required"},
			}},
		{name: "unknown_task_type_with_task_types_option",
			body:      `{"rule":{"ruleId":"r1","eventType":"a.b","taskType":"shell"},"eventMessage":` + orderEvent + `}`,
			opts:      []rules.Option{rules.WithTaskTypes("log", "http")},
			wantError: "invalid rules",
			wantDetails: []map[string]string{
				{"ruleId": "r1", "field": "taskType", "error": `"shell"`},
			}},
		{name: "misspelt_rule_key",
			body:      `{"rule":{"ruleId":"r1","eventType":"a.b","taskType":"log","conditon":"true"},"eventMessage":` + orderEvent + `}`,
			wantError: "invalid rules",
			wantDetails: []map[string]string{
				{"ruleId": "#1", "error": `unknown field "conditon"`},
			}},
		{name: "rule_value_of_wrong_type_names_field",
			body:      `{"rule":{"ruleId":"r1","eventType":"a.b","taskType":"log","enabled":"yes"},"eventMessage":` + orderEvent + `}`,
			wantError: "invalid rules",
			wantDetails: []map[string]string{
				{"ruleId": "#1", "field": "enabled", "error": "must be a boolean, got string"},
			}},
		{name: "rule_not_an_object",
			body:        `{"rules":["r1"],"eventMessage":` + orderEvent + `}`,
			wantError:   "invalid rules",
			wantDetails: []map[string]string{{"ruleId": "#1", "error": "must be a JSON object"}}},
		{name: "invalid_event_names_field",
			body:      `{"rule":` + highValueRule + `,"eventMessage":{"payload":[]}}`,
			wantError: "invalid eventMessage",
			wantDetails: []map[string]string{
				{"field": "eventMessage.eventType", "error": "eventType"},
				{"field": "eventMessage.payload", "error": "JSON object"},
			}},
		{name: "rule_and_event_problems_together",
			body:      `{"rule":{"ruleId":"r1","taskType":"log"},"eventMessage":{}}`,
			wantError: "invalid rules and eventMessage",
			wantDetails: []map[string]string{
				{"ruleId": "r1", "field": "eventType", "error": "required"},
				{"field": "eventMessage.eventType", "error": "eventType"},
			}},
		{name: "missing_event",
			body:        `{"rule":` + highValueRule + `}`,
			wantError:   "invalid eventMessage",
			wantDetails: []map[string]string{{"field": "eventMessage", "error": "required"}}},
		{name: "missing_rule", body: `{"eventMessage":` + orderEvent + `}`, wantError: `"rule" or a non-empty "rules" is required`},
		{name: "empty_rules", body: `{"rules":[],"eventMessage":` + orderEvent + `}`, wantError: `"rule" or a non-empty "rules" is required`},
		{name: "rule_and_rules", body: `{"rule":` + paidRule + `,"rules":[` + paidRule + `],"eventMessage":` + orderEvent + `}`,
			wantError: `either "rule" or "rules"`},
		{name: "unknown_top_level_key", body: `{"rule":` + paidRule + `,"event":` + orderEvent + `}`,
			wantError: `unknown field "event"`},
		{name: "body_not_an_object", body: `[1]`, wantError: "must be a JSON object"},
		{name: "trailing_data", body: `{"rule":` + paidRule + `,"eventMessage":` + orderEvent + `} {}`,
			wantError: "unexpected data"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := newServer(t, api.Config{}, api.Deps{RuleOptions: tt.opts})

			res := do(t, s.Handler(), http.MethodPost, "/api/v1/task-trigger-rules/test", tt.body, jsonHeader)

			require.Equal(t, http.StatusBadRequest, res.status, "body: %s", res.body)
			assert.Contains(t, res.errorBody(t).Error, tt.wantError)
			var got struct {
				Details []map[string]string `json:"details"`
			}
			require.NoError(t, json.Unmarshal(res.body, &got))
			require.Len(t, got.Details, len(tt.wantDetails), "body: %s", res.body)
			for i, want := range tt.wantDetails {
				for k, v := range want {
					if k == "error" {
						assert.Contains(t, got.Details[i][k], v, "detail %d", i)
						continue
					}
					assert.Equal(t, v, got.Details[i][k], "detail %d key %s", i, k)
				}
			}
		})
	}
}

func TestRulesTest_requires_token_when_configured(t *testing.T) {
	t.Parallel()
	s := newServer(t, api.Config{Token: testToken}, api.Deps{})
	body := `{"rule":` + highValueRule + `,"eventMessage":` + orderEvent + `}`

	without := do(t, s.Handler(), http.MethodPost, "/api/v1/task-trigger-rules/test", body, jsonHeader)
	with := do(t, s.Handler(), http.MethodPost, "/api/v1/task-trigger-rules/test", body,
		map[string]string{"Content-Type": "application/json", "Authorization": "Bearer " + testToken})

	assert.Equal(t, http.StatusUnauthorized, without.status)
	assert.Equal(t, http.StatusOK, with.status, "body: %s", with.body)
}

func ptr[T any](v T) *T { return &v }
