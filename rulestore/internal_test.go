package rulestore

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/eventpipe/eventpipe/rules"
)

const internalSeed = `taskTriggerRules:
  - ruleId: "keep"
    eventType: "order.created"
    taskType: "log"
`

// A crash between writing the temporary file and renaming it leaves the
// old file as it was: the rename is the only step that touches it.
func TestWriteFile_failure_before_rename_leaves_file_and_rules_intact(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		change func(s *Store) error
	}{
		{name: "create", change: func(s *Store) error {
			_, err := s.Create(t.Context(), rules.Rule{RuleID: "new", EventType: "a", TaskType: "log"}, Change{})
			return err
		}},
		{name: "disable", change: func(s *Store) error {
			_, err := s.SetEnabled(t.Context(), "keep", false, Change{})
			return err
		}},
		{name: "delete", change: func(s *Store) error { return s.Delete(t.Context(), "keep", Change{}) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			path := filepath.Join(dir, "rules.yaml")
			require.NoError(t, os.WriteFile(path, []byte(internalSeed), 0o600))
			s, err := Open(Config{Path: path})
			require.NoError(t, err)
			crash := errors.New("simulated crash")
			var tmpSeen string
			s.rename = func(oldpath, _ string) error {
				data, err := os.ReadFile(oldpath)
				require.NoError(t, err)
				require.NotEqual(t, internalSeed, string(data), "the new content was fully written first")
				tmpSeen = oldpath
				return crash
			}
			before := s.Set()

			err = tt.change(s)

			require.ErrorIs(t, err, crash)
			data, readErr := os.ReadFile(path)
			require.NoError(t, readErr)
			assert.Equal(t, internalSeed, string(data), "the rules file is intact")
			assert.Equal(t, filepath.Dir(path), filepath.Dir(tmpSeen), "the temporary file is in the same directory")
			assert.NoFileExists(t, tmpSeen, "the temporary file is removed")
			assert.Same(t, before, s.Engine().Set(), "the engine keeps the old set")
			got, ok := s.Get("keep")
			require.True(t, ok)
			assert.True(t, got.IsEnabled())
			assert.Equal(t, int64(1), got.Version)
			_, ok = s.Get("new")
			assert.False(t, ok)

			s.rename = os.Rename
			require.NoError(t, tt.change(s), "the next attempt succeeds")
		})
	}
}

func TestEtagMatches(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		ifMatch string
		want    bool
	}{
		{name: "absent", ifMatch: "", want: true},
		{name: "star", ifMatch: " * ", want: true},
		{name: "equal", ifMatch: `"r-v2"`, want: true},
		{name: "in_list", ifMatch: `"r-v1" ,"r-v2"`, want: true},
		{name: "other_version", ifMatch: `"r-v1"`},
		{name: "unquoted", ifMatch: `r-v2`},
		{name: "weak", ifMatch: `W/"r-v2"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			assert.Equal(t, tt.want, etagMatches(tt.ifMatch, `"r-v2"`))
		})
	}
}

func TestDiff_names_changed_fields(t *testing.T) {
	t.Parallel()
	base := rules.Rule{RuleID: "r", EventType: "a", TaskType: "log", Parameters: map[string]any{"timeout": 60}}
	tests := []struct {
		name string
		edit func(r *rules.Rule)
		want []string
	}{
		{name: "nothing", edit: func(*rules.Rule) {}},
		{name: "float_equals_int_parameter", edit: func(r *rules.Rule) { r.Parameters = map[string]any{"timeout": 60.0} }},
		{name: "explicit_enabled_true_equals_absent", edit: func(r *rules.Rule) { b := true; r.Enabled = &b }},
		{name: "version_and_time_are_not_content", edit: func(r *rules.Rule) { r.Version = 9 }},
		{name: "disabled", edit: func(r *rules.Rule) { b := false; r.Enabled = &b }, want: []string{"enabled"}},
		{name: "two_fields", edit: func(r *rules.Rule) { r.Condition = "true"; r.Parameters = nil },
			want: []string{"condition", "parameters"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			next := cloneRule(base)
			tt.edit(&next)
			assert.Equal(t, tt.want, diff(base, next))
		})
	}
}
