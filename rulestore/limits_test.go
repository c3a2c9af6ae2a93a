package rulestore_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/eventpipe/eventpipe/rules"
	"github.com/eventpipe/eventpipe/rulestore"
)

// A rules file that becomes empty (a truncated write, an editor crash) is
// refused and the rules stay; `taskTriggerRules: []` removes them all.
func TestReload_refuses_an_empty_file_unless_it_says_no_rules(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		content string
		refused bool
	}{
		{name: "empty", content: "", refused: true},
		{name: "whitespace", content: "\n\n", refused: true},
		{name: "null_list", content: "taskTriggerRules:\n", refused: true},
		{name: "explicit_empty_list", content: "taskTriggerRules: []\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t, seedRules, rulestore.Config{Debounce: time.Millisecond})
			require.NoError(t, os.WriteFile(f.path, []byte(tt.content), 0o600))
			err := f.store.Reload(t.Context())
			if !tt.refused {
				require.NoError(t, err)
				assert.Empty(t, f.store.Set().Rules())
				return
			}
			require.Error(t, err)
			assert.Contains(t, err.Error(), "holds no rules, and 2 are loaded: an empty or truncated file is refused; "+
				"to remove every rule, write `taskTriggerRules: []`")
			assert.Len(t, f.store.Set().Rules(), 2, "the rules stay")
		})
	}
}

// An empty file at start is no loss: there is nothing loaded yet.
func TestOpen_accepts_an_empty_file(t *testing.T) {
	t.Parallel()
	f := newFixture(t, "", rulestore.Config{})
	assert.Empty(t, f.store.Set().Rules())
}

func TestOpen_refuses_a_file_over_max_file_bytes(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "rules.yaml")
	require.NoError(t, os.WriteFile(path, []byte(seedRules), 0o600))
	_, err := rulestore.Open(rulestore.Config{Path: path, MaxFileBytes: 100})
	require.Error(t, err)
	assert.Contains(t, err.Error(), fmt.Sprintf("rules file %s is %d bytes, more than 100 (rules.max_file_bytes)", path, len(seedRules)))
}

func TestOpen_refuses_more_rules_than_max_rules(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "rules.yaml")
	require.NoError(t, os.WriteFile(path, []byte(seedRules), 0o600))
	_, err := rulestore.Open(rulestore.Config{Path: path, Options: []rules.Option{rules.WithBudget(rules.Budget{MaxRules: 1})}})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "2 rules, more than 1 (rules.budget.max_rules)")
}

// Temporary files a crash left while the file was being replaced are
// removed at start; other files are not touched.
func TestOpen_removes_temporary_files_left_by_a_crash(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "rules.yaml")
	require.NoError(t, os.WriteFile(path, []byte(seedRules), 0o600))
	left := []string{filepath.Join(dir, ".rules.yaml.tmp-123"), filepath.Join(dir, ".rules.yaml.tmp-abc")}
	kept := []string{filepath.Join(dir, ".other.yaml.tmp-1"), filepath.Join(dir, "rules.yaml.bak")}
	for _, p := range append(append([]string{}, left...), kept...) {
		require.NoError(t, os.WriteFile(p, []byte("x"), 0o600))
	}
	_, err := rulestore.Open(rulestore.Config{Path: path})
	require.NoError(t, err)
	for _, p := range left {
		assert.NoFileExists(t, p)
	}
	for _, p := range kept {
		assert.FileExists(t, p)
	}
}

// manyRules is a rules file of n rules with conditions.
func manyRules(n int) string {
	var b strings.Builder
	b.WriteString("taskTriggerRules:\n")
	for i := range n {
		fmt.Fprintf(&b, "  - ruleId: r%d\n    eventType: order.t%d\n    condition: payload.amount > %d && payload.currency == \"EUR\"\n    taskType: log\n    parameters: {message: \"order ${payload.orderId}\"}\n", i, i%50, i)
	}
	return b.String()
}

// BenchmarkStore_update_one_rule compares changing one rule of a set of
// 100 with one of 10,000: a change compiles only the changed rule, so the
// ratio is that of writing the file, not of compiling every rule.
func BenchmarkStore_update_one_rule(b *testing.B) {
	for _, n := range []int{100, 10_000} {
		b.Run(fmt.Sprintf("rules=%d", n), func(b *testing.B) {
			path := filepath.Join(b.TempDir(), "rules.yaml")
			require.NoError(b, os.WriteFile(path, []byte(manyRules(n)), 0o600))
			s, err := rulestore.Open(rulestore.Config{Path: path})
			require.NoError(b, err)
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				r, ok := s.Get("r1")
				require.True(b, ok)
				r.Condition = fmt.Sprintf("payload.amount > %d", i)
				r.Version = 0
				_, err := s.Update(b.Context(), r, rulestore.Change{})
				require.NoError(b, err)
			}
		})
	}
}
