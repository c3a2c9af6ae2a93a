package rulestore_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/eventpipe/eventpipe/rules"
	"github.com/eventpipe/eventpipe/rulestore"
)

// watch runs s.Watch until the test ends.
func watch(t *testing.T, s *rulestore.Store) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Watch(ctx) }()
	t.Cleanup(func() {
		cancel()
		assert.NoError(t, <-done)
	})
}

// fast polls often so the tests that are not about timing run quickly.
var fast = rulestore.Config{PollInterval: 10 * time.Millisecond, Debounce: 10 * time.Millisecond}

// flowingEvents matches bigOrder against e until the test ends and records
// every distinct answer, as the trigger handler would while the file changes.
type flowingEvents struct {
	mu      sync.Mutex
	answers map[string]int
	errs    atomic.Int64
	stop    chan struct{}
	done    chan struct{}
}

func flowEvents(t *testing.T, e *rules.Engine) *flowingEvents {
	t.Helper()
	ev := mustEvent(t, bigOrder)
	fe := &flowingEvents{answers: map[string]int{}, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(fe.done)
		for {
			select {
			case <-fe.stop:
				return
			default:
			}
			tasks, err := e.Match(ev)
			if err != nil {
				fe.errs.Add(1)
			}
			ids := make([]string, len(tasks))
			for i, tk := range tasks {
				ids[i] = tk.RuleID
			}
			fe.mu.Lock()
			fe.answers[strings.Join(ids, ",")]++
			fe.mu.Unlock()
		}
	}()
	return fe
}

// seen reports whether some event got answer.
func (fe *flowingEvents) seen(answer string) bool {
	fe.mu.Lock()
	defer fe.mu.Unlock()
	return fe.answers[answer] > 0
}

