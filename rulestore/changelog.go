package rulestore

import (
	"context"
	"fmt"
	"time"

	"github.com/eventpipe/eventpipe/rules"
)

// ChangeRecord is one change of one rule, the unit of a rule's history: who
// changed it, when, to which version, what changed and the whole rule as it
// became (as it was, for a delete). The store hands one to its ChangeLog
// for every change, from the API, the rules file or code; the history API
// serves them (GET …/{ruleId}/history) and rolls back to them. A rules log
// shared through a broker carries the same records.
type ChangeRecord struct {
	RuleID string `json:"ruleId"`
	// Version is the rule's version after the change (a delete keeps the
	// version it deleted).
	Version int64 `json:"version"`
	// Action is create, update, enable, disable, delete or rollback.
	Action string `json:"action"`
	// Via is the whole-set change that made it: reload (the rules file was
	// edited) or replace (Store.Replace); "" for a single-rule change.
	Via string `json:"via,omitempty"`
	// Actor is who made it: the API token's name, "anonymous", or "file".
	Actor string    `json:"actor"`
	At    time.Time `json:"at"`
	// Changed names the fields an update changed, by their JSON keys.
	Changed []string `json:"changed,omitempty"`
	// Restores is the version a rollback brought back.
	Restores int64 `json:"restores,omitempty"`
	// Rule is the whole rule after the change (before it, for a delete).
	Rule *rules.Rule `json:"rule,omitempty"`
}

// ChangeLog keeps the rule change records. Append is called with the
// store's lock held, right after a change took effect: it should be quick.
// An error is logged and does not undo the change, which is already active
// and saved in the rules file.
type ChangeLog interface {
	AppendRuleChanges(ctx context.Context, recs ...ChangeRecord) error
}

// changeLogTimeout bounds one ChangeLog append.
const changeLogTimeout = 5 * time.Second

// record hands recs to the change log, if any.
func (s *Store) record(ctx context.Context, recs ...ChangeRecord) {
	if s.changes == nil || len(recs) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), changeLogTimeout)
	defer cancel()
	if err := s.changes.AppendRuleChanges(ctx, recs...); err != nil {
		s.log.ErrorContext(ctx, "rule change not recorded in the rule history; the change itself is active",
			"rule_id", recs[0].RuleID, "version", recs[0].Version, "records", len(recs), "error", err)
	}
}

// Rollback makes the rule r.RuleID what r is (a version read from the rule
// history), as a new version, recorded with action rollback and the version
// it restores. A deleted rule is created again, at version latest+1, where
// latest is the last version its history knows. The change must satisfy
// ch.IfMatch like Update; it fails with ErrPreconditionFailed,
// *InvalidError or *FileChangedError.
func (s *Store) Rollback(ctx context.Context, r rules.Rule, latest int64, ch Change) (rules.Rule, error) {
	ch.restores = r.Version
	if _, ok := s.Get(r.RuleID); !ok {
		if ch.IfMatch != "" && ch.IfMatch != "*" {
			return rules.Rule{}, fmt.Errorf("%w: rule %q does not exist, If-Match %s cannot match", ErrPreconditionFailed, r.RuleID, ch.IfMatch)
		}
		if _, err := rules.Compile([]rules.Rule{r}, s.opts...); err != nil {
			return rules.Rule{}, &InvalidError{Err: err}
		}
		return s.create(ctx, r, ch, "rollback", max(latest, r.Version)+1)
	}
	return s.modify(ctx, r.RuleID, ch, "rollback", func(cur rules.Rule) (rules.Rule, error) {
		return canonical(r), nil
	})
}

func ptrTo[T any](v T) *T { return &v }
