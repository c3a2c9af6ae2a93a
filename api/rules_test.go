package api_test

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/eventpipe/eventpipe/api"
	"github.com/eventpipe/eventpipe/event"
	"github.com/eventpipe/eventpipe/rules"
	"github.com/eventpipe/eventpipe/rulestore"
)

const (
	rulesPath    = "/api/v1/task-trigger-rules"
	seedRuleFile = `taskTriggerRules:
  - ruleId: "high-value"
    eventType: "order.created"
    condition: "payload.amount > 1000"
    taskType: "log"
  - ruleId: "paid"
    eventType: "order.paid"
    taskType: "log"
`
	vipRule = `{"ruleId":"vip","eventType":"order.created","condition":"payload.amount > 100",
		"taskName":"vip-${payload.orderId}","taskType":"log","parameters":{"order":"${payload.orderId}","timeout":30}}`
)

// syncBuffer is a goroutine-safe log sink.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// rulesFixture is a server with a file-backed rule store.
type rulesFixture struct {
	path    string
	store   *rulestore.Store
	handler http.Handler
	logs    *syncBuffer
}

var taskTypes = []rules.Option{rules.WithTaskTypes("log", "http")}

func newRulesFixture(t *testing.T, cfg api.Config) *rulesFixture {
	t.Helper()
	f := &rulesFixture{path: filepath.Join(t.TempDir(), "rules.yaml"), logs: &syncBuffer{}}
	require.NoError(t, os.WriteFile(f.path, []byte(seedRuleFile), 0o600))
	log := slog.New(slog.NewTextHandler(f.logs, nil))
	var err error
	f.store, err = rulestore.Open(rulestore.Config{Path: f.path, Options: taskTypes, Logger: log})
	require.NoError(t, err)
	f.handler = newServer(t, cfg, api.Deps{Rules: f.store, RuleOptions: taskTypes, Logger: log}).Handler()
	return f
}

// restarted opens a new store on the rules file, as a restart would.
func (f *rulesFixture) restarted(t *testing.T) *rulestore.Store {
	t.Helper()
	s, err := rulestore.Open(rulestore.Config{Path: f.path, Options: taskTypes})
	require.NoError(t, err)
	return s
}

func decodeRule(t *testing.T, res response) rules.Rule {
	t.Helper()
	var r rules.Rule
	require.NoError(t, json.Unmarshal(res.body, &r), "body: %s", res.body)
	return r
}

func matchedRules(t *testing.T, e *rules.Engine, js string) []string {
	t.Helper()
	ev, err := event.Parse([]byte(js))
	require.NoError(t, err)
	tasks, err := e.Match(ev)
	require.NoError(t, err)
	ids := []string{}
	for _, tk := range tasks {
		ids = append(ids, tk.RuleID)
	}
	return ids
}

func withIfMatch(etag string) map[string]string {
	return map[string]string{"Content-Type": "application/json", "If-Match": etag}
}

