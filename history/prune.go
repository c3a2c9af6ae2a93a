package history

import (
	"context"
	"fmt"
	"time"
)

// PruneResult says what one retention run removed.
type PruneResult struct {
	Events, Tasks int64
}

// Prune removes the history older than cfg.MaxAge (by when events were
// received and tasks made) and, past cfg.MaxEvents events, the oldest
// events with their tasks. Rule changes and poison messages are kept: the
// former are the audit trail, the latter are work waiting to be replayed.
func (s *Store) Prune(ctx context.Context, now time.Time) (PruneResult, error) {
	cutoff := now.Add(-s.cfg.MaxAge).UnixMicro()
	// The received_at of the newest event beyond the size limit, if any.
	var bySize int64
	err := s.db.QueryRowContext(ctx, s.q(`SELECT received_at FROM events ORDER BY received_at DESC LIMIT 1 OFFSET ?`),
		s.cfg.MaxEvents).Scan(&bySize)
	switch {
	case isNoRows(err):
	case err != nil:
		return PruneResult{}, fmt.Errorf("find size cutoff: %w", err)
	case bySize+1 > cutoff:
		cutoff = bySize + 1
	}
	var res PruneResult
	var n int64
	if n, err = s.exec(ctx, `DELETE FROM events WHERE received_at < ?`, cutoff); err != nil {
		return res, fmt.Errorf("prune events: %w", err)
	}
	res.Events = n
	if n, err = s.exec(ctx, `DELETE FROM tasks WHERE created_at < ?`, cutoff); err != nil {
		return res, fmt.Errorf("prune tasks: %w", err)
	}
	res.Tasks = n
	if _, err = s.exec(ctx, `DELETE FROM task_retries WHERE finished_at < ?`, cutoff); err != nil {
		return res, fmt.Errorf("prune task retries: %w", err)
	}
	return res, nil
}

func (s *Store) exec(ctx context.Context, query string, args ...any) (int64, error) {
	r, err := s.db.ExecContext(ctx, s.q(query), args...)
	if err != nil {
		return 0, err
	}
	return r.RowsAffected()
}
