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
	"github.com/eventpipe/eventpipe/task"
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

// A batch is first folded into one row per event and per task (an event's
// task is usually made and finished within one batch), then written with
// multi-row upserts: a few statements per batch instead of three per
// event, which is most of what the history costs.
//
// The upserts let rows of one task arrive in any order (a result before
// its creation, from another replica) and again (a redelivered event or
// task): a creation never resets a status, a retry never overrides a
// final status, created_at keeps the earliest time.
const (
	eventColumns = `event_id, event_type, source, correlation_id, received_at, handled_at, deliveries, payload,
		payload_bytes, error, rules, more_rules`
	eventConflict = ` ON CONFLICT (event_id) DO UPDATE SET handled_at = excluded.handled_at,
		deliveries = events.deliveries + excluded.deliveries, error = excluded.error, rules = excluded.rules,
		more_rules = excluded.more_rules`
	taskWriteColumns = `task_id, task_name, task_type, rule_id, event_id, event_type, priority, correlation_id,
		status, attempts, created_at, updated_at, started_at, finished_at, duration_ms, output, error, poison_kind`
	taskConflict = ` ON CONFLICT (task_id) DO UPDATE SET
		task_name = CASE WHEN excluded.task_name <> '' THEN excluded.task_name ELSE tasks.task_name END,
		task_type = CASE WHEN excluded.task_type <> '' THEN excluded.task_type ELSE tasks.task_type END,
		rule_id = CASE WHEN excluded.rule_id <> '' THEN excluded.rule_id ELSE tasks.rule_id END,
		event_id = CASE WHEN excluded.event_id <> '' THEN excluded.event_id ELSE tasks.event_id END,
		event_type = CASE WHEN excluded.event_type <> '' THEN excluded.event_type ELSE tasks.event_type END,
		priority = CASE WHEN excluded.priority <> '' THEN excluded.priority ELSE tasks.priority END,
		correlation_id = CASE WHEN excluded.correlation_id <> '' THEN excluded.correlation_id ELSE tasks.correlation_id END,
		created_at = CASE WHEN excluded.created_at <> 0 AND (tasks.created_at = 0 OR excluded.created_at < tasks.created_at)
			THEN excluded.created_at ELSE tasks.created_at END,
		status = CASE WHEN excluded.status IN ('SUCCEEDED', 'FAILED') THEN excluded.status
			WHEN tasks.status IN ('SUCCEEDED', 'FAILED') THEN tasks.status
			WHEN excluded.status = 'RETRYING' THEN excluded.status ELSE tasks.status END,
		attempts = CASE WHEN excluded.status IN ('SUCCEEDED', 'FAILED') THEN excluded.attempts
			WHEN tasks.status NOT IN ('SUCCEEDED', 'FAILED') AND excluded.attempts > tasks.attempts THEN excluded.attempts
			ELSE tasks.attempts END,
		updated_at = excluded.updated_at,
		started_at = CASE WHEN excluded.status IN ('SUCCEEDED', 'FAILED') THEN excluded.started_at ELSE tasks.started_at END,
		finished_at = CASE WHEN excluded.status IN ('SUCCEEDED', 'FAILED') THEN excluded.finished_at ELSE tasks.finished_at END,
		duration_ms = CASE WHEN excluded.status IN ('SUCCEEDED', 'FAILED') THEN excluded.duration_ms ELSE tasks.duration_ms END,
		output = CASE WHEN excluded.status IN ('SUCCEEDED', 'FAILED') THEN excluded.output ELSE tasks.output END,
		poison_kind = CASE WHEN excluded.status IN ('SUCCEEDED', 'FAILED') THEN excluded.poison_kind ELSE tasks.poison_kind END,
		error = CASE WHEN excluded.status IN ('SUCCEEDED', 'FAILED') THEN excluded.error
			WHEN excluded.status = 'RETRYING' AND tasks.status NOT IN ('SUCCEEDED', 'FAILED') THEN excluded.error
			ELSE tasks.error END`
	retryColumns  = `task_id, attempt, started_at, finished_at, error`
	retryConflict = ` ON CONFLICT (task_id, attempt) DO NOTHING`
)

// rowsPerStatement bounds one multi-row insert (18 columns × 64 rows stays
// far below both databases' parameter limits).
const rowsPerStatement = 64

