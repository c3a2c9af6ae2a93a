package history

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/eventpipe/eventpipe/permanent"
	"github.com/eventpipe/eventpipe/rules"
	"github.com/eventpipe/eventpipe/rulestore"
	"github.com/eventpipe/eventpipe/task"
)

const orderEvent = `{"messageId":"msg-1","eventType":"order.created","source":"shop",
	"payload":{"orderId":"o-1","amount":1200},"metadata":{"traceId":"trace-1"}}`

// quickStartRules are three rules of order.created: one whose task fails,
// one whose condition is false, one disabled.
func quickStartRules(t *testing.T) *rules.Set {
	return mustSet(t,
		rules.Rule{RuleID: "high-value", EventType: "order.created", Condition: "payload.amount > 1000",
			TaskType: "shell", Parameters: map[string]any{"command": "/bin/false"}, Priority: "HIGH", Version: 3},
		rules.Rule{RuleID: "huge", EventType: "order.created", Condition: "payload.amount > 100000", TaskType: "log"},
		rules.Rule{RuleID: "off", EventType: "order.created", TaskType: "log", Enabled: ptr(false)},
		rules.Rule{RuleID: "other-type", EventType: "payment.done", TaskType: "log"},
	)
}

func TestStore_event_timeline_shows_rules_tasks_and_attempts(t *testing.T) {
	t.Parallel()
	dialects(t, Config{}, func(t *testing.T, s *Store) {
		set := quickStartRules(t)
		ev := mustEvent(t, orderEvent)
		tasks, err := set.Match(ev)
		require.NoError(t, err)
		require.Len(t, tasks, 1)
		tk := tasks[0]
		at := time.Now().UTC()
		fail := permanent.Wrap(fmt.Errorf("command /bin/false is not on the allowlist"))
		res := task.Result{TaskID: tk.TaskID, TaskName: tk.TaskName, TaskType: tk.TaskType, RuleID: tk.RuleID,
			EventID: tk.EventID, TraceID: tk.TraceID, Status: task.StatusFailed, Attempts: 2,
			StartedAt: at.Add(time.Second), FinishedAt: at.Add(2 * time.Second), DurationMs: 1000, Error: fail.Error()}
		retry := res
		retry.Attempts, retry.Error = 1, "connection reset"
		require.NoError(t, s.write(t.Context(), []record{
			{kind: kindEvent, ev: EventOutcome{Event: ev, Raw: []byte(orderEvent), Rules: set, Tasks: tasks, At: at}},
			{kind: kindAttempt, attempt: TaskAttempt{Result: retry}},
			{kind: kindAttempt, attempt: TaskAttempt{Result: res, Final: true, PoisonKind: PoisonKindOf(fail)}},
		}))

		got, err := s.Event(t.Context(), "msg-1")
		require.NoError(t, err)
		assert.Equal(t, "order.created", got.EventType)
		assert.Equal(t, "trace-1", got.CorrelationID)
		assert.Equal(t, 1, got.Deliveries)
		assert.JSONEq(t, orderEvent, got.Payload)
		assert.Equal(t, []rules.Outcome{
			{RuleID: "high-value", Version: 3, Enabled: true, ConditionResult: ptr(true), TaskID: tk.TaskID},
			{RuleID: "huge", Enabled: true, ConditionResult: ptr(false)},
			{RuleID: "off", Enabled: false},
		}, got.Rules, "rules of other types are left out")
		require.Len(t, got.Tasks, 1)
		gt := got.Tasks[0]
		assert.Equal(t, "FAILED", gt.Status)
		assert.Equal(t, "shell", gt.TaskType)
		assert.Equal(t, "HIGH", gt.Priority, "the priority comes from the creation record")
		assert.Equal(t, 2, gt.Attempts)
		assert.Equal(t, "permanent", gt.PoisonKind)
		assert.Contains(t, gt.Error, "not on the allowlist")
		require.Len(t, gt.Retries, 1)
		assert.Equal(t, "connection reset", gt.Retries[0].Error)

		_, err = s.Event(t.Context(), "msg-unknown")
		assert.ErrorIs(t, err, ErrNotFound)
	})
}

