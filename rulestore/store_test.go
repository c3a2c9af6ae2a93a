package rulestore_test

import (
	"errors"
	"log/slog"
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

const bigOrder = `{"messageId":"m-1","eventType":"order.created","payload":{"orderId":"o-1","amount":1500}}`

func newRule(id string) rules.Rule {
	return rules.Rule{RuleID: id, EventType: "order.created", TaskType: "log",
		Parameters: map[string]any{"order": "${payload.orderId}"}}
}

func TestOpen_loads_file_and_stamps_rules_without_version(t *testing.T) {
	t.Parallel()
	f := newFixture(t, seedRules, rulestore.Config{})
	fi, err := os.Stat(f.path)
	require.NoError(t, err)

	rs, total := f.store.List(0, 10)

	require.Equal(t, 2, total)
	assert.Equal(t, []string{"high-value", "all-orders"}, ruleIDs(rs))
	for _, r := range rs {
		assert.Equal(t, int64(1), r.Version, r.RuleID)
		assert.Equal(t, fi.ModTime().UTC().Truncate(time.Second), r.UpdatedAt, r.RuleID)
	}
	assert.Equal(t, []string{"high-value", "all-orders"}, matched(t, f.store.Engine(), mustEvent(t, bigOrder)),
		"the engine holds the loaded set")
	assert.Same(t, f.store.Set(), f.store.Engine().Set())
}

func TestOpen_without_file_keeps_rules_in_memory_and_says_so(t *testing.T) {
	t.Parallel()
	logs := &logBuffer{}
	s, err := rulestore.Open(rulestore.Config{Logger: slog.New(slog.NewTextHandler(logs, nil))})
	require.NoError(t, err)

	created, err := s.Create(t.Context(), newRule("r1"), rulestore.Change{})
	require.NoError(t, err)

	assert.Equal(t, int64(1), created.Version)
	assert.Len(t, logs.lines("level=WARN", "in memory only"), 1, "logs: %s", logs)
	require.NoError(t, s.Watch(t.Context()), "Watch returns at once without a file")
}

func TestOpen_rejects_invalid_file_naming_file_line_and_rule(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		content string
		opts    []rules.Option
		want    []string
	}{
		{name: "condition_syntax_error",
			content: "taskTriggerRules:\n  - ruleId: r1\n    eventType: a.b\n    taskType: log\n    condition: \"payload.x >\"\n",
			want:    []string{"rules.yaml:5", `rule "r1"`, "condition"}},
		{name: "unknown_key",
			content: "taskTriggerRules:\n  - ruleId: r1\n    eventType: a.b\n    taskType: log\n    conditon: \"true\"\n",
			want:    []string{"rules.yaml:5", `rule "r1"`, `unknown key "conditon"`}},
		{name: "unknown_task_type_found_by_compile_options_gets_its_line",
			content: "taskTriggerRules:\n  - ruleId: r1\n    eventType: a.b\n    taskType: shel\n",
			opts:    []rules.Option{rules.WithTaskTypes("log", "shell")},
			want:    []string{"rules.yaml:4", `rule "r1"`, "taskType", `unknown executor "shel"`}},
		{name: "yaml_syntax_error",
			content: "taskTriggerRules:\n  - ruleId: [\n",
			want:    []string{"rules.yaml", "line"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(t.TempDir(), "rules.yaml")
			require.NoError(t, os.WriteFile(path, []byte(tt.content), 0o600))

			_, err := rulestore.Open(rulestore.Config{Path: path, Options: tt.opts})

			require.Error(t, err)
			for _, w := range tt.want {
				assert.Contains(t, err.Error(), w)
			}
		})
	}
}

func TestOpen_fails_on_missing_file(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "nope.yaml")

	_, err := rulestore.Open(rulestore.Config{Path: path})

	require.Error(t, err)
	assert.Contains(t, err.Error(), path)
}