// The curl session: each step answers as documented, is in the rules
// file and survives a restart.
func TestRulesAPI_session_create_get_list_update_disable_enable_delete(t *testing.T) {
	t.Parallel()
	f := newRulesFixture(t, api.Config{})
	bigOrder := `{"messageId":"m1","eventType":"order.created","payload":{"orderId":"o1","amount":5000}}`
	vipUpdated := strings.Replace(vipRule, "> 100", "> 200", 1)

	// create
	res := do(t, f.handler, http.MethodPost, rulesPath, vipRule, jsonHeader)
	require.Equal(t, http.StatusCreated, res.status, "body: %s", res.body)
	assert.Equal(t, `"vip-v1"`, res.header.Get("ETag"))
	assert.Equal(t, rulesPath+"/vip", res.header.Get("Location"))
	created := decodeRule(t, res)
	assert.Equal(t, int64(1), created.Version)
	assert.WithinDuration(t, time.Now(), created.UpdatedAt, time.Minute)
	assert.Contains(t, string(res.body), `"updatedAt":"`)
	assert.Contains(t, string(res.body), `"condition":"payload.amount > 100"`, "conditions are not HTML-escaped")
	assertRestart(t, f, "vip", 1, true)
	assert.Equal(t, []string{"high-value", "vip"}, matchedRules(t, f.store.Engine(), bigOrder))

	// get
	res = do(t, f.handler, http.MethodGet, rulesPath+"/vip", "", nil)
	require.Equal(t, http.StatusOK, res.status)
	assert.Equal(t, `"vip-v1"`, res.header.Get("ETag"))
	assert.Equal(t, created, decodeRule(t, res))

	// list, page 0 of size 1
	res = do(t, f.handler, http.MethodGet, rulesPath+"?page=0&size=1", "", nil)
	require.Equal(t, http.StatusOK, res.status)
	var list api.RuleList
	require.NoError(t, json.Unmarshal(res.body, &list))
	assert.Equal(t, 0, list.Page)
	assert.Equal(t, 1, list.Size)
	assert.Equal(t, 3, list.Total)
	require.Len(t, list.Items, 1)
	assert.Equal(t, "high-value", list.Items[0].RuleID)

	// update with the current ETag, then again with the now stale one
	res = do(t, f.handler, http.MethodPut, rulesPath+"/vip", vipUpdated, withIfMatch(`"vip-v1"`))
	require.Equal(t, http.StatusOK, res.status, "body: %s", res.body)
	assert.Equal(t, `"vip-v2"`, res.header.Get("ETag"))
	res = do(t, f.handler, http.MethodPut, rulesPath+"/vip", vipRule, withIfMatch(`"vip-v1"`))
	require.Equal(t, http.StatusPreconditionFailed, res.status, "body: %s", res.body)
	assert.Equal(t, `"vip-v2"`, res.header.Get("ETag"), "the 412 tells the current ETag")
	assert.Contains(t, res.errorBody(t).Error, "changed since it was read")
	assertRestart(t, f, "vip", 2, true)
	r, _ := f.restarted(t).Get("vip")
	assert.Equal(t, "payload.amount > 200", r.Condition, "the stale update was not applied")

	// disable: events stop triggering it
	res = do(t, f.handler, http.MethodPost, rulesPath+"/vip/disable", "", nil)
	require.Equal(t, http.StatusOK, res.status, "body: %s", res.body)
	disabled := decodeRule(t, res)
	assert.False(t, disabled.IsEnabled())
	assert.Equal(t, []string{"high-value"}, matchedRules(t, f.store.Engine(), bigOrder))
	assertRestart(t, f, "vip", 3, false)

	// enable
	res = do(t, f.handler, http.MethodPost, rulesPath+"/vip/enable", "", nil)
	require.Equal(t, http.StatusOK, res.status, "body: %s", res.body)
	assert.Equal(t, []string{"high-value", "vip"}, matchedRules(t, f.store.Engine(), bigOrder))
	assertRestart(t, f, "vip", 4, true)

	// delete, then 404
	res = do(t, f.handler, http.MethodDelete, rulesPath+"/vip", "", nil)
	require.Equal(t, http.StatusNoContent, res.status, "body: %s", res.body)
	assert.Empty(t, res.body)
	res = do(t, f.handler, http.MethodGet, rulesPath+"/vip", "", nil)
	assert.Equal(t, http.StatusNotFound, res.status)
	_, ok := f.restarted(t).Get("vip")
	assert.False(t, ok, "the deletion survives a restart")
	rs, _ := f.restarted(t).List(0, 10)
	assert.Len(t, rs, 2, "every other rule is kept")
}

func assertRestart(t *testing.T, f *rulesFixture, id string, version int64, enabled bool) {
	t.Helper()
	r, ok := f.restarted(t).Get(id)
	require.True(t, ok, "rule %s survives a restart", id)
	assert.Equal(t, version, r.Version, "version after restart")
	assert.Equal(t, enabled, r.IsEnabled(), "enabled after restart")
	live, _ := f.store.Get(id)
	assert.Equal(t, live, r, "a restart reads what the live store holds")
}

