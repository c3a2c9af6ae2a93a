package history

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/eventpipe/eventpipe/rules"
	"github.com/eventpipe/eventpipe/rulestore"
)

// AppendRuleChanges stores rule change records in one transaction. It
// implements rulestore.ChangeLog: the rules store calls it for every change.
// A record is stored once per (rule, version, action): replicas that apply
// the same change from a shared rules log, or record it again after a
// restart, add nothing.
func (s *Store) AppendRuleChanges(ctx context.Context, recs ...rulestore.ChangeRecord) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback() }()
	for _, r := range recs {
		if err := insertChange(ctx, s, tx.ExecContext, r); err != nil {
			return err
		}
	}
	return tx.Commit()
}

func insertChange[R interface{ RowsAffected() (int64, error) }](ctx context.Context, s *Store,
	exec func(ctx context.Context, query string, args ...any) (R, error), r rulestore.ChangeRecord) error {
	changed, err := json.Marshal(r.Changed)
	if err != nil {
		return err
	}
	rule := []byte("null")
	if r.Rule != nil {
		if rule, err = json.Marshal(r.Rule); err != nil {
			return fmt.Errorf("encode rule %s v%d: %w", r.RuleID, r.Version, err)
		}
	}
	_, err = exec(ctx, s.q(`INSERT INTO rule_changes (rule_id, version, action, via, actor, at, changed, restores, rule)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (rule_id, version, action) DO NOTHING`), r.RuleID, r.Version, r.Action, r.Via, r.Actor, micros(r.At),
		string(changed), r.Restores, string(rule))
	if err != nil {
		return fmt.Errorf("record change of rule %s v%d: %w", r.RuleID, r.Version, err)
	}
	return nil
}

// RecordLoadedRules records, as action "load", each rule whose version the
// history does not know yet: rules from the file at start-up, so every
// active version can be rolled back to.
func (s *Store) RecordLoadedRules(ctx context.Context, rs []rules.Rule, at func(rules.Rule) rulestore.ChangeRecord) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback() }()
	for _, r := range rs {
		var n int
		if err := tx.QueryRowContext(ctx, s.q(`SELECT COUNT(*) FROM rule_changes WHERE rule_id = ? AND version = ?`),
			r.RuleID, r.Version).Scan(&n); err != nil {
			return err
		}
		if n > 0 {
			continue
		}
		if err := insertChange(ctx, s, tx.ExecContext, at(r)); err != nil {
			return err
		}
	}
	return tx.Commit()
}

// RuleHistory returns every recorded change of the rule, oldest first, or
// ErrNotFound when there is none.
func (s *Store) RuleHistory(ctx context.Context, ruleID string) ([]rulestore.ChangeRecord, error) {
	rows, err := s.db.QueryContext(ctx, s.q(`SELECT rule_id, version, action, via, actor, at, changed, restores, rule
		FROM rule_changes WHERE rule_id = ? ORDER BY id`), ruleID)
	if err != nil {
		return nil, fmt.Errorf("read history of rule %s: %w", ruleID, err)
	}
	defer rows.Close()
	var out []rulestore.ChangeRecord
	for rows.Next() {
		var r rulestore.ChangeRecord
		var at int64
		var changed, rule string
		if err := rows.Scan(&r.RuleID, &r.Version, &r.Action, &r.Via, &r.Actor, &at, &changed, &r.Restores, &rule); err != nil {
			return nil, err
		}
		r.At = fromMicros(at)
		if err := json.Unmarshal([]byte(changed), &r.Changed); err != nil {
			return nil, fmt.Errorf("decode change of rule %s v%d: %w", r.RuleID, r.Version, err)
		}
		if err := json.Unmarshal([]byte(rule), &r.Rule); err != nil {
			return nil, fmt.Errorf("decode rule %s v%d: %w", r.RuleID, r.Version, err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("rule %q: %w", ruleID, ErrNotFound)
	}
	return out, nil
}
