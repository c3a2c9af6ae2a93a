package pipeline_test

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/eventpipe/eventpipe/config"
	"github.com/eventpipe/eventpipe/task"
)

// browser starts headless Chromium (Debian's chromium). Without it the
// test is skipped, or fails under CI=true.
func browser(t *testing.T) context.Context {
	t.Helper()
	path, err := exec.LookPath("chromium")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("chromium is required under CI=true (apt-get install -y chromium)")
		}
		t.Skip("no chromium on PATH (apt-get install -y chromium)")
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(path), chromedp.NoSandbox,
		chromedp.DisableGPU, chromedp.WindowSize(1280, 900))
	actx, cancelAlloc := chromedp.NewExecAllocator(t.Context(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() { cancel(); cancelAlloc() })
	ctx, cancelTimeout := context.WithTimeout(ctx, 60*time.Second)
	t.Cleanup(cancelTimeout)
	return ctx
}

// shot saves a screenshot when EVENTPIPE_SCREENSHOTS names a directory.
func shot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	dir := os.Getenv("EVENTPIPE_SCREENSHOTS")
	if dir == "" {
		return
	}
	require.NoError(t, chromedp.Do(ctx, chromedp.Sleep(300*time.Millisecond)))
	buf, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, name+".png"), buf, 0o644))
}

// text reads the text of the first element sel matches.
func text(t *testing.T, ctx context.Context, sel string) string {
	t.Helper()
	s, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
	require.NoError(t, err)
	return s
}

// authed sends an API request with the demo's token.
func (d *demo) authed(t *testing.T, method, path string, into any) int {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, d.base+path, nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer console-token")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	if into != nil && resp.StatusCode == http.StatusOK {
		require.NoError(t, json.NewDecoder(resp.Body).Decode(into))
	}
	return resp.StatusCode
}

