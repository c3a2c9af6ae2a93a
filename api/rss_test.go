package api_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/eventpipe/eventpipe/api"
	"github.com/eventpipe/eventpipe/rules"
)

// mostExpensiveConcatenation is the longest chain of `payload.s +` the
// default budget accepts: each + copies both operands, so this shape makes
// the most bytes per byte of condition that a 1 MiB event allows.
func mostExpensiveConcatenation(t *testing.T) string {
	t.Helper()
	accepted := ""
	for k := 2; k < 400; k++ {
		cond := "len(payload.s" + strings.Repeat(" + payload.s", k-1) + ") > 0"
		if _, err := rules.Compile([]rules.Rule{{RuleID: "r", EventType: "x", TaskType: "log", Condition: cond}}); err != nil {
			require.NotEmpty(t, accepted, "the budget accepts at least a + b")
			return accepted
		}
		accepted = cond
	}
	t.Fatal("no concatenation is refused")
	return ""
}

// vmRSS reads the process's resident set size in bytes from /proc.
func vmRSS(t *testing.T) int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		t.Skipf("no /proc/self/status (%v): RSS is measured on Linux only", err)
	}
	defer func() { _ = f.Close() }()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			require.NoError(t, err)
			return kb << 10
		}
	}
	t.Skip("VmRSS not in /proc/self/status")
	return 0
}

// Eight concurrent dry runs of the most expensive accepted condition over
// 1 MiB events keep the process under 512 MiB RSS: the cost model bounds
// each evaluation, the evaluation gate bounds how many run at once. (Before
// the cost model, one dry run of the 339-term concatenation took 1.9 GB and
// four killed the process.) Not parallel, so the RSS is this test's.
func TestRulesTest_concurrent_dry_runs_of_1MiB_events_stay_under_512MiB_RSS(t *testing.T) {
	cond := mostExpensiveConcatenation(t)
	s := newServer(t, api.Config{MaxBodyBytes: 4 << 20}, api.Deps{})
	url := newHTTPServer(t, s) + "/api/v1/task-trigger-rules/test"
	body, err := json.Marshal(map[string]any{
		"rule":         map[string]any{"ruleId": "costly", "eventType": "x", "taskType": "log", "condition": cond},
		"eventMessage": map[string]any{"eventType": "x", "payload": map[string]any{"s": strings.Repeat("x", 1<<20-200)}},
	})
	require.NoError(t, err)
	debug.FreeOSMemory()
	base := vmRSS(t)

	var peak int64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			peak = max(peak, vmRSS(t))
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
		}
	}()
	start := time.Now()
	var wg sync.WaitGroup
	statuses := make([]int, 8)
	for i := range statuses {
		wg.Go(func() {
			res, err := http.Post(url, "application/json", strings.NewReader(string(body)))
			if !assert.NoError(t, err) {
				return
			}
			var rep rules.Report
			assert.NoError(t, json.NewDecoder(res.Body).Decode(&rep))
			_ = res.Body.Close()
			statuses[i] = res.StatusCode
			if assert.Len(t, rep.Explanations, 1) {
				assert.Empty(t, rep.Explanations[0].Error)
				assert.NotNil(t, rep.Explanations[0].ConditionResult, "the condition ran")
			}
		})
	}
	wg.Wait()
	close(stop)
	<-sampled
	for i, st := range statuses {
		assert.Equal(t, http.StatusOK, st, "dry run %d", i)
	}
	terms := strings.Count(cond, "payload.s")
	t.Logf("8 concurrent dry runs of a %d-term concatenation (%d bytes) over 1 MiB events: peak RSS %s (%s before), %s",
		terms, len(cond), mib(peak), mib(base), time.Since(start).Round(time.Millisecond))
	assert.Less(t, peak, int64(512<<20), "peak RSS")
}

func mib(n int64) string { return fmt.Sprintf("%.0f MiB", float64(n)/(1<<20)) }