func TestStore_every_change_is_in_the_file_and_survives_a_restart(t *testing.T) {
	t.Parallel()
	f := newFixture(t, seedRules, rulestore.Config{})
	ctx := t.Context()
	steps := []struct {
		name        string
		change      func(s *rulestore.Store) error
		wantIDs     []string
		wantVersion map[string]int64
		wantEnabled map[string]bool
	}{
		{name: "create",
			change: func(s *rulestore.Store) error {
				_, err := s.Create(ctx, newRule("new"), rulestore.Change{Actor: "ci"})
				return err
			},
			wantIDs: []string{"high-value", "all-orders", "new"}, wantVersion: map[string]int64{"new": 1, "high-value": 1}},
		{name: "update",
			change: func(s *rulestore.Store) error {
				r := newRule("new")
				r.Condition = "payload.amount > 5"
				_, err := s.Update(ctx, r, rulestore.Change{IfMatch: `"new-v1"`})
				return err
			},
			wantIDs: []string{"high-value", "all-orders", "new"}, wantVersion: map[string]int64{"new": 2}},
		{name: "disable",
			change: func(s *rulestore.Store) error {
				_, err := s.SetEnabled(ctx, "high-value", false, rulestore.Change{})
				return err
			},
			wantIDs: []string{"high-value", "all-orders", "new"}, wantVersion: map[string]int64{"high-value": 2},
			wantEnabled: map[string]bool{"high-value": false}},
		{name: "enable",
			change: func(s *rulestore.Store) error {
				_, err := s.SetEnabled(ctx, "high-value", true, rulestore.Change{})
				return err
			},
			wantIDs: []string{"high-value", "all-orders", "new"}, wantVersion: map[string]int64{"high-value": 3},
			wantEnabled: map[string]bool{"high-value": true}},
		{name: "delete",
			change: func(s *rulestore.Store) error {
				return s.Delete(ctx, "all-orders", rulestore.Change{IfMatch: `"all-orders-v1"`})
			},
			wantIDs: []string{"high-value", "new"}, wantVersion: map[string]int64{"high-value": 3, "new": 2}},
	}
	// The steps build on each other, so they run in order.
	for _, step := range steps {
		require.NoError(t, step.change(f.store), step.name)
		restarted := f.reopen(t)
		for name, s := range map[string]*rulestore.Store{"live": f.store, "restarted": restarted} {
			rs, total := s.List(0, 100)
			assert.Equal(t, len(step.wantIDs), total, "%s: %s", step.name, name)
			assert.Equal(t, step.wantIDs, ruleIDs(rs), "%s: %s", step.name, name)
			for id, v := range step.wantVersion {
				r, ok := s.Get(id)
				require.True(t, ok, "%s: %s: rule %s", step.name, name, id)
				assert.Equal(t, v, r.Version, "%s: %s: version of %s", step.name, name, id)
				assert.False(t, r.UpdatedAt.IsZero())
			}
			for id, want := range step.wantEnabled {
				r, _ := s.Get(id)
				assert.Equal(t, want, r.IsEnabled(), "%s: %s: enabled of %s", step.name, name, id)
			}
		}
		live, _ := f.store.List(0, 100)
		again, _ := restarted.List(0, 100)
		assert.Equal(t, live, again, "%s: a restart sees the same rules, versions and times", step.name)
	}
	assert.Contains(t, f.read(t), "version: 3")
}

func TestStore_disabled_rule_stops_triggering_until_enabled(t *testing.T) {
	t.Parallel()
	f := newFixture(t, seedRules, rulestore.Config{})
	ev := mustEvent(t, bigOrder)

	_, err := f.store.SetEnabled(t.Context(), "high-value", false, rulestore.Change{})
	require.NoError(t, err)
	assert.Equal(t, []string{"all-orders"}, matched(t, f.store.Engine(), ev))

	_, err = f.store.SetEnabled(t.Context(), "high-value", true, rulestore.Change{})
	require.NoError(t, err)
	assert.Equal(t, []string{"high-value", "all-orders"}, matched(t, f.store.Engine(), ev))
}