func TestConsole_in_a_browser(t *testing.T) {
	t.Parallel()
	ctx := browser(t)
	d := startDemo(t, func(c *config.Config) { c.HTTP.Token = "console-token" })
	raw, err := os.ReadFile("../examples/events/order-created-high.json")
	require.NoError(t, err)
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, d.base+"/api/v1/events", strings.NewReader(string(raw)))
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer console-token")
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusAccepted, resp.StatusCode)
	const id = "msg-20250906-123457"
	refused := task.ID(id, "order-created-trigger")
	require.Eventually(t, func() bool {
		d.flush(t)
		var got struct{ Status string }
		return d.authed(t, http.MethodGet, "/api/v1/tasks/"+task.ID(id, "high-value-order-echo"), &got) == http.StatusOK &&
			got.Status == "SUCCEEDED" && d.authed(t, http.MethodGet, "/api/v1/tasks/"+refused, &got) == http.StatusOK &&
			got.Status == "FAILED"
	}, 10*time.Second, 20*time.Millisecond)

	ui := d.base + "/ui/"
	css := func(sel string) chromedp.CSS { return chromedp.CSS(sel) }
	// page loads the console afresh at a hash route: Navigate waits for a
	// load event, which a change of the hash alone does not fire.
	loads := 0
	page := func(hash string) chromedp.Action[chromedp.Void] {
		loads++
		return chromedp.Navigate(ui + "?load=" + strconv.Itoa(loads) + hash)
	}
	t.Run("without the token the console says so", func(t *testing.T) {
		require.NoError(t, chromedp.Do(ctx,
			page("#/events/"+id),
			chromedp.WaitVisible(css(`[data-testid=error]`))))
		assert.Contains(t, text(t, ctx, `[data-testid=error]`), "missing bearer token")
	})

	t.Run("find an event by id and see its tasks", func(t *testing.T) {
		require.NoError(t, chromedp.Do(ctx,
			chromedp.SetValue(css(`#token`), "console-token"),
			chromedp.Click(css(`#token-form button`)),
			page("#/events"),
			chromedp.WaitVisible(css(`[data-testid=event-id]`)),
			chromedp.SendKeys(css(`[data-testid=event-id]`), id),
			chromedp.Click(css(`form.row button[type=submit]`)),
			chromedp.WaitVisible(css(`[data-testid=event-tasks]`))))
		shot(t, ctx, "event")
		tasks := text(t, ctx, `[data-testid=event-tasks]`)
		assert.Contains(t, tasks, "FAILED (poisoned: permanent)")
		assert.Contains(t, tasks, "is not on the shell allowlist")
		assert.Contains(t, tasks, "order order-12345")
		rules := text(t, ctx, `[data-testid=event-rules]`)
		for _, rule := range []string{"order-created-trigger", "order-audit-log", "high-value-order-echo"} {
			assert.Contains(t, rules, rule)
		}
	})

	t.Run("disable a rule and see it disabled through the API", func(t *testing.T) {
		require.NoError(t, chromedp.Do(ctx,
			page("#/rules"),
			chromedp.WaitVisible(css(`tr[data-rule="order-audit-log"] button`)),
			chromedp.Click(css(`tr[data-rule="order-audit-log"] button`)),
			chromedp.WaitVisible(css(`tr[data-rule="order-audit-log"] td.no`))))
		shot(t, ctx, "rules")
		assert.Equal(t, "disabled", text(t, ctx, `tr[data-rule="order-audit-log"] [data-testid=enabled]`))
		var rule struct{ Enabled *bool }
		require.Equal(t, http.StatusOK, d.authed(t, http.MethodGet, "/api/v1/task-trigger-rules/order-audit-log", &rule))
		require.NotNil(t, rule.Enabled)
		assert.False(t, *rule.Enabled)
	})

	t.Run("a bad condition is shown next to its field", func(t *testing.T) {
		require.NoError(t, chromedp.Do(ctx,
			page("#/rules/high-value-order-echo"),
			chromedp.WaitVisible(css(`#f-condition`)),
			chromedp.SetValue(css(`#f-condition`), "payload.amount >"),
			chromedp.Click(css(`[data-testid=save]`)),
			chromedp.WaitVisible(css(`.field.invalid [data-field-error=condition]`))))
		shot(t, ctx, "rule-error")
		msg := text(t, ctx, `[data-field-error=condition]`)
		assert.Contains(t, msg, "condition")
		assert.Contains(t, msg, "1:")
		var rule struct{ Condition string }
		require.Equal(t, http.StatusOK, d.authed(t, http.MethodGet, "/api/v1/task-trigger-rules/high-value-order-echo", &rule))
		assert.Equal(t, "payload.amount > 1000", rule.Condition, "nothing was saved")
	})

	t.Run("replay a dead letter", func(t *testing.T) {
		row := `section[data-topic="schedule-tasks.dlq"] tr[data-uuid="` + refused + `"] input`
		require.NoError(t, chromedp.Do(ctx,
			page("#/dlq"),
			chromedp.WaitVisible(css(row))))
		shot(t, ctx, "dlq")
		require.NoError(t, chromedp.Do(ctx,
			chromedp.Click(css(row)),
			chromedp.Click(css(`section[data-topic="schedule-tasks.dlq"] [data-testid=replay]`)),
			chromedp.WaitVisible(css(`#toast.show`))))
		assert.Equal(t, "replayed 1", text(t, ctx, `#toast`))
		// Replayed, the task fails on the allowlist again and is kept anew.
		require.Eventually(t, func() bool {
			d.flush(t)
			var list struct {
				Topics []struct {
					Items []struct{ Position string }
				}
			}
			return d.authed(t, http.MethodGet, "/api/v1/dlq?topic=schedule-tasks", &list) == http.StatusOK &&
				len(list.Topics[0].Items) == 1 && list.Topics[0].Items[0].Position != "1"
		}, 10*time.Second, 50*time.Millisecond)
	})

	t.Run("overview shows live counts", func(t *testing.T) {
		require.NoError(t, chromedp.Do(ctx,
			page("#/"),
			chromedp.WaitVisible(css(`[data-testid=counts] .card`))))
		shot(t, ctx, "overview")
		assert.Contains(t, text(t, ctx, `[data-testid=counts]`), "tasks failed")
	})
}
