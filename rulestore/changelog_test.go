package rulestore_test

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/eventpipe/eventpipe/rules"
	"github.com/eventpipe/eventpipe/rulestore"
)

// memoryLog keeps change records; failing makes every append fail.
type memoryLog struct {
	mu      sync.Mutex
	recs    []rulestore.ChangeRecord
	failing bool
}

func (m *memoryLog) AppendRuleChanges(_ context.Context, recs ...rulestore.ChangeRecord) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.failing {
		return errors.New("history store down")
	}
	m.recs = append(m.recs, recs...)
	return nil
}

func (m *memoryLog) actions() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []string
	for _, r := range m.recs {
		out = append(out, r.Action+"/"+r.RuleID)
	}
	return out
}

func TestStore_every_change_is_a_change_record_with_the_whole_rule(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "rules.yaml")
	require.NoError(t, os.WriteFile(path, []byte(seedRules), 0o600))
	log := &memoryLog{}
	s, err := rulestore.Open(rulestore.Config{Path: path, Changes: log})
	require.NoError(t, err)
	ctx := t.Context()
	ops := rulestore.Change{Actor: "ops"}

	_, err = s.Create(ctx, rules.Rule{RuleID: "new", EventType: "a", TaskType: "log"}, ops)
	require.NoError(t, err)
	cur, _ := s.Get("high-value")
	cur.Condition = "payload.amount > 5000"
	_, err = s.Update(ctx, cur, ops)
	require.NoError(t, err)
	_, err = s.SetEnabled(ctx, "new", false, ops)
	require.NoError(t, err)
	require.NoError(t, s.Delete(ctx, "all-orders", ops))

	assert.Equal(t, []string{"create/new", "update/high-value", "disable/new", "delete/all-orders"}, log.actions())
	upd := log.recs[1]
	assert.Equal(t, "ops", upd.Actor)
	assert.Equal(t, int64(2), upd.Version)
	assert.Equal(t, []string{"condition"}, upd.Changed)
	require.NotNil(t, upd.Rule)
	assert.Equal(t, "payload.amount > 5000", upd.Rule.Condition)
	del := log.recs[3]
	require.NotNil(t, del.Rule, "a delete keeps the rule it deleted")
	assert.Equal(t, "order.*", del.Rule.EventType)

	// A file edit is recorded as a reload by the file.
	require.NoError(t, os.WriteFile(path, []byte(seedRules), 0o600))
	require.NoError(t, s.Reload(ctx))
	var reload []rulestore.ChangeRecord
	for _, r := range log.recs[4:] {
		reload = append(reload, r)
	}
	require.NotEmpty(t, reload)
	for _, r := range reload {
		assert.Equal(t, "reload", r.Via)
		assert.Equal(t, "file", r.Actor)
	}
}

func TestStore_rollback_restores_a_version_as_a_new_one(t *testing.T) {
	t.Parallel()
	log := &memoryLog{}
	s, err := rulestore.Open(rulestore.Config{Changes: log})
	require.NoError(t, err)
	ctx := t.Context()
	v1, err := s.Create(ctx, rules.Rule{RuleID: "r", EventType: "a", TaskType: "log", Condition: "true"}, rulestore.Change{})
	require.NoError(t, err)
	v2 := v1
	v2.Condition, v2.Version = "false", 0
	_, err = s.Update(ctx, v2, rulestore.Change{})
	require.NoError(t, err)

	_, err = s.Rollback(ctx, v1, 2, rulestore.Change{IfMatch: `"r-v1"`})
	assert.ErrorIs(t, err, rulestore.ErrPreconditionFailed, "If-Match applies")
	back, err := s.Rollback(ctx, v1, 2, rulestore.Change{IfMatch: `"r-v2"`, Actor: "ops"})
	require.NoError(t, err)
	assert.Equal(t, int64(3), back.Version)
	assert.Equal(t, "true", back.Condition)
	last := log.recs[len(log.recs)-1]
	assert.Equal(t, "rollback", last.Action)
	assert.Equal(t, int64(1), last.Restores)

	// A deleted rule comes back after the last version its history knows.
	require.NoError(t, s.Delete(ctx, "r", rulestore.Change{}))
	again, err := s.Rollback(ctx, v1, 3, rulestore.Change{})
	require.NoError(t, err)
	assert.Equal(t, int64(4), again.Version)
	_, err = s.Rollback(ctx, rules.Rule{RuleID: "bad", EventType: "a", TaskType: "nope-type", Condition: "1 +"}, 0, rulestore.Change{})
	var invalid *rulestore.InvalidError
	assert.ErrorAs(t, err, &invalid, "a version that no longer compiles is refused")
}

func TestStore_change_log_failure_keeps_the_change_and_logs_it(t *testing.T) {
	t.Parallel()
	logs := &logBuffer{}
	clog := &memoryLog{failing: true}
	s, err := rulestore.Open(rulestore.Config{Changes: clog, Logger: slog.New(slog.NewTextHandler(logs, nil))})
	require.NoError(t, err)
	_, err = s.Create(t.Context(), rules.Rule{RuleID: "r", EventType: "a", TaskType: "log"}, rulestore.Change{})
	require.NoError(t, err)
	_, ok := s.Get("r")
	assert.True(t, ok)
	assert.NotEmpty(t, logs.lines("rule change not recorded", "rule_id=r"))
}