func TestStore_refuses_changes_with_a_typed_error(t *testing.T) {
	t.Parallel()
	stale := newRule("high-value")
	stale.Version = 7
	badCond := newRule("r-bad")
	badCond.Condition = "payload.amount >"
	tests := []struct {
		name      string
		change    func(s *rulestore.Store) error
		wantIs    error
		wantInErr []string
	}{
		{name: "create_taken_id", wantIs: rulestore.ErrExists,
			change: func(s *rulestore.Store) error {
				_, err := s.Create(t.Context(), newRule("high-value"), rulestore.Change{})
				return err
			}},
		{name: "update_missing", wantIs: rulestore.ErrNotFound,
			change: func(s *rulestore.Store) error {
				_, err := s.Update(t.Context(), newRule("nope"), rulestore.Change{})
				return err
			}},
		{name: "delete_missing", wantIs: rulestore.ErrNotFound,
			change: func(s *rulestore.Store) error { return s.Delete(t.Context(), "nope", rulestore.Change{}) }},
		{name: "enable_missing", wantIs: rulestore.ErrNotFound,
			change: func(s *rulestore.Store) error {
				_, err := s.SetEnabled(t.Context(), "nope", true, rulestore.Change{})
				return err
			}},
		{name: "update_stale_if_match", wantIs: rulestore.ErrPreconditionFailed, wantInErr: []string{`"high-value-v1"`},
			change: func(s *rulestore.Store) error {
				_, err := s.Update(t.Context(), newRule("high-value"), rulestore.Change{IfMatch: `"high-value-v0"`})
				return err
			}},
		{name: "update_weak_etag_never_matches", wantIs: rulestore.ErrPreconditionFailed,
			change: func(s *rulestore.Store) error {
				_, err := s.Update(t.Context(), newRule("high-value"), rulestore.Change{IfMatch: `W/"high-value-v1"`})
				return err
			}},
		{name: "update_stale_body_version", wantIs: rulestore.ErrPreconditionFailed, wantInErr: []string{"version 1, not 7"},
			change: func(s *rulestore.Store) error { _, err := s.Update(t.Context(), stale, rulestore.Change{}); return err }},
		{name: "delete_stale_if_match", wantIs: rulestore.ErrPreconditionFailed,
			change: func(s *rulestore.Store) error {
				return s.Delete(t.Context(), "high-value", rulestore.Change{IfMatch: `"high-value-v2"`})
			}},
		{name: "disable_stale_if_match", wantIs: rulestore.ErrPreconditionFailed,
			change: func(s *rulestore.Store) error {
				_, err := s.SetEnabled(t.Context(), "high-value", false, rulestore.Change{IfMatch: `"other-v1"`})
				return err
			}},
		{name: "create_invalid_condition", wantInErr: []string{`rule "r-bad"`, "condition", "1:"},
			change: func(s *rulestore.Store) error {
				_, err := s.Create(t.Context(), badCond, rulestore.Change{})
				return err
			}},
		{name: "create_without_id", wantInErr: []string{"rule #1", "ruleId", "required"},
			change: func(s *rulestore.Store) error {
				_, err := s.Create(t.Context(), rules.Rule{EventType: "a", TaskType: "log"}, rulestore.Change{})
				return err
			}},
		{name: "update_to_invalid_event_type", wantInErr: []string{`rule "high-value"`, "eventType"},
			change: func(s *rulestore.Store) error {
				r := newRule("high-value")
				r.EventType = "order..created"
				_, err := s.Update(t.Context(), r, rulestore.Change{})
				return err
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t, seedRules, rulestore.Config{})
			before := f.read(t)
			beforeSet := f.store.Set()

			err := tt.change(f.store)

			require.Error(t, err)
			if tt.wantIs != nil {
				assert.ErrorIs(t, err, tt.wantIs)
			} else {
				var invalid *rulestore.InvalidError
				require.ErrorAs(t, err, &invalid)
				var fe *rules.FieldError
				assert.ErrorAs(t, invalid.Err, &fe, "details are rules.FieldErrors")
			}
			for _, w := range tt.wantInErr {
				assert.Contains(t, err.Error(), w)
			}
			assert.Equal(t, before, f.read(t), "the file is untouched")
			assert.Same(t, beforeSet, f.store.Engine().Set(), "the engine's set is untouched")
		})
	}
}

