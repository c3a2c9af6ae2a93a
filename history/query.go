package history

import (
	"context"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/eventpipe/eventpipe/rules"
)

// Paging of task lists.
const (
	DefaultTaskPage = 50
	MaxTaskPage     = 500
)

const taskColumns = `task_id, task_name, task_type, rule_id, event_id, event_type, priority, correlation_id,
	status, attempts, created_at, updated_at, started_at, finished_at, duration_ms, output, error, poison_kind`

// Event returns the timeline of the event with id, or ErrNotFound. Its
// tasks are those the history has for the event, even when the event's own
// record was dropped or pruned (then only Tasks is filled).
func (s *Store) Event(ctx context.Context, id string) (*Event, error) {
	ev := &Event{EventID: id}
	var received, handled int64
	var rulesJSON string
	err := s.db.QueryRowContext(ctx, s.q(`SELECT event_type, source, correlation_id, received_at, handled_at,
		deliveries, payload, payload_bytes, error, rules, more_rules FROM events WHERE event_id = ?`), id).Scan(
		&ev.EventType, &ev.Source, &ev.CorrelationID, &received, &handled, &ev.Deliveries, &ev.Payload,
		&ev.PayloadBytes, &ev.Error, &rulesJSON, &ev.MoreRules)
	found := err == nil
	if err != nil && !isNoRows(err) {
		return nil, fmt.Errorf("read event %s: %w", id, err)
	}
	if found {
		ev.ReceivedAt, ev.LastHandledAt = fromMicros(received), fromMicros(handled)
		if err := json.Unmarshal([]byte(rulesJSON), &ev.Rules); err != nil {
			return nil, fmt.Errorf("decode rule outcomes of event %s: %w", id, err)
		}
	}
	if ev.Rules == nil {
		ev.Rules = []rules.Outcome{}
	}
	ev.Tasks, err = s.queryTasks(ctx, `SELECT `+taskColumns+` FROM tasks WHERE event_id = ? ORDER BY created_at, task_id`, id)
	if err != nil {
		return nil, fmt.Errorf("read tasks of event %s: %w", id, err)
	}
	if !found && len(ev.Tasks) == 0 {
		return nil, fmt.Errorf("event %q: %w", id, ErrNotFound)
	}
	if !found {
		ev.EventType, ev.CorrelationID = ev.Tasks[0].EventType, ev.Tasks[0].CorrelationID
	}
	for i := range ev.Tasks {
		if ev.Tasks[i].Retries, err = s.retries(ctx, ev.Tasks[i].TaskID); err != nil {
			return nil, err
		}
	}
	return ev, nil
}

// Task returns the task with id and its retries, or ErrNotFound.
func (s *Store) Task(ctx context.Context, id string) (*Task, error) {
	ts, err := s.queryTasks(ctx, `SELECT `+taskColumns+` FROM tasks WHERE task_id = ?`, id)
	if err != nil {
		return nil, fmt.Errorf("read task %s: %w", id, err)
	}
	if len(ts) == 0 {
		return nil, fmt.Errorf("task %q: %w", id, ErrNotFound)
	}
	t := &ts[0]
	if t.Retries, err = s.retries(ctx, id); err != nil {
		return nil, err
	}
	return t, nil
}