// eventRow, taskRow and retryRow are the columns written, in order.
type eventRow struct {
	id, typ, source, corr string
	received, handled     int64
	deliveries            int
	payload               string
	payloadBytes          int
	errText, rules        string
	moreRules             int
}

type taskRow struct {
	id, name, typ, rule, event, eventType, priority, corr, status string
	attempts                                                      int
	created, updated, started, finished, durationMs               int64
	output, errText, poisonKind                                   string
}

func (t *taskRow) final() bool {
	return t.status == string(task.StatusSucceeded) || t.status == string(task.StatusFailed)
}

type retryRow struct {
	task              string
	attempt           int
	started, finished int64
	errText           string
}

// folded is a batch folded into rows, in first-seen order.
type folded struct {
	events  []*eventRow
	tasks   []*taskRow
	retries []retryRow
	eventAt map[string]*eventRow
	taskAt  map[string]*taskRow
}

// fold turns a batch into rows: one per event (counting deliveries) and
// one per task (creation, retries and result merged).
func (s *Store) fold(batch []record) (*folded, error) {
	f := &folded{eventAt: map[string]*eventRow{}, taskAt: map[string]*taskRow{}}
	now := time.Now().UnixMicro()
	for i := range batch {
		r := &batch[i]
		switch r.kind {
		case kindEvent:
			if err := s.foldEvent(f, &r.ev, now); err != nil {
				return nil, err
			}
		case kindAttempt:
			foldAttempt(f, &r.attempt, now)
		}
	}
	return f, nil
}

func (f *folded) task(id string) *taskRow {
	t, ok := f.taskAt[id]
	if !ok {
		t = &taskRow{id: id}
		f.taskAt[id] = t
		f.tasks = append(f.tasks, t)
	}
	return t
}

func (s *Store) foldEvent(f *folded, o *EventOutcome, now int64) error {
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
	row, seen := f.eventAt[ev.MessageID]
	if !seen {
		row = &eventRow{id: ev.MessageID, received: at}
		f.eventAt[ev.MessageID] = row
		f.events = append(f.events, row)
	}
	row.typ, row.source, row.corr, row.handled = ev.EventType, ev.Source, corr, at
	row.deliveries++
	row.payload, row.payloadBytes = excerpt(o.Raw, s.cfg.MaxPayloadBytes), len(o.Raw)
	row.errText, row.rules, row.moreRules = errText, string(rulesJSON), more
	for i := range o.Tasks {
		tk := &o.Tasks[i]
		t := f.task(tk.TaskID)
		t.name, t.typ, t.rule, t.event = tk.TaskName, tk.TaskType, tk.RuleID, tk.EventID
		t.eventType, t.priority, t.corr = tk.EventType, tk.Priority, corr
		if c := micros(tk.CreatedAt); t.created == 0 || c < t.created {
			t.created = c
		}
		if t.status == "" {
			t.status = StatusPending
		}
		t.updated = now
	}
	return nil
}

func foldAttempt(f *folded, a *TaskAttempt, now int64) {
	res := &a.Result
	t := f.task(res.TaskID)
	if t.name == "" {
		t.name, t.typ, t.rule, t.event = res.TaskName, res.TaskType, res.RuleID, res.EventID
	}
	if t.corr == "" {
		t.corr = res.TraceID
		if t.corr == "" {
			t.corr = res.EventID
		}
	}
	started, finished := micros(res.StartedAt), micros(res.FinishedAt)
	if t.created == 0 {
		t.created = started // until the creation record says better
	}
	t.updated = now
	if !a.Final {
		f.retries = append(f.retries, retryRow{task: res.TaskID, attempt: res.Attempts, started: started,
			finished: finished, errText: res.Error})
		if !t.final() {
			t.status, t.errText = StatusRetrying, res.Error
			t.attempts = max(t.attempts, res.Attempts)
		}
		return
	}
	t.status, t.attempts = string(res.Status), res.Attempts
	t.started, t.finished, t.durationMs = started, finished, res.DurationMs
	t.output, t.errText, t.poisonKind = res.Output, res.Error, a.PoisonKind
}

