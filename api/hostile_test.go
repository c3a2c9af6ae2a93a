package api_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/eventpipe/eventpipe/api"
)

// hostileConditions are the adversarial pass's conditions: each was
// accepted (201) by the main of 2026-12-05 and took the process down or
// held a CPU for many seconds.
var hostileConditions = []struct {
	name string
	cond string
	want string
}{
	{name: "concatenation_339_terms", cond: "len(payload.s" + strings.Repeat(" + payload.s", 338) + ") > 0",
		want: "over the budget of 64.0 MiB (rules.budget.condition_memory)"},
	{name: "pattern_from_the_event", cond: `payload.s matches payload.p`,
		want: "1:19: the pattern of matches must be a string literal"},
	{name: "counted_repetition", cond: `payload.s matches "(x|xx){500}y"`,
		want: "1:19: the regular expression compiles to 3003 instructions, more than 1000 (rules.budget.max_regexp_program)"},
	{name: "many_fixed_patterns", cond: strings.TrimSuffix(strings.Repeat(`payload.s matches "(x|xx){30}y" || `, 110), " || "),
		want: "(rules.budget.condition_time)"},
	{name: "not_boolean", cond: `payload.amount`, want: "1:1: expected a boolean condition, but payload.amount may be any value"},
}

func TestRulesAPI_refuses_hostile_conditions_with_position_and_reason(t *testing.T) {
	t.Parallel()
	for _, tt := range hostileConditions {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			require.LessOrEqual(t, len(tt.cond), 4096)
			f := newRulesFixture(t, api.Config{})
			body, err := json.Marshal(map[string]any{"ruleId": "hostile", "eventType": "x", "taskType": "log", "condition": tt.cond})
			require.NoError(t, err)
			res := do(t, f.handler, http.MethodPost, "/api/v1/task-trigger-rules", string(body), nil)
			require.Equal(t, http.StatusBadRequest, res.status, "body: %s", res.body)
			assert.Contains(t, string(res.body), tt.want)
			assert.Contains(t, string(res.body), `"field":"condition"`)

			dry, err := json.Marshal(map[string]any{"rule": json.RawMessage(body),
				"eventMessage": map[string]any{"eventType": "x", "payload": map[string]any{"s": "x"}}})
			require.NoError(t, err)
			res = do(t, f.handler, http.MethodPost, "/api/v1/task-trigger-rules/test", string(dry), nil)
			require.Equal(t, http.StatusBadRequest, res.status, "body: %s", res.body)
			assert.Contains(t, string(res.body), tt.want)
		})
	}
}

// stuckBroker publishes the first `accept` events, then blocks until
// its context ends, as a publish to a broker that is down does.
type stuckBroker struct {
	accept int
	seen   atomic.Int64
}

func (p *stuckBroker) PublishEvents(ctx context.Context, events []api.Ingested) error {
	if int(p.seen.Add(int64(len(events)))) <= p.accept {
		return nil
	}
	<-ctx.Done()
	return ctx.Err()
}

// A publish that cannot finish answers 503 with Retry-After and the
// accepted, in-doubt and refused events within the request's deadline,
// never an empty reply after the write timeout.
func TestEvents_publish_that_cannot_finish_answers_503_within_the_deadline(t *testing.T) {
	t.Parallel()
	batch := func(n int) string {
		evs := make([]string, n)
		for i := range evs {
			evs[i] = fmt.Sprintf(`{"messageId":"m%d","eventType":"x","payload":{}}`, i)
		}
		return "[" + strings.Join(evs, ",") + "]"
	}
	tests := []struct {
		name                           string
		events                         int
		accept                         int
		wantAccepted, inDoubt, refused int
	}{
		{name: "broker_down_single", events: 1, accept: 0, wantAccepted: 0, inDoubt: 1, refused: 0},
		{name: "broker_down_batch", events: 250, accept: 0, wantAccepted: 0, inDoubt: 100, refused: 150},
		{name: "broker_fails_after_the_first_chunk", events: 250, accept: 100, wantAccepted: 100, inDoubt: 100, refused: 50},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			pub := &stuckBroker{accept: tt.accept}
			s := newServer(t, api.Config{WriteTimeout: 2 * time.Second, RequestTimeout: 300 * time.Millisecond},
				api.Deps{Events: pub})
			srv := newHTTPServer(t, s)
			res, err := http.Post(srv+"/api/v1/events", "application/json", strings.NewReader(batch(tt.events)))
			require.NoError(t, err, "an answer, not an empty reply")
			defer func() { _ = res.Body.Close() }()
			assert.Equal(t, http.StatusServiceUnavailable, res.StatusCode)
			assert.Equal(t, "5", res.Header.Get("Retry-After"))
			var f api.PublishFailure
			require.NoError(t, json.NewDecoder(res.Body).Decode(&f))
			assert.Contains(t, f.Error, "the request deadline passed before the broker confirmed every event")
			assert.Equal(t, tt.wantAccepted, f.Accepted)
			assert.Len(t, f.IDs, tt.wantAccepted)
			assert.Len(t, f.InDoubt, tt.inDoubt)
			assert.Len(t, f.NotAccepted, tt.refused)
			if tt.wantAccepted > 0 {
				assert.Equal(t, "m0", f.IDs[0])
			}
		})
	}
}

func TestNew_refuses_a_request_timeout_not_shorter_than_the_write_timeout(t *testing.T) {
	t.Parallel()
	_, err := api.New(api.Config{WriteTimeout: time.Second, RequestTimeout: time.Second}, api.Deps{Events: &fakePublisher{}, Gatherer: nil})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "request timeout 1s must be shorter than the write timeout 1s")
}

// newHTTPServer serves s on a loopback listener with its real timeouts and
// returns its base URL.
func newHTTPServer(t *testing.T, s *api.Server) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln) }()
	t.Cleanup(func() { cancel(); <-done })
	return "http://" + ln.Addr().String()
}
