package api_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/eventpipe/eventpipe/api"
	"github.com/eventpipe/eventpipe/rulestore"
)

// discardPublisher accepts and forgets, so long fuzz runs use no memory.
type discardPublisher struct{}

func (discardPublisher) PublishEvents(context.Context, []api.Ingested) error { return nil }

// FuzzEvents checks that no body makes the ingest endpoint panic or answer
// anything but 202, 400 or 413, always with a JSON body.
func FuzzEvents(f *testing.F) {
	for _, seed := range []string{event1, "[" + event1 + "," + event2 + "]", `[]`, `{`, `"x"`, `[1,{}]`,
		`{"specversion":"1.0","id":"1","type":"a","source":"s","data":{}}`} {
		f.Add(seed)
	}
	s, err := api.New(api.Config{MaxBodyBytes: 4096, MaxEventBytes: 1024},
		api.Deps{Events: discardPublisher{}, Gatherer: prometheus.NewRegistry()})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, body string) {
		res := do(t, s.Handler(), http.MethodPost, "/api/v1/events", body, jsonHeader)
		switch res.status {
		case http.StatusAccepted, http.StatusBadRequest, http.StatusRequestEntityTooLarge:
		default:
			t.Fatalf("status %d for %q: %s", res.status, body, res.body)
		}
		if !json.Valid(res.body) {
			t.Fatalf("answer is not JSON: %s", res.body)
		}
	})
}

// FuzzRulesTest does the same for the rules test endpoint: 200, 400 or 413.
func FuzzRulesTest(f *testing.F) {
	for _, seed := range []string{
		`{"rule":` + highValueRule + `,"eventMessage":` + orderEvent + `}`,
		`{"rules":[` + highValueRule + `,` + paidRule + `],"eventMessage":` + smallOrder + `}`,
		`{"rule":{"ruleId":"r","eventType":"#","taskType":"log","condition":"payload.a.b > 1"},"eventMessage":{"eventType":"x"}}`,
		`{"rule":{},"eventMessage":{}}`, `{}`, `[]`,
	} {
		f.Add(seed)
	}
	s, err := api.New(api.Config{MaxBodyBytes: 8192}, api.Deps{Events: discardPublisher{}, Gatherer: prometheus.NewRegistry()})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, body string) {
		res := do(t, s.Handler(), http.MethodPost, "/api/v1/task-trigger-rules/test", body, jsonHeader)
		switch res.status {
		case http.StatusOK, http.StatusBadRequest, http.StatusRequestEntityTooLarge:
		default:
			t.Fatalf("status %d for %q: %s", res.status, body, res.body)
		}
		if !json.Valid(res.body) {
			t.Fatalf("answer is not JSON: %s", res.body)
		}
	})
}

// FuzzRulesCreate checks that no body makes the rule create or update
// endpoints panic or answer anything but a documented status with a JSON
// body. Created rules are deleted again so the in-memory store stays small.
func FuzzRulesCreate(f *testing.F) {
	for _, seed := range []string{
		vipRule, highValueRule, paidRule,
		`{"ruleId":"r","eventType":"a.#","taskType":"log","condition":"payload.a.b > 1","parameters":{"x":"${payload.a:-1}"}}`,
		`{"ruleId":"r","eventType":"a","taskType":"log","version":2}`, `{"ruleId":"paid"}`, `{}`, `[]`, `{"ruleId":1}`,
	} {
		f.Add(seed)
	}
	store, err := rulestore.Open(rulestore.Config{})
	if err != nil {
		f.Fatal(err)
	}
	s, err := api.New(api.Config{MaxRuleBytes: 8192},
		api.Deps{Events: discardPublisher{}, Gatherer: prometheus.NewRegistry(), Rules: store})
	if err != nil {
		f.Fatal(err)
	}
	created := do(f, s.Handler(), http.MethodPost, "/api/v1/task-trigger-rules", paidRule, jsonHeader)
	if created.status != http.StatusCreated {
		f.Fatalf("seed rule: %d %s", created.status, created.body)
	}
	f.Fuzz(func(t *testing.T, body string) {
		res := do(t, s.Handler(), http.MethodPost, "/api/v1/task-trigger-rules", body, jsonHeader)
		switch res.status {
		case http.StatusCreated:
			var r struct {
				RuleID string `json:"ruleId"`
			}
			if err := json.Unmarshal(res.body, &r); err != nil {
				t.Fatalf("201 body: %v", err)
			}
			if del := do(t, s.Handler(), http.MethodDelete, "/api/v1/task-trigger-rules/"+url.PathEscape(r.RuleID), "", nil); del.status != http.StatusNoContent {
				t.Fatalf("delete %q: %d %s", r.RuleID, del.status, del.body)
			}
		case http.StatusBadRequest, http.StatusConflict, http.StatusRequestEntityTooLarge:
		default:
			t.Fatalf("POST status %d for %q: %s", res.status, body, res.body)
		}
		if !json.Valid(res.body) {
			t.Fatalf("answer is not JSON: %s", res.body)
		}
		res = do(t, s.Handler(), http.MethodPut, "/api/v1/task-trigger-rules/paid", body, jsonHeader)
		switch res.status {
		case http.StatusOK, http.StatusBadRequest, http.StatusPreconditionFailed, http.StatusRequestEntityTooLarge:
		default:
			t.Fatalf("PUT status %d for %q: %s", res.status, body, res.body)
		}
	})
}