func TestStore_task_records_in_any_order_and_twice(t *testing.T) {
	t.Parallel()
	dialects(t, Config{}, func(t *testing.T, s *Store) {
		set := quickStartRules(t)
		ev := mustEvent(t, orderEvent)
		tasks, err := set.Match(ev)
		require.NoError(t, err)
		tk := tasks[0]
		now := time.Now().UTC()
		done := task.Result{TaskID: tk.TaskID, TaskName: tk.TaskName, TaskType: tk.TaskType, RuleID: tk.RuleID,
			EventID: tk.EventID, Status: task.StatusSucceeded, Attempts: 1, StartedAt: now, FinishedAt: now, Output: "ok"}
		late := done
		late.Attempts, late.Status, late.Error = 1, task.StatusFailed, "late retry"
		created := EventOutcome{Event: ev, Raw: []byte(orderEvent), Rules: set, Tasks: tasks, At: now}
		// The result first (another replica), then the event twice (a
		// redelivery), then a stale retry record.
		require.NoError(t, s.write(t.Context(), []record{{kind: kindAttempt, attempt: TaskAttempt{Result: done, Final: true}}}))
		require.NoError(t, s.write(t.Context(), []record{{kind: kindEvent, ev: created}, {kind: kindEvent, ev: created}}))
		require.NoError(t, s.write(t.Context(), []record{{kind: kindAttempt, attempt: TaskAttempt{Result: late}}}))

		got, err := s.Task(t.Context(), tk.TaskID)
		require.NoError(t, err)
		assert.Equal(t, "SUCCEEDED", got.Status)
		assert.Equal(t, "ok", got.Output)
		assert.Equal(t, "order.created", got.EventType)
		assert.Empty(t, got.Error)
		evGot, err := s.Event(t.Context(), "msg-1")
		require.NoError(t, err)
		assert.Equal(t, 2, evGot.Deliveries)
	})
}

func TestStore_tasks_filter_and_page_with_a_cursor(t *testing.T) {
	t.Parallel()
	dialects(t, Config{}, func(t *testing.T, s *Store) {
		base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
		var batch []record
		for i := range 7 {
			status := task.StatusSucceeded
			rule := "r-ok"
			if i%2 == 0 {
				status, rule = task.StatusFailed, "r-bad"
			}
			at := base.Add(time.Duration(i) * time.Minute)
			batch = append(batch, record{kind: kindAttempt, attempt: TaskAttempt{Final: true, Result: task.Result{
				TaskID: fmt.Sprintf("t-%d", i), RuleID: rule, EventID: fmt.Sprintf("e-%d", i), TaskType: "log",
				Status: status, Attempts: 1, StartedAt: at, FinishedAt: at}}})
		}
		require.NoError(t, s.write(t.Context(), batch))

		tests := []struct {
			name  string
			query TaskQuery
			want  []string
		}{
			{name: "all newest first", query: TaskQuery{}, want: []string{"t-6", "t-5", "t-4", "t-3", "t-2", "t-1", "t-0"}},
			{name: "failed", query: TaskQuery{Status: "FAILED"}, want: []string{"t-6", "t-4", "t-2", "t-0"}},
			{name: "rule", query: TaskQuery{RuleID: "r-ok"}, want: []string{"t-5", "t-3", "t-1"}},
			{name: "since until", query: TaskQuery{Since: base.Add(2 * time.Minute), Until: base.Add(4 * time.Minute)}, want: []string{"t-3", "t-2"}},
			{name: "failed of one rule since", query: TaskQuery{Status: "FAILED", RuleID: "r-bad", Since: base.Add(3 * time.Minute)}, want: []string{"t-6", "t-4"}},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				var got []string
				q := tt.query
				q.Limit = 2
				for pages := 0; ; pages++ {
					require.Less(t, pages, 10)
					page, err := s.Tasks(t.Context(), q)
					require.NoError(t, err)
					for _, it := range page.Items {
						got = append(got, it.TaskID)
					}
					if page.Next == "" {
						break
					}
					q.Cursor = page.Next
				}
				assert.Equal(t, tt.want, got)
			})
		}
		_, err := s.Tasks(t.Context(), TaskQuery{Cursor: "not a cursor"})
		assert.ErrorIs(t, err, ErrBadCursor)
	})
}

func TestStore_prune_by_age_and_by_count(t *testing.T) {
	t.Parallel()
	dialects(t, Config{MaxAge: time.Hour, MaxEvents: 3}, func(t *testing.T, s *Store) {
		set := quickStartRules(t)
		now := time.Now().UTC()
		var batch []record
		for i := range 6 {
			ev := mustEvent(t, fmt.Sprintf(`{"messageId":"m-%d","eventType":"order.created","payload":{"amount":5000}}`, i))
			tasks, err := set.Match(ev)
			require.NoError(t, err)
			at := now.Add(-time.Duration(5-i) * time.Minute) // m-5 newest
			if i == 0 {
				at = now.Add(-2 * time.Hour) // past max_age
			}
			for j := range tasks {
				tasks[j].CreatedAt = at
			}
			batch = append(batch, record{kind: kindEvent, ev: EventOutcome{Event: ev, Rules: set, Tasks: tasks, At: at}})
		}
		require.NoError(t, s.write(t.Context(), batch))

		res, err := s.Prune(t.Context(), now)
		require.NoError(t, err)
		assert.Equal(t, PruneResult{Events: 3, Tasks: 3}, res)
		for i := range 6 {
			_, err := s.Event(t.Context(), fmt.Sprintf("m-%d", i))
			if i < 3 {
				assert.ErrorIs(t, err, ErrNotFound, "m-%d", i)
			} else {
				assert.NoError(t, err, "m-%d", i)
			}
		}
	})
}

