package history

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/eventpipe/eventpipe/permanent"
	"github.com/eventpipe/eventpipe/rules"
)

// Upserts are written so that records of one task may arrive in any order
// (a result before its creation, from another replica) and again (a
// redelivered event or task): creation never resets a status, a retry never
// overrides a final status, created_at keeps the earliest time.
const (
	upsertEvent = `INSERT INTO events (event_id, event_type, source, correlation_id, received_at, handled_at,
		deliveries, payload, payload_bytes, error, rules, more_rules) VALUES (?, ?, ?, ?, ?, ?, 1, ?, ?, ?, ?, ?)
		ON CONFLICT (event_id) DO UPDATE SET handled_at = excluded.handled_at,
		deliveries = events.deliveries + 1, error = excluded.error, rules = excluded.rules,
		more_rules = excluded.more_rules`
	upsertTaskCreated = `INSERT INTO tasks (task_id, task_name, task_type, rule_id, event_id, event_type, priority,
		correlation_id, status, attempts, created_at, updated_at, started_at, finished_at, duration_ms, output,
		error, poison_kind) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'PENDING', 0, ?, ?, 0, 0, 0, '', '', '')
		ON CONFLICT (task_id) DO UPDATE SET event_type = excluded.event_type, priority = excluded.priority,
		created_at = CASE WHEN excluded.created_at < tasks.created_at THEN excluded.created_at ELSE tasks.created_at END`
	upsertTaskFinal = `INSERT INTO tasks (task_id, task_name, task_type, rule_id, event_id, event_type, priority,
		correlation_id, status, attempts, created_at, updated_at, started_at, finished_at, duration_ms, output,
		error, poison_kind) VALUES (?, ?, ?, ?, ?, '', '', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (task_id) DO UPDATE SET status = excluded.status, attempts = excluded.attempts,
		updated_at = excluded.updated_at, started_at = excluded.started_at, finished_at = excluded.finished_at,
		duration_ms = excluded.duration_ms, output = excluded.output, error = excluded.error,
		poison_kind = excluded.poison_kind`
	upsertTaskRetrying = `INSERT INTO tasks (task_id, task_name, task_type, rule_id, event_id, event_type, priority,
		correlation_id, status, attempts, created_at, updated_at, started_at, finished_at, duration_ms, output,
		error, poison_kind) VALUES (?, ?, ?, ?, ?, '', '', ?, 'RETRYING', ?, ?, ?, 0, 0, 0, '', ?, '')
		ON CONFLICT (task_id) DO UPDATE SET
		status = CASE WHEN tasks.status IN ('SUCCEEDED', 'FAILED') THEN tasks.status ELSE 'RETRYING' END,
		attempts = CASE WHEN excluded.attempts > tasks.attempts THEN excluded.attempts ELSE tasks.attempts END,
		error = CASE WHEN tasks.status IN ('SUCCEEDED', 'FAILED') THEN tasks.error ELSE excluded.error END,
		updated_at = excluded.updated_at`
	insertRetry = `INSERT INTO task_retries (task_id, attempt, started_at, finished_at, error)
		VALUES (?, ?, ?, ?, ?) ON CONFLICT (task_id, attempt) DO NOTHING`
)

// record is one entry of the Recorder's queue: an event outcome, a task
// attempt, or a flush marker.
type record struct {
	ev      EventOutcome
	attempt TaskAttempt
	kind    recordKind
	flushed chan struct{}
}

type recordKind uint8

const (
	kindEvent recordKind = iota + 1
	kindAttempt
	kindFlush
)

// statements holds a batch transaction's prepared statements.
type statements struct {
	event, taskCreated, taskFinal, taskRetrying, retry *sql.Stmt
}

func (s *Store) prepare(ctx context.Context, tx *sql.Tx) (*statements, error) {
	var st statements
	for _, p := range []struct {
		dst   **sql.Stmt
		query string
	}{
		{&st.event, upsertEvent}, {&st.taskCreated, upsertTaskCreated}, {&st.taskFinal, upsertTaskFinal},
		{&st.taskRetrying, upsertTaskRetrying}, {&st.retry, insertRetry},
	} {
		stmt, err := tx.PrepareContext(ctx, s.q(p.query))
		if err != nil {
			return nil, err
		}
		*p.dst = stmt
	}
	return &st, nil
}