func TestRulesAPI_answers_each_error_status(t *testing.T) {
	t.Parallel()
	auth := map[string]string{"Content-Type": "application/json", "Authorization": "Bearer " + testToken}
	tests := []struct {
		name        string
		cfg         api.Config
		method      string
		path        string
		body        string
		header      map[string]string
		wantStatus  int
		wantError   string
		wantDetails []map[string]string // each key must match; "error" is checked with Contains
	}{
		{name: "list_page_not_a_number", method: http.MethodGet, path: rulesPath + "?page=x", wantStatus: 400,
			wantError: "invalid query", wantDetails: []map[string]string{{"field": "page", "value": "x", "error": ">= 0"}}},
		{name: "list_negative_page_and_size_too_big", method: http.MethodGet, path: rulesPath + "?page=-1&size=501", wantStatus: 400,
			wantDetails: []map[string]string{{"field": "page", "value": "-1"}, {"field": "size", "value": "501", "error": "1 to 500"}}},
		{name: "list_size_zero", method: http.MethodGet, path: rulesPath + "?size=0", wantStatus: 400,
			wantDetails: []map[string]string{{"field": "size"}}},
		{name: "get_missing", method: http.MethodGet, path: rulesPath + "/nope", wantStatus: 404, wantError: `rule "nope" not found`},
		{name: "create_condition_syntax_error_has_position", method: http.MethodPost, path: rulesPath,
			body: `{"ruleId":"bad","eventType":"a.b","taskType":"log","condition":"payload.amount >"}`, wantStatus: 400,
			wantError: "invalid rule", wantDetails: []map[string]string{{"ruleId": "bad", "field": "condition", "error": "1:16"}}},
		{name: "create_lists_every_problem", method: http.MethodPost, path: rulesPath,
			body: `{"ruleId":"bad","eventType":"a..b","taskType":"nope","priority":"urgent"}`, wantStatus: 400,
			wantDetails: []map[string]string{
				{"ruleId": "bad", "field": "eventType"}, {"ruleId": "bad", "field": "taskType", "error": `unknown executor "nope"`},
				{"ruleId": "bad", "field": "priority"}}},
		{name: "create_without_id", method: http.MethodPost, path: rulesPath, body: `{"eventType":"a","taskType":"log"}`,
			wantStatus: 400, wantDetails: []map[string]string{{"ruleId": "#1", "field": "ruleId", "error": "required"}}},
		{name: "create_misspelt_key", method: http.MethodPost, path: rulesPath,
			body: `{"ruleId":"r","eventType":"a","taskType":"log","conditon":"true"}`, wantStatus: 400,
			wantDetails: []map[string]string{{"error": `unknown field "conditon"`}}},
		{name: "create_wrong_type_names_field", method: http.MethodPost, path: rulesPath,
			body: `{"ruleId":"r","eventType":"a","taskType":"log","enabled":"yes"}`, wantStatus: 400,
			wantDetails: []map[string]string{{"field": "enabled", "error": "must be a boolean"}}},
		{name: "create_empty_body", method: http.MethodPost, path: rulesPath, wantStatus: 400, wantError: "empty"},
		{name: "create_duplicate_id", method: http.MethodPost, path: rulesPath,
			body: `{"ruleId":"paid","eventType":"a","taskType":"log"}`, wantStatus: 409, wantError: `rule "paid" already exists`},
		{name: "create_oversized", cfg: api.Config{MaxRuleBytes: 64}, method: http.MethodPost, path: rulesPath,
			body: vipRule, wantStatus: 413, wantError: "64 bytes"},
		{name: "create_not_json", method: http.MethodPost, path: rulesPath, body: vipRule,
			header: map[string]string{"Content-Type": "text/yaml"}, wantStatus: 415},
		{name: "update_missing", method: http.MethodPut, path: rulesPath + "/nope",
			body: `{"eventType":"a","taskType":"log"}`, wantStatus: 404},
		{name: "update_changes_id", method: http.MethodPut, path: rulesPath + "/paid",
			body: `{"ruleId":"other","eventType":"a","taskType":"log"}`, wantStatus: 400,
			wantDetails: []map[string]string{{"ruleId": "paid", "field": "ruleId", "error": "cannot change"}}},
		{name: "update_invalid", method: http.MethodPut, path: rulesPath + "/paid",
			body: `{"eventType":"order.paid","taskType":"log","condition":"1 +"}`, wantStatus: 400,
			wantDetails: []map[string]string{{"ruleId": "paid", "field": "condition", "error": "1:"}}},
		{name: "update_stale_if_match", method: http.MethodPut, path: rulesPath + "/paid",
			body: `{"eventType":"order.paid","taskType":"http"}`, header: withIfMatch(`"paid-v0"`), wantStatus: 412},
		{name: "update_stale_version_in_body", method: http.MethodPut, path: rulesPath + "/paid",
			body: `{"eventType":"order.paid","taskType":"http","version":3}`, wantStatus: 412, wantError: "not 3"},
		{name: "delete_missing", method: http.MethodDelete, path: rulesPath + "/nope", wantStatus: 404},
		{name: "delete_stale_if_match", method: http.MethodDelete, path: rulesPath + "/paid",
			header: withIfMatch(`"paid-v9"`), wantStatus: 412},
		{name: "enable_missing", method: http.MethodPost, path: rulesPath + "/nope/enable", wantStatus: 404},
		{name: "disable_stale_if_match", method: http.MethodPost, path: rulesPath + "/paid/disable",
			header: withIfMatch(`"paid-v2"`), wantStatus: 412},
		{name: "create_without_token", cfg: api.Config{Token: testToken}, method: http.MethodPost, path: rulesPath,
			body: vipRule, header: jsonHeader, wantStatus: 401},
		{name: "update_with_wrong_token", cfg: api.Config{Token: testToken}, method: http.MethodPut, path: rulesPath + "/paid",
			body: vipRule, header: map[string]string{"Authorization": "Bearer " + testToken + "x"}, wantStatus: 401},
		{name: "delete_without_token", cfg: api.Config{Token: testToken}, method: http.MethodDelete, path: rulesPath + "/paid",
			wantStatus: 401},
		{name: "disable_without_token", cfg: api.Config{Token: testToken}, method: http.MethodPost, path: rulesPath + "/paid/disable",
			wantStatus: 401},
		{name: "list_needs_the_token", cfg: api.Config{Token: testToken}, method: http.MethodGet, path: rulesPath, wantStatus: 401},
		{name: "list_with_token", cfg: api.Config{Token: testToken}, method: http.MethodGet, path: rulesPath, header: auth, wantStatus: 200},
		{name: "create_with_token", cfg: api.Config{Token: testToken}, method: http.MethodPost, path: rulesPath,
			body: vipRule, header: auth, wantStatus: 201},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newRulesFixture(t, tt.cfg)
			before, err := os.ReadFile(f.path)
			require.NoError(t, err)
			header := tt.header
			if header == nil {
				header = jsonHeader
			}

			res := do(t, f.handler, tt.method, tt.path, tt.body, header)

			require.Equal(t, tt.wantStatus, res.status, "body: %s", res.body)
			if tt.wantStatus >= 300 {
				eb := res.errorBody(t)
				assert.Contains(t, eb.Error, tt.wantError)
				after, err := os.ReadFile(f.path)
				require.NoError(t, err)
				assert.Equal(t, string(before), string(after), "a refused request changes nothing")
			}
			if tt.wantDetails == nil {
				return
			}
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

func TestRulesAPI_list_pages(t *testing.T) {
	t.Parallel()
	f := newRulesFixture(t, api.Config{})
	tests := []struct {
		name      string
		query     string
		wantIDs   []string
		wantPage  int
		wantSize  int
		wantTotal int
	}{
		{name: "defaults", query: "", wantIDs: []string{"high-value", "paid"}, wantSize: 20, wantTotal: 2},
		{name: "second_page", query: "?page=1&size=1", wantIDs: []string{"paid"}, wantPage: 1, wantSize: 1, wantTotal: 2},
		{name: "past_the_end", query: "?page=5&size=1", wantIDs: []string{}, wantPage: 5, wantSize: 1, wantTotal: 2},
		{name: "huge_page_does_not_overflow", query: "?page=9223372036854775807&size=500", wantIDs: []string{},
			wantPage: 9223372036854775807, wantSize: 500, wantTotal: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			res := do(t, f.handler, http.MethodGet, rulesPath+tt.query, "", nil)

			require.Equal(t, http.StatusOK, res.status, "body: %s", res.body)
			assert.Contains(t, string(res.body), `"items":[`, "items is a list even when empty")
			var list api.RuleList
			require.NoError(t, json.Unmarshal(res.body, &list))
			ids := []string{}
			for _, r := range list.Items {
				ids = append(ids, r.RuleID)
			}
			assert.Equal(t, tt.wantIDs, ids)
			assert.Equal(t, tt.wantPage, list.Page)
			assert.Equal(t, tt.wantSize, list.Size)
			assert.Equal(t, tt.wantTotal, list.Total)
		})
	}
}

func TestRulesAPI_without_store_answers_501(t *testing.T) {
	t.Parallel()
	s := newServer(t, api.Config{}, api.Deps{})

	res := do(t, s.Handler(), http.MethodGet, rulesPath, "", nil)

	require.Equal(t, http.StatusNotImplemented, res.status)
	assert.Contains(t, res.errorBody(t).Error, "rule store")
}

func TestRulesAPI_refuses_changes_while_the_file_has_an_unloadable_edit(t *testing.T) {
	t.Parallel()
	f := newRulesFixture(t, api.Config{})
	broken := strings.Replace(seedRuleFile, "> 1000", "> ", 1)
	require.NoError(t, os.WriteFile(f.path, []byte(broken), 0o600))
	require.Error(t, f.store.Reload(t.Context()))

	res := do(t, f.handler, http.MethodPost, rulesPath, vipRule, jsonHeader)

	require.Equal(t, http.StatusConflict, res.status, "body: %s", res.body)
	eb := res.errorBody(t)
	assert.Contains(t, eb.Error, "fix it first")
	require.Len(t, eb.Details, 1)
	assert.Contains(t, fmt.Sprint(eb.Details[0]), f.path+":4:")
	assert.Contains(t, fmt.Sprint(eb.Details[0]), "high-value")
	content, err := os.ReadFile(f.path)
	require.NoError(t, err)
	assert.Equal(t, broken, string(content), "the operator's edit is not overwritten")
}

func TestRulesAPI_audit_log_names_the_token(t *testing.T) {
	t.Parallel()
	f := newRulesFixture(t, api.Config{Tokens: map[string]string{"ci-bot": "ci-token"}})
	header := map[string]string{"Content-Type": "application/json", "Authorization": "Bearer ci-token"}

	res := do(t, f.handler, http.MethodPost, rulesPath, vipRule, header)
	require.Equal(t, http.StatusCreated, res.status, "body: %s", res.body)
	res = do(t, f.handler, http.MethodPut, rulesPath+"/vip", strings.Replace(vipRule, "> 100", "> 7", 1), header)
	require.Equal(t, http.StatusOK, res.status, "body: %s", res.body)

	logs := f.logs.String()
	assert.Contains(t, logs, `msg="rule changed" actor=ci-bot action=create rule_id=vip version=1`)
	assert.Contains(t, logs, `msg="rule changed" actor=ci-bot action=update rule_id=vip version=2 changed=[condition]`)
}

func TestRulesTest_explains_against_the_live_rule_set_without_rules(t *testing.T) {
	t.Parallel()
	f := newRulesFixture(t, api.Config{})
	_, err := f.store.SetEnabled(t.Context(), "paid", false, rulestore.Change{})
	require.NoError(t, err)

	res := do(t, f.handler, http.MethodPost, rulesPath+"/test", `{"eventMessage":`+orderEvent+`}`, jsonHeader)

	require.Equal(t, http.StatusOK, res.status, "body: %s", res.body)
	var got testReport
	require.NoError(t, json.Unmarshal(res.body, &got))
	require.Len(t, got.Tasks, 1)
	assert.Equal(t, "high-value", got.Tasks[0].RuleID)
	require.Len(t, got.Explanations, 2)
	assert.Equal(t, "high-value", got.Explanations[0].RuleID)
	assert.Equal(t, ptr(true), got.Explanations[0].ConditionResult)
	assert.Equal(t, "paid", got.Explanations[1].RuleID)
	assert.False(t, got.Explanations[1].Enabled)
	assert.False(t, got.Explanations[1].TypeMatched)

	empty := do(t, f.handler, http.MethodPost, rulesPath+"/test", `{"rules":[],"eventMessage":`+orderEvent+`}`, jsonHeader)
	assert.Equal(t, http.StatusBadRequest, empty.status, "an explicitly empty rules list is still an error")
}

// 50 concurrent updates of one rule while events are matched: every update
// either applies on top of the previous one or gets 412, and every matched
// event sees one whole version of the rule.
func TestRulesAPI_concurrent_updates_lose_nothing_without_a_412(t *testing.T) {
	t.Parallel()
	f := newRulesFixture(t, api.Config{})
	const updates = 50
	ruleBody := func(gen int) string {
		return fmt.Sprintf(`{"ruleId":"paid","eventType":"order.paid","taskType":"log","taskName":"gen-%d","parameters":{"gen":"%d"}}`, gen, gen)
	}
	res := do(t, f.handler, http.MethodPut, rulesPath+"/paid", ruleBody(0), jsonHeader)
	require.Equal(t, http.StatusOK, res.status, "body: %s", res.body)
	ev, err := event.Parse([]byte(`{"messageId":"m","eventType":"order.paid"}`))
	require.NoError(t, err)

	var torn, matches atomic.Int64
	stop := make(chan struct{})
	var mwg sync.WaitGroup
	for range 2 {
		mwg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				tasks, err := f.store.Engine().Match(ev)
				if err != nil || len(tasks) != 1 || tasks[0].TaskName != "gen-"+fmt.Sprint(tasks[0].Parameters["gen"]) {
					torn.Add(1)
				}
				matches.Add(1)
			}
		})
	}

	type outcome struct {
		status  int
		gen     int
		read    string // the ETag the client read before writing
		version int64  // the version its write made
	}
	outcomes := make([]outcome, updates)
	var uwg sync.WaitGroup
	for i := range updates {
		uwg.Go(func() {
			// Read, then write conditionally, as a client would.
			got := do(t, f.handler, http.MethodGet, rulesPath+"/paid", "", nil)
			put := do(t, f.handler, http.MethodPut, rulesPath+"/paid", ruleBody(i+1), withIfMatch(got.header.Get("ETag")))
			o := outcome{status: put.status, gen: i + 1, read: got.header.Get("ETag")}
			if put.status == http.StatusOK {
				var r rules.Rule
				if assert.NoError(t, json.Unmarshal(put.body, &r)) {
					o.version = r.Version
				}
			}
			outcomes[i] = o
		})
	}
	uwg.Wait()
	close(stop)
	mwg.Wait()

	var ok, stale int
	var versions []int64
	last := outcome{}
	for _, o := range outcomes {
		switch o.status {
		case http.StatusOK:
			ok++
			versions = append(versions, o.version)
			assert.Equal(t, fmt.Sprintf(`"paid-v%d"`, o.version-1), o.read,
				"an applied update was made on top of the version its client read")
			if o.version > last.version {
				last = o
			}
		case http.StatusPreconditionFailed:
			stale++
		default:
			t.Errorf("unexpected status %d", o.status)
		}
	}
	t.Logf("%d updates applied, %d refused with 412, %d events matched", ok, stale, matches.Load())
	assert.Equal(t, updates, ok+stale, "every update was applied or refused with 412")
	require.Positive(t, ok)
	slices.Sort(versions)
	for i, v := range versions {
		assert.Equal(t, int64(i+3), v, "each applied update built on the one before (versions 3..)")
	}
	final, _ := f.store.Get("paid")
	assert.Equal(t, int64(2+ok), final.Version, "final version = initial 2 + applied updates")
	assert.Equal(t, "gen-"+fmt.Sprint(last.gen), final.TaskName, "the last applied update is the one in force")
	restarted, _ := f.restarted(t).Get("paid")
	assert.Equal(t, final, restarted, "the file holds the final state")
	assert.Zero(t, torn.Load(), "no event was matched against a half-applied rule")
	assert.Positive(t, matches.Load())
}
