//go:build faults

package faults_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/eventpipe/eventpipe/task"
)

// replayRules: "greet" needs payload.customer.id, which the event lacks
// (template error, fixed through the rules API); "gated" runs a copy of
// ledger.sh that is not on the shell allowlist yet (fixed by a restart
// with it allowed).
const replayRules = ledgerRule + `  - ruleId: "greet"
    eventType: "replay.template"
    taskName: "greet-${eventId}"
    taskType: "shell"
    parameters:
      script: "{{script}}"
      args: ["{{ledger}}"]
      customer: "${payload.customer.id}"
  - ruleId: "gated"
    eventType: "replay.gated"
    taskName: "gated-${eventId}"
    taskType: "shell"
    parameters:
      script: "{{dir}}/gated.sh"
      args: ["{{ledger}}"]
`

// TestDLQReplay is the life of a poison message with `eventpipe dlq`: an
// event poisoned by a template error and a task poisoned because its
// program is not allowed are listed with their reasons; once each cause is
// fixed (the rule corrected through the rules API; the pipeline restarted
// with the program allowed), `dlq replay --reason` sends each back to its
// origin, it is processed, and it leaves the .dlq. A third poison message
// (invalid JSON) matches neither replay and stays.
func TestDLQReplay(t *testing.T) {
	for _, kind := range brokers {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, kind, options{rules: replayRules})
			gated := filepath.Join(e.dir, "gated.sh")
			script, err := os.ReadFile(ledgerScript)
			require.NoError(t, err)
			require.NoError(t, os.WriteFile(gated, script, 0o700))

			greetEv, gatedEv := e.id+"-greet", e.id+"-gated"
			want := []string{task.ID(greetEv, "greet"), task.ID(gatedEv, "gated")}
			p := e.start()
			broken := []byte(`{"messageId":"` + e.id + `-broken","eventType":"fault.order",`)
			if kind == kafka {
				e.rawKafka(e.events, nil, broken, nil)
			} else {
				e.rawAMQP("fault.order", broken, nil)
			}
			e.publish([]event{
				{id: greetEv, json: `{"messageId":"` + greetEv + `","eventType":"replay.template","payload":{}}`},
				{id: gatedEv, json: `{"messageId":"` + gatedEv + `","eventType":"replay.gated","payload":{}}`},
			})
			rows := e.waitDLQ(3, time.Minute, p)
			reasons := map[string]string{}
			for _, r := range rows {
				reasons[r.Topic] += r.Reason + "\n"
			}
			assert.Contains(t, reasons[e.events+".dlq"], "payload.customer.id")
			assert.Contains(t, reasons[e.tasks+".dlq"], "not on the shell allowlist")

			dlq := func(args ...string) string {
				t.Helper()
				code, stdout, stderr := cli(t, 2*time.Minute, append([]string{"dlq"}, append(args, "--config", e.cfgPath)...)...)
				require.Equal(t, 0, code, "eventpipe dlq %v: %s", args, stderr)
				return stdout
			}
			out := dlq("list")
			assert.Contains(t, out, "payload.customer.id", "the table shows the reason")
			assert.Contains(t, out, e.events+".dlq: 2 waiting, 2 shown; "+e.tasks+".dlq: 1 waiting, 1 shown")

			out = dlq("replay", "--reason", "payload.customer.id", "--dry-run")
			assert.Contains(t, out, "would replay 1 poison messages")
			assert.Len(t, e.dlq(), 3, "a dry run replays nothing")

			// Fix 1: the rule gets a default, through the rules API.
			e.updateRule(p, "greet", func(r map[string]any) {
				r["parameters"].(map[string]any)["customer"] = "${payload.customer.id:-anonymous}"
			})
			out = dlq("replay", "--reason", "payload.customer.id")
			assert.Contains(t, out, "replayed 1 poison messages", out)
			e.waitDone(want[:1], time.Minute, p)

			// Fix 2: the program is allowed, after a restart.
			_, err = p.term(e.opts.shutdown + 5*time.Second)
			require.NoError(t, err)
			e.opts.allowed = append(e.opts.allowed, gated)
			e.writeConfig()
			p = e.start()
			out = dlq("replay", "--reason", "allowlist")
			assert.Contains(t, out, "replayed 1 poison messages", out)
			e.waitDone(want, time.Minute, p)
			e.waitQuiet(2 * time.Second)

			left := e.dlq()
			require.Len(t, left, 1, "only the invalid JSON is left")
			assert.Contains(t, left[0].Payload, e.id+"-broken")
			out = dlq("replay", "--reason", "payload.customer.id")
			assert.Contains(t, out, "replayed 0 poison messages", "a replayed message is not replayed twice")
			_, err = p.term(e.opts.shutdown + 5*time.Second)
			require.NoError(t, err)

			tl := e.record(7, "dlq replay after the fix (template error; program not allowed)", 3, want,
				"2 poisoned, fixed, replayed, processed and gone from the .dlq; the invalid JSON one stays (poisoned 1)")
			assert.Zero(t, tl.lost)
			assert.Zero(t, tl.runs-tl.executed, "each replayed task ran once")
		})
	}
}

// updateRule changes rule id through the pipeline's rules API.
func (e *env) updateRule(p *pipeline, id string, change func(map[string]any)) {
	e.t.Helper()
	url := "http://" + p.addr + "/api/v1/task-trigger-rules/" + id
	resp, err := http.Get(url)
	require.NoError(e.t, err)
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.NoError(e.t, err)
	require.Equal(e.t, http.StatusOK, resp.StatusCode, "GET %s: %s", url, body)
	var rule map[string]any
	require.NoError(e.t, json.Unmarshal(body, &rule))
	change(rule)
	b, err := json.Marshal(rule)
	require.NoError(e.t, err)
	req, err := http.NewRequest(http.MethodPut, url, bytes.NewReader(b))
	require.NoError(e.t, err)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("If-Match", resp.Header.Get("ETag"))
	resp, err = http.DefaultClient.Do(req)
	require.NoError(e.t, err)
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(e.t, http.StatusOK, resp.StatusCode, "PUT %s: %s", url, strings.TrimSpace(string(body)))
	e.t.Logf("rule %s updated: %s", id, fmt.Sprint(rule["parameters"]))
}