// finish stops the events and returns the distinct answers seen.
func (fe *flowingEvents) finish() []string {
	close(fe.stop)
	<-fe.done
	fe.mu.Lock()
	defer fe.mu.Unlock()
	var out []string
	for k := range fe.answers {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func TestWatch_picks_up_a_valid_edit_within_two_seconds(t *testing.T) {
	t.Parallel()
	f := newFixture(t, seedRules, rulestore.Config{}) // default poll interval and debounce
	watch(t, f.store)
	ev := mustEvent(t, bigOrder)

	require.NoError(t, os.WriteFile(f.path, []byte(strings.Replace(seedRules, "> 1000", "> 10000", 1)), 0o600))

	require.Eventually(t, func() bool {
		return slices.Equal([]string{"all-orders"}, matched(t, f.store.Engine(), ev))
	}, 2*time.Second, 10*time.Millisecond)
	hv, _ := f.store.Get("high-value")
	assert.Equal(t, int64(2), hv.Version, "the edited rule got the next version")
	ao, _ := f.store.Get("all-orders")
	assert.Equal(t, int64(1), ao.Version, "the other rule kept its version")
	assert.Len(t, f.logs.lines("level=INFO", `msg="rules file reloaded"`, f.path), 1)
	assert.Len(t, f.logs.lines(`msg="rule changed"`, "actor=file", "action=reload", "op=update",
		"rule_id=high-value", "version=2", "changed=[condition]"), 1, "logs: %s", f.logs)
}

func TestWatch_refuses_an_invalid_file_keeps_the_old_rules_then_takes_the_next_valid_one(t *testing.T) {
	t.Parallel()
	f := newFixture(t, seedRules, rulestore.Config{})
	watch(t, f.store)
	events := flowEvents(t, f.store.Engine())
	ev := mustEvent(t, bigOrder)

	broken := strings.Replace(seedRules, "> 1000", "> ", 1) // line 4, rule high-value
	require.NoError(t, os.WriteFile(f.path, []byte(broken), 0o600))
	require.Eventually(t, func() bool { return f.metrics.n.Load() == 1 }, 2*time.Second, 10*time.Millisecond,
		"the refused reload is counted")
	errLines := f.logs.lines("level=ERROR", "rules file refused")
	require.Len(t, errLines, 1, "logs: %s", f.logs)
	assert.Contains(t, errLines[0], f.path+":4:", "the error names file and line")
	assert.Contains(t, errLines[0], `rule \"high-value\": condition`, "the error names rule and field")
	assert.Equal(t, []string{"high-value", "all-orders"}, matched(t, f.store.Engine(), ev), "the previous rules stay active")
	assert.Never(t, func() bool { return f.metrics.n.Load() > 1 }, 600*time.Millisecond, 50*time.Millisecond,
		"the same broken content is reported once")

	next := strings.Replace(seedRules, "> 1000", "> 10000", 1)
	written := time.Now()
	require.NoError(t, os.WriteFile(f.path, []byte(next), 0o600))
	require.Eventually(t, func() bool {
		return slices.Equal([]string{"all-orders"}, matched(t, f.store.Engine(), ev))
	}, 2*time.Second, 10*time.Millisecond, "the next valid file is active within 2s")
	t.Logf("next valid file active after %v", time.Since(written).Round(time.Millisecond))
	require.Eventually(t, func() bool { return events.seen("all-orders") }, 2*time.Second, time.Millisecond,
		"the flowing events reach the new set")

	answers := events.finish()
	assert.Zero(t, events.errs.Load())
	assert.Equal(t, []string{"all-orders", "high-value,all-orders"}, answers,
		"every event was matched by the old or the new set, never by nothing")
	assert.Equal(t, int64(1), f.metrics.n.Load())
}

func TestWatch_does_not_reload_what_the_store_wrote(t *testing.T) {
	t.Parallel()
	f := newFixture(t, seedRules, fast)
	watch(t, f.store)

	_, err := f.store.Create(t.Context(), newRule("n1"), rulestore.Change{})
	require.NoError(t, err)

	assert.Never(t, func() bool { return len(f.logs.lines("rules file reloaded")) > 0 }, 300*time.Millisecond, 10*time.Millisecond)
	n1, _ := f.store.Get("n1")
	assert.Equal(t, int64(1), n1.Version)
}

func TestWatch_keeps_rules_while_the_file_is_missing(t *testing.T) {
	t.Parallel()
	f := newFixture(t, seedRules, fast)
	watch(t, f.store)
	ev := mustEvent(t, bigOrder)

	require.NoError(t, os.Remove(f.path))
	require.Eventually(t, func() bool { return len(f.logs.lines("level=WARN", "unreadable", "missing=true")) == 1 },
		2*time.Second, 10*time.Millisecond)
	assert.Equal(t, []string{"high-value", "all-orders"}, matched(t, f.store.Engine(), ev))

	require.NoError(t, os.WriteFile(f.path, []byte(strings.Replace(seedRules, "> 1000", "> 10000", 1)), 0o600))
	require.Eventually(t, func() bool {
		return slices.Equal([]string{"all-orders"}, matched(t, f.store.Engine(), ev))
	}, 2*time.Second, 10*time.Millisecond)
	assert.Zero(t, f.metrics.n.Load())
}

func TestWatch_reload_creates_and_deletes_rules(t *testing.T) {
	t.Parallel()
	f := newFixture(t, seedRules, fast)
	watch(t, f.store)
	next := `taskTriggerRules:
  - ruleId: "all-orders"
    eventType: "order.*"
    taskType: "log"
  - ruleId: "added"
    eventType: "order.created"
    taskType: "log"
    version: 5
`
	require.NoError(t, os.WriteFile(f.path, []byte(next), 0o600))

	require.Eventually(t, func() bool {
		rs, _ := f.store.List(0, 10)
		return slices.Equal([]string{"all-orders", "added"}, ruleIDs(rs))
	}, 2*time.Second, 10*time.Millisecond)
	added, _ := f.store.Get("added")
	assert.Equal(t, int64(5), added.Version, "a new rule keeps the version it carries")
	assert.Len(t, f.logs.lines("action=reload", "op=create", "rule_id=added"), 1)
	assert.Len(t, f.logs.lines("action=reload", "op=delete", "rule_id=high-value"), 1)
}

// Every Match sees one whole set: 50 concurrent whole-set replacements each
// write their generation into every rule, and no matched event may carry two
// generations.
func TestReplace_concurrent_changes_swap_whole_sets(t *testing.T) {
	t.Parallel()
	f := newFixture(t, "", rulestore.Config{})
	const ruleCount, updates, matchers = 3, 50, 4
	withGen := func(gen int) []rules.Rule {
		rs := make([]rules.Rule, ruleCount)
		for i := range rs {
			rs[i] = rules.Rule{RuleID: fmt.Sprintf("r%d", i), EventType: "gen.test", TaskType: "log",
				Parameters: map[string]any{"gen": gen}}
		}
		return rs
	}
	require.NoError(t, f.store.Replace(t.Context(), withGen(0), rulestore.Change{}))
	ev := mustEvent(t, `{"messageId":"m","eventType":"gen.test"}`)

	var mixed, matches atomic.Int64
	stop := make(chan struct{})
	var mwg sync.WaitGroup
	for range matchers {
		mwg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				tasks, err := f.store.Engine().Match(ev)
				if err != nil || len(tasks) != ruleCount {
					mixed.Add(1)
					continue
				}
				for _, tk := range tasks[1:] {
					if fmt.Sprint(tk.Parameters["gen"]) != fmt.Sprint(tasks[0].Parameters["gen"]) {
						mixed.Add(1)
					}
				}
				matches.Add(1)
			}
		})
	}
	var uwg sync.WaitGroup
	for gen := 1; gen <= updates; gen++ {
		uwg.Go(func() { assert.NoError(t, f.store.Replace(t.Context(), withGen(gen), rulestore.Change{Actor: "test"})) })
	}
	uwg.Wait()
	close(stop)
	mwg.Wait()

	assert.Zero(t, mixed.Load(), "no event was matched against a half-applied set")
	assert.Positive(t, matches.Load())
	restarted, _ := f.reopen(t).List(0, 10)
	live, _ := f.store.List(0, 10)
	require.Len(t, restarted, ruleCount)
	assert.Equal(t, live, restarted)
	for _, r := range restarted {
		assert.Equal(t, int64(1+updates), r.Version, "every replacement changed every rule once")
		assert.Equal(t, fmt.Sprint(restarted[0].Parameters["gen"]), fmt.Sprint(r.Parameters["gen"]))
	}
}