// write stores a batch of records in one transaction: all or nothing.
func (s *Store) write(ctx context.Context, batch []record) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback() }()
	st, err := s.prepare(ctx, tx)
	if err != nil {
		return fmt.Errorf("prepare: %w", err)
	}
	now := time.Now().UnixMicro()
	for i := range batch {
		r := &batch[i]
		switch r.kind {
		case kindEvent:
			err = s.writeEvent(ctx, st, &r.ev)
		case kindAttempt:
			err = writeAttempt(ctx, st, &r.attempt, now)
		}
		if err != nil {
			return err
		}
	}
	return tx.Commit()
}

func (s *Store) writeEvent(ctx context.Context, st *statements, o *EventOutcome) error {
	ev := o.Event
	outcomes, more := o.Rules.Outcomes(ev, o.Tasks, o.Err, DefaultMaxRulesPerEvent)
	if outcomes == nil {
		outcomes = []rules.Outcome{}
	}
	rulesJSON, err := json.Marshal(outcomes)
	if err != nil {
		return fmt.Errorf("encode rule outcomes of event %s: %w", ev.MessageID, err)
	}
	corr := ev.TraceID()
	if corr == "" {
		corr = ev.MessageID
	}
	errText := ""
	if o.Err != nil {
		errText = o.Err.Error()
	}
	at := micros(o.At)
	if _, err := st.event.ExecContext(ctx, textArgs(ev.MessageID, ev.EventType, ev.Source, corr, at, at,
		excerpt(o.Raw, s.cfg.MaxPayloadBytes), len(o.Raw), errText, string(rulesJSON), more)...); err != nil {
		return fmt.Errorf("event %s: %w", ev.MessageID, err)
	}
	for i := range o.Tasks {
		t := &o.Tasks[i]
		if _, err := st.taskCreated.ExecContext(ctx, textArgs(t.TaskID, t.TaskName, t.TaskType, t.RuleID, t.EventID,
			t.EventType, t.Priority, corr, micros(t.CreatedAt), at)...); err != nil {
			return fmt.Errorf("task %s: %w", t.TaskID, err)
		}
	}
	return nil
}

func writeAttempt(ctx context.Context, st *statements, a *TaskAttempt, now int64) error {
	res := &a.Result
	corr := res.TraceID
	if corr == "" {
		corr = res.EventID
	}
	started, finished := micros(res.StartedAt), micros(res.FinishedAt)
	if !a.Final {
		if _, err := st.retry.ExecContext(ctx, textArgs(res.TaskID, res.Attempts, started, finished, res.Error)...); err != nil {
			return fmt.Errorf("retry of task %s: %w", res.TaskID, err)
		}
		_, err := st.taskRetrying.ExecContext(ctx, textArgs(res.TaskID, res.TaskName, res.TaskType, res.RuleID,
			res.EventID, corr, res.Attempts, started, now, res.Error)...)
		if err != nil {
			return fmt.Errorf("task %s: %w", res.TaskID, err)
		}
		return nil
	}
	_, err := st.taskFinal.ExecContext(ctx, textArgs(res.TaskID, res.TaskName, res.TaskType, res.RuleID, res.EventID,
		corr, string(res.Status), res.Attempts, started, now, started, finished, res.DurationMs, res.Output, res.Error,
		a.PoisonKind)...)
	if err != nil {
		return fmt.Errorf("task %s: %w", res.TaskID, err)
	}
	return nil
}

// PoisonKindOf names why a task's final failure sends it to the poison
// topic, as the poison middleware's reason_kind does.
func PoisonKindOf(err error) string {
	if err == nil {
		return ""
	}
	if permanent.Is(err) {
		return "permanent"
	}
	return "retries_exhausted"
}

// excerpt keeps at most n bytes of b, cut at a rune boundary, as valid text.
func excerpt(b []byte, n int) string {
	if len(b) > n {
		cut := n
		for cut > 0 && !utf8.RuneStart(b[cut]) {
			cut--
		}
		b = b[:cut]
	}
	return strings.ToValidUTF8(string(b), "\uFFFD")
}

// textArgs replaces NUL characters in string arguments: PostgreSQL refuses
// them in TEXT, and task output or event ids (a JSON "\u0000") may hold them.
func textArgs(args ...any) []any {
	for i, a := range args {
		if s, ok := a.(string); ok && strings.IndexByte(s, 0) >= 0 {
			args[i] = strings.ReplaceAll(s, "\x00", "\uFFFD")
		}
	}
	return args
}