// write stores a batch of records in one transaction: all or nothing.
func (s *Store) write(ctx context.Context, batch []record) error {
	f, err := s.fold(batch)
	if err != nil {
		return err
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback() }()
	exec := func(table, columns, conflict string, n, width int, args []any) error {
		if n == 0 {
			return nil
		}
		args = textArgs(args...)
		var err error
		if full := s.fullChunk[table]; n == rowsPerStatement && full != nil {
			// A full chunk's statement is prepared once: parsing a
			// 200-row upsert costs as much as running it.
			_, err = tx.StmtContext(ctx, full).ExecContext(ctx, args...)
		} else {
			_, err = tx.ExecContext(ctx, s.q(insertRows(table, columns, conflict, n, width)), args...)
		}
		if err != nil {
			return fmt.Errorf("write %d rows of %s: %w", n, table, err)
		}
		return nil
	}
	for chunk := range chunks(f.events) {
		args := make([]any, 0, len(chunk)*12)
		for _, e := range chunk {
			args = append(args, e.id, e.typ, e.source, e.corr, e.received, e.handled, e.deliveries, e.payload,
				e.payloadBytes, e.errText, e.rules, e.moreRules)
		}
		if err := exec("events", eventColumns, eventConflict, len(chunk), 12, args); err != nil {
			return err
		}
	}
	for chunk := range chunks(f.tasks) {
		args := make([]any, 0, len(chunk)*18)
		for _, t := range chunk {
			args = append(args, t.id, t.name, t.typ, t.rule, t.event, t.eventType, t.priority, t.corr, t.status,
				t.attempts, t.created, t.updated, t.started, t.finished, t.durationMs, t.output, t.errText, t.poisonKind)
		}
		if err := exec("tasks", taskWriteColumns, taskConflict, len(chunk), 18, args); err != nil {
			return err
		}
	}
	for chunk := range chunks(dedupRetries(f.retries)) {
		args := make([]any, 0, len(chunk)*5)
		for _, r := range chunk {
			args = append(args, r.task, r.attempt, r.started, r.finished, r.errText)
		}
		if err := exec("task_retries", retryColumns, retryConflict, len(chunk), 5, args); err != nil {
			return err
		}
	}
	return tx.Commit()
}

// prepareChunks prepares the full-chunk upserts, once per store.
func (s *Store) prepareChunks(ctx context.Context) error {
	s.fullChunk = map[string]*sql.Stmt{}
	for _, t := range []struct {
		table, columns, conflict string
		width                    int
	}{
		{"events", eventColumns, eventConflict, 12},
		{"tasks", taskWriteColumns, taskConflict, 18},
		{"task_retries", retryColumns, retryConflict, 5},
	} {
		stmt, err := s.db.PrepareContext(ctx, s.q(insertRows(t.table, t.columns, t.conflict, rowsPerStatement, t.width)))
		if err != nil {
			return fmt.Errorf("prepare %s upsert: %w", t.table, err)
		}
		s.fullChunk[t.table] = stmt
	}
	return nil
}

// dedupRetries keeps the first row of each (task, attempt): one statement
// may not upsert a row twice.
func dedupRetries(rs []retryRow) []retryRow {
	type key struct {
		task    string
		attempt int
	}
	seen := make(map[key]bool, len(rs))
	out := rs[:0:0]
	for _, r := range rs {
		k := key{r.task, r.attempt}
		if !seen[k] {
			seen[k] = true
			out = append(out, r)
		}
	}
	return out
}

// chunks splits rows into statements of at most rowsPerStatement.
func chunks[T any](rows []T) func(yield func([]T) bool) {
	return func(yield func([]T) bool) {
		for len(rows) > 0 {
			n := min(len(rows), rowsPerStatement)
			if !yield(rows[:n]) {
				return
			}
			rows = rows[n:]
		}
	}
}

// insertRows builds INSERT INTO table (columns) VALUES (?,…),(…)… conflict.
func insertRows(table, columns, conflict string, n, width int) string {
	var b strings.Builder
	b.WriteString("INSERT INTO ")
	b.WriteString(table)
	b.WriteString(" (")
	b.WriteString(columns)
	b.WriteString(") VALUES ")
	row := "(" + strings.Repeat("?, ", width-1) + "?)"
	for i := range n {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(row)
	}
	b.WriteString(conflict)
	return b.String()
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