func TestStore_rule_history_in_order_with_whole_rules(t *testing.T) {
	t.Parallel()
	dialects(t, Config{}, func(t *testing.T, s *Store) {
		r1 := rules.Rule{RuleID: "r", EventType: "a", TaskType: "log", Version: 1}
		r2 := r1
		r2.Condition, r2.Version = "payload.x > 1", 2
		at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
		require.NoError(t, s.RecordLoadedRules(t.Context(), []rules.Rule{r1}, func(r rules.Rule) rulestore.ChangeRecord {
			return rulestore.ChangeRecord{RuleID: r.RuleID, Version: r.Version, Action: "load", Actor: "file", At: at, Rule: &r}
		}))
		update := rulestore.ChangeRecord{RuleID: "r", Version: 2, Action: "update", Actor: "ops", At: at, Changed: []string{"condition"}, Rule: &r2}
		require.NoError(t, s.AppendRuleChanges(t.Context(), update,
			rulestore.ChangeRecord{RuleID: "r", Version: 2, Action: "delete", Actor: "ops", At: at, Rule: &r2}))
		// The same change applied again (another replica, a replayed rules log) adds nothing.
		require.NoError(t, s.AppendRuleChanges(t.Context(), update))
		// Recording the loaded rules again adds nothing for versions it knows.
		require.NoError(t, s.RecordLoadedRules(t.Context(), []rules.Rule{r1}, func(r rules.Rule) rulestore.ChangeRecord {
			return rulestore.ChangeRecord{RuleID: r.RuleID, Version: r.Version, Action: "load", At: at, Rule: &r}
		}))

		h, err := s.RuleHistory(t.Context(), "r")
		require.NoError(t, err)
		require.Len(t, h, 3)
		assert.Equal(t, []string{"load", "update", "delete"}, []string{h[0].Action, h[1].Action, h[2].Action})
		assert.Equal(t, "payload.x > 1", h[1].Rule.Condition)
		assert.Equal(t, []string{"condition"}, h[1].Changed)
		assert.Equal(t, at, h[1].At)
		_, err = s.RuleHistory(t.Context(), "nope")
		assert.ErrorIs(t, err, ErrNotFound)
	})
}

func TestStore_poison_messages_kept_listed_and_removed(t *testing.T) {
	t.Parallel()
	dialects(t, Config{}, func(t *testing.T, s *Store) {
		for i := range 3 {
			require.NoError(t, s.AddPoison(t.Context(), "schedule-tasks.dlq", fmt.Sprintf("u-%d", i),
				[]byte{'{', byte('0' + i), 0xff, '}'}, map[string]string{"reason_poisoned": "boom"}))
		}
		msgs, waiting, err := s.ListPoison(t.Context(), "schedule-tasks.dlq", 2)
		require.NoError(t, err)
		assert.Equal(t, 3, waiting)
		require.Len(t, msgs, 2)
		assert.Equal(t, "u-0", msgs[0].UUID)
		assert.Equal(t, []byte{'{', '0', 0xff, '}'}, msgs[0].Payload, "payload bytes kept as they were")
		assert.Equal(t, "boom", msgs[0].Metadata["reason_poisoned"])
		require.NoError(t, s.DeletePoison(t.Context(), msgs[0].ID))
		_, waiting, err = s.ListPoison(t.Context(), "schedule-tasks.dlq", 0)
		require.NoError(t, err)
		assert.Equal(t, 2, waiting)
		_, waiting, err = s.ListPoison(t.Context(), "business-events.dlq", 0)
		require.NoError(t, err)
		assert.Zero(t, waiting)
	})
}

func TestOpen_migrates_once_and_reopens(t *testing.T) {
	t.Parallel()
	dir := t.TempDir() + "/nested/dir"
	cfg := Config{Store: StoreSQLite, Path: dir + "/h.db"}
	for range 2 {
		s, err := Open(t.Context(), cfg)
		require.NoError(t, err)
		v, err := s.SchemaVersion(t.Context())
		require.NoError(t, err)
		assert.Equal(t, migrations[len(migrations)-1].version, v)
		require.NoError(t, s.Close())
	}
}

func TestConfig_Validate_names_field_and_value(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{name: "store", cfg: Config{Store: "mysql"}, want: `history.store must be one of none, sqlite, postgres, got "mysql"`},
		{name: "postgres url", cfg: Config{Store: StorePostgres, PostgresURL: "http://u:secret@h/db"}, want: `history.postgres_url must be postgres://user:pass@host:port/db, got "http://u:xxxxx@h/db"`},
		{name: "sqlite path", cfg: Config{Store: StoreSQLite}, want: "needs a data directory"},
		{name: "queue", cfg: Config{QueueSize: -1}, want: "history.queue_size must be >= 1, got -1"},
		{name: "max age", cfg: Config{MaxAge: -time.Second}, want: "history.retention.max_age must be > 0, got -1s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := tt.cfg.Validate()
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.want)
		})
	}
	assert.NoError(t, Config{}.Validate())
}