func TestStore_if_match_accepts_star_and_lists(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		ifMatch string
	}{
		{name: "none", ifMatch: ""},
		{name: "star", ifMatch: "*"},
		{name: "exact", ifMatch: `"high-value-v1"`},
		{name: "list_with_current", ifMatch: `"high-value-v0", "high-value-v1"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newFixture(t, seedRules, rulestore.Config{})

			got, err := f.store.SetEnabled(t.Context(), "high-value", false, rulestore.Change{IfMatch: tt.ifMatch})

			require.NoError(t, err)
			assert.Equal(t, `"high-value-v2"`, rulestore.ETag(got))
		})
	}
}

func TestStore_unchanged_update_keeps_version_and_file(t *testing.T) {
	t.Parallel()
	f := newFixture(t, seedRules, rulestore.Config{})
	cur, ok := f.store.Get("high-value")
	require.True(t, ok)
	before := f.read(t)

	got, err := f.store.Update(t.Context(), cur, rulestore.Change{IfMatch: rulestore.ETag(cur)})
	require.NoError(t, err)
	again, err := f.store.SetEnabled(t.Context(), "high-value", true, rulestore.Change{})
	require.NoError(t, err)

	assert.Equal(t, int64(1), got.Version)
	assert.Equal(t, int64(1), again.Version, "enabling an enabled rule changes nothing")
	assert.Equal(t, before, f.read(t))
	assert.Empty(t, f.logs.lines("rule changed"))
}

func TestStore_audit_log_names_actor_action_and_changed_fields(t *testing.T) {
	t.Parallel()
	f := newFixture(t, seedRules, rulestore.Config{})
	ctx := t.Context()
	r := newRule("high-value")
	r.Condition = "payload.amount > 10"
	r.Description = "smaller orders too"

	_, err := f.store.Create(ctx, newRule("n1"), rulestore.Change{Actor: "ci"})
	require.NoError(t, err)
	_, err = f.store.Update(ctx, r, rulestore.Change{Actor: "ops"})
	require.NoError(t, err)
	_, err = f.store.SetEnabled(ctx, "n1", false, rulestore.Change{})
	require.NoError(t, err)
	require.NoError(t, f.store.Delete(ctx, "n1", rulestore.Change{Actor: "ci"}))

	assert.Len(t, f.logs.lines("level=INFO", `msg="rule changed"`, "actor=ci", "action=create", "rule_id=n1", "version=1"), 1)
	assert.Len(t, f.logs.lines("actor=ops", "action=update", "rule_id=high-value", "version=2",
		`changed="[condition parameters description]"`), 1, "parameters lost timeout; logs: %s", f.logs)
	assert.Len(t, f.logs.lines("actor=anonymous", "action=disable", "rule_id=n1", "version=2"), 1)
	assert.Len(t, f.logs.lines("actor=ci", "action=delete", "rule_id=n1", "version=2"), 1)
}

func TestStore_round_trips_tricky_values_through_the_file(t *testing.T) {
	t.Parallel()
	f := newFixture(t, "", rulestore.Config{})
	r := rules.Rule{
		RuleID: "tricky", RuleName: "订单创建", EventType: "order.#", TaskType: "log",
		Condition: `payload.note == "a: b # c" && payload.n in [1, 2]`,
		Parameters: map[string]any{
			"yes": "yes", "octal": "0123", "date": "2025-01-01", "null": "null", "empty": "",
			"multi": "line 1\nline 2", "num": 3600.0, "float": 1.5, "bool": true,
			"list": []any{"a", 1.0, map[string]any{"k": "v"}}, "tmpl": "${payload.coupon:-none}",
		},
		Priority: "high", Enabled: ptr(false), Description: "- not a list", PartitionKey: "${payload.customerId}",
	}

	created, err := f.store.Create(t.Context(), r, rulestore.Change{})
	require.NoError(t, err)
	got, ok := f.reopen(t).Get("tricky")

	require.True(t, ok)
	assert.Equal(t, created, got, "a restart gives back exactly the stored rule, numbers included")
	assert.Equal(t, 3600, got.Parameters["num"], "integral JSON numbers are stored as the YAML loader reads them")
	assert.Equal(t, 1.5, got.Parameters["float"])
	assert.Equal(t, "yes", got.Parameters["yes"])
	assert.Equal(t, "0123", got.Parameters["octal"])
	assert.Equal(t, "2025-01-01", got.Parameters["date"])
	assert.Equal(t, "null", got.Parameters["null"])
	assert.Equal(t, "line 1\nline 2", got.Parameters["multi"])
	assert.Equal(t, r.Condition, got.Condition)
	assert.Equal(t, r.Description, got.Description)
	assert.False(t, got.IsEnabled())
	// Updating with what a restart reads changes nothing: versions are stable.
	same, err := f.store.Update(t.Context(), got, rulestore.Change{})
	require.NoError(t, err)
	assert.Equal(t, created.Version, same.Version)
}

func TestStore_write_keeps_permissions_and_symlink(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	real := filepath.Join(dir, "real.yaml")
	link := filepath.Join(dir, "rules.yaml")
	require.NoError(t, os.WriteFile(real, []byte(seedRules), 0o640))
	require.NoError(t, os.Symlink("real.yaml", link))
	s, err := rulestore.Open(rulestore.Config{Path: link})
	require.NoError(t, err)

	_, err = s.Create(t.Context(), newRule("n1"), rulestore.Change{})
	require.NoError(t, err)

	target, err := os.Readlink(link)
	require.NoError(t, err, "the link is still a link")
	assert.Equal(t, "real.yaml", target)
	fi, err := os.Stat(real)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o640), fi.Mode().Perm())
	data, err := os.ReadFile(real)
	require.NoError(t, err)
	assert.Contains(t, string(data), "n1")
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	assert.Len(t, entries, 2, "no temporary file is left behind")
}

func TestStore_list_pages(t *testing.T) {
	t.Parallel()
	f := newFixture(t, seedRules, rulestore.Config{})
	tests := []struct {
		name          string
		offset, limit int
		want          []string
	}{
		{name: "first", offset: 0, limit: 1, want: []string{"high-value"}},
		{name: "second", offset: 1, limit: 1, want: []string{"all-orders"}},
		{name: "all", offset: 0, limit: 500, want: []string{"high-value", "all-orders"}},
		{name: "past_the_end", offset: 2, limit: 1, want: []string{}},
		{name: "negative_offset", offset: -1, limit: 1, want: []string{}},
		{name: "zero_limit", offset: 0, limit: 0, want: []string{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			rs, total := f.store.List(tt.offset, tt.limit)
			assert.Equal(t, 2, total)
			assert.Equal(t, tt.want, ruleIDs(rs))
		})
	}
}

func TestStore_returns_copies(t *testing.T) {
	t.Parallel()
	f := newFixture(t, seedRules, rulestore.Config{})
	r, _ := f.store.Get("high-value")
	r.Parameters["order"] = "changed"
	rs, _ := f.store.List(0, 1)
	rs[0].Parameters["order"] = "changed"

	again, _ := f.store.Get("high-value")

	assert.Equal(t, "${payload.orderId}", again.Parameters["order"])
}

func TestStore_refuses_changes_while_an_edit_of_the_file_is_not_loaded(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name        string
		edit        string
		wantLoadErr bool
	}{
		{name: "fresh_valid_edit_is_left_to_the_watcher", edit: strings.Replace(seedRules, "> 1000", "> 10", 1)},
		{name: "invalid_edit_is_reported", edit: strings.Replace(seedRules, "> 1000", "> ", 1), wantLoadErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			// A long debounce keeps the valid edit "fresh" for the whole test.
			f := newFixture(t, seedRules, rulestore.Config{Debounce: time.Hour})
			require.NoError(t, os.WriteFile(f.path, []byte(tt.edit), 0o600))
			if tt.wantLoadErr {
				require.Error(t, f.store.Reload(t.Context()))
			}

			_, err := f.store.Create(t.Context(), newRule("n1"), rulestore.Change{})

			var changed *rulestore.FileChangedError
			require.ErrorAs(t, err, &changed)
			assert.Equal(t, f.path, changed.Path)
			assert.Equal(t, tt.wantLoadErr, changed.LoadErr != nil, "%v", err)
			assert.Equal(t, tt.edit, f.read(t), "the edit is not overwritten")
			_, ok := f.store.Get("n1")
			assert.False(t, ok)
		})
	}
}

func TestStore_loads_a_settled_edit_before_a_change_so_it_is_kept(t *testing.T) {
	t.Parallel()
	f := newFixture(t, seedRules, rulestore.Config{Debounce: time.Millisecond})
	edited := strings.Replace(seedRules, "> 1000", "> 10", 1)
	require.NoError(t, os.WriteFile(f.path, []byte(edited), 0o600))
	old := time.Now().Add(-time.Minute)
	require.NoError(t, os.Chtimes(f.path, old, old))

	_, err := f.store.Create(t.Context(), newRule("n1"), rulestore.Change{Actor: "ci"})
	require.NoError(t, err)

	content := f.read(t)
	assert.Contains(t, content, "payload.amount > 10\n", "the hand edit is kept")
	assert.Contains(t, content, "ruleId: n1")
	hv, _ := f.store.Get("high-value")
	assert.Equal(t, int64(2), hv.Version, "the edited rule got a new version")
}

func TestETag_is_rule_id_and_version(t *testing.T) {
	t.Parallel()
	assert.Equal(t, `"a.b-v12"`, rulestore.ETag(rules.Rule{RuleID: "a.b", Version: 12}))
}

func TestInvalidError_unwraps_to_field_errors(t *testing.T) {
	t.Parallel()
	_, err := rules.Compile([]rules.Rule{{RuleID: "x"}})
	require.Error(t, err)
	var fe *rules.FieldError
	assert.True(t, errors.As(&rulestore.InvalidError{Err: err}, &fe))
}

func TestStore_write_of_a_vanished_file_creates_it_owner_only(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "rules.yaml")
	require.NoError(t, os.WriteFile(path, []byte(seedRules), 0o644))
	s, err := rulestore.Open(rulestore.Config{Path: path})
	require.NoError(t, err)
	require.NoError(t, os.Remove(path))

	_, err = s.Create(t.Context(), newRule("n1"), rulestore.Change{})
	require.NoError(t, err)

	fi, err := os.Stat(path)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), "rule parameters may hold credentials")
}