// Tasks returns a page of the tasks q selects, newest first.
func (s *Store) Tasks(ctx context.Context, q TaskQuery) (TaskPage, error) {
	limit := q.Limit
	if limit <= 0 {
		limit = DefaultTaskPage
	}
	limit = min(limit, MaxTaskPage)
	var where []string
	var args []any
	add := func(cond string, arg any) {
		where = append(where, cond)
		args = append(args, arg)
	}
	if q.Status != "" {
		add("status = ?", q.Status)
	}
	if q.RuleID != "" {
		add("rule_id = ?", q.RuleID)
	}
	if q.EventType != "" {
		add("event_type = ?", q.EventType)
	}
	if !q.Since.IsZero() {
		add("created_at >= ?", micros(q.Since))
	}
	if !q.Until.IsZero() {
		add("created_at < ?", micros(q.Until))
	}
	if q.Cursor != "" {
		at, id, err := DecodeCursor(q.Cursor)
		if err != nil {
			return TaskPage{}, err
		}
		where = append(where, "(created_at < ? OR (created_at = ? AND task_id < ?))")
		args = append(args, at, at, id)
	}
	query := `SELECT ` + taskColumns + ` FROM tasks`
	if len(where) > 0 {
		query += " WHERE " + strings.Join(where, " AND ")
	}
	query += " ORDER BY created_at DESC, task_id DESC LIMIT " + strconv.Itoa(limit+1)
	items, err := s.queryTasks(ctx, query, args...)
	if err != nil {
		return TaskPage{}, fmt.Errorf("list tasks: %w", err)
	}
	page := TaskPage{Items: items}
	if len(items) > limit {
		page.Items = items[:limit]
		last := page.Items[limit-1]
		page.Next = encodeCursor(micros(last.CreatedAt), last.TaskID)
	}
	if page.Items == nil {
		page.Items = []Task{}
	}
	return page, nil
}

// ErrBadCursor: a cursor this store did not hand out.
var ErrBadCursor = errors.New("invalid cursor")

func encodeCursor(at int64, id string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(strconv.FormatInt(at, 10) + "|" + id))
}

// DecodeCursor reads a TaskPage.Next back.
func DecodeCursor(c string) (int64, string, error) {
	b, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil {
		return 0, "", fmt.Errorf("%w %q: not base64url", ErrBadCursor, c)
	}
	at, id, ok := strings.Cut(string(b), "|")
	n, err := strconv.ParseInt(at, 10, 64)
	if !ok || err != nil || id == "" {
		return 0, "", fmt.Errorf("%w %q", ErrBadCursor, c)
	}
	return n, id, nil
}

func (s *Store) queryTasks(ctx context.Context, query string, args ...any) ([]Task, error) {
	rows, err := s.db.QueryContext(ctx, s.q(query), args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Task
	for rows.Next() {
		var t Task
		var created, updated, started, finished int64
		if err := rows.Scan(&t.TaskID, &t.TaskName, &t.TaskType, &t.RuleID, &t.EventID, &t.EventType, &t.Priority,
			&t.CorrelationID, &t.Status, &t.Attempts, &created, &updated, &started, &finished, &t.DurationMs,
			&t.Output, &t.Error, &t.PoisonKind); err != nil {
			return nil, err
		}
		t.CreatedAt, t.UpdatedAt = fromMicros(created), fromMicros(updated)
		t.StartedAt, t.FinishedAt = optTime(started), optTime(finished)
		out = append(out, t)
	}
	return out, rows.Err()
}

func optTime(us int64) *time.Time {
	if us == 0 {
		return nil
	}
	t := fromMicros(us)
	return &t
}

func (s *Store) retries(ctx context.Context, taskID string) ([]Attempt, error) {
	rows, err := s.db.QueryContext(ctx, s.q(`SELECT attempt, started_at, finished_at, error FROM task_retries
		WHERE task_id = ? ORDER BY attempt`), taskID)
	if err != nil {
		return nil, fmt.Errorf("read retries of task %s: %w", taskID, err)
	}
	defer rows.Close()
	var out []Attempt
	for rows.Next() {
		var a Attempt
		var started, finished int64
		if err := rows.Scan(&a.Attempt, &started, &finished, &a.Error); err != nil {
			return nil, err
		}
		a.StartedAt, a.FinishedAt = fromMicros(started), fromMicros(finished)
		a.DurationMs = a.FinishedAt.Sub(a.StartedAt).Milliseconds()
		out = append(out, a)
	}
	return out, rows.Err()
}

// scanner is a *sql.Row or *sql.Rows.
type scanner interface{ Scan(dest ...any) error }

var _ scanner = (*sql.Row)(nil)
