package executor_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/eventpipe/eventpipe/executor"
	"github.com/eventpipe/eventpipe/permanent"
	"github.com/eventpipe/eventpipe/task"
)

// newTask returns a task with every id set, as the rules engine makes them.
func newTask(params map[string]any) *task.Task {
	return &task.Task{
		TaskID:     task.ID("evt-1", "rule-1"),
		TaskName:   "test-task",
		TaskType:   "test",
		Priority:   "MEDIUM",
		Parameters: params,
		RuleID:     "rule-1",
		EventID:    "evt-1",
		EventType:  "order.created",
		TraceID:    "trace-1",
	}
}

func echoFunc(out string) executor.Func {
	return func(context.Context, *task.Task) ([]byte, error) { return []byte(out), nil }
}

func TestFunc_calls_the_function(t *testing.T) {
	t.Parallel()
	var got *task.Task
	f := executor.Func(func(_ context.Context, tk *task.Task) ([]byte, error) {
		got = tk
		return []byte("done"), errors.New("boom")
	})
	tk := newTask(nil)

	out, err := f.Execute(t.Context(), tk)

	assert.Equal(t, "done", string(out))
	assert.EqualError(t, err, "boom")
	assert.Same(t, tk, got)
}

func TestRegistry_Register_rejects_bad_names_and_executors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		regName string
		exec    executor.Executor
		wantErr string
	}{
		{name: "empty name", regName: "", exec: echoFunc(""), wantErr: "name is empty"},
		{name: "name starting with a digit", regName: "1shell", exec: echoFunc(""), wantErr: "must start with a letter"},
		{name: "name with a space", regName: "my shell", exec: echoFunc(""), wantErr: `invalid character ' '`},
		{name: "name with a slash", regName: "a/b", exec: echoFunc(""), wantErr: `invalid character '/'`},
		{name: "name too long", regName: strings.Repeat("a", 65), exec: echoFunc(""), wantErr: "longer than 64 bytes"},
		{name: "nil executor", regName: "x", exec: nil, wantErr: `register executor "x": executor is nil`},
		{name: "nil Func", regName: "x", exec: executor.Func(nil), wantErr: "nil Func"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := executor.NewRegistry()

			err := r.Register(tt.regName, tt.exec)

			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.wantErr)
			assert.Empty(t, r.Names())
		})
	}
}

func TestRegistry_Register_accepts_valid_names(t *testing.T) {
	t.Parallel()
	r := executor.NewRegistry()
	for _, name := range []string{"shell", "http", "log", "Email_v2", "send-sms", "acme.billing"} {
		assert.NoError(t, r.Register(name, echoFunc(name)), name)
	}
	assert.Len(t, r.Names(), 6)
}

func TestRegistry_Register_refuses_a_taken_name_and_keeps_the_first(t *testing.T) {
	t.Parallel()
	r := executor.NewRegistry()
	require.NoError(t, r.Register("email", echoFunc("first")))

	err := r.Register("email", echoFunc("second"))

	require.Error(t, err)
	assert.Contains(t, err.Error(), `"email": name already registered`)
	e, err := r.Get("email")
	require.NoError(t, err)
	out, _ := e.Execute(t.Context(), newTask(nil))
	assert.Equal(t, "first", string(out))
}

func TestRegistry_MustRegister_panics_on_duplicate(t *testing.T) {
	t.Parallel()
	r := executor.NewRegistry()
	r.MustRegister("log", echoFunc(""))

	assert.PanicsWithError(t, `register executor "log": name already registered`, func() {
		r.MustRegister("log", echoFunc(""))
	})
}

func TestRegistry_Get_unknown_name_is_a_permanent_error(t *testing.T) {
	t.Parallel()
	r := executor.NewRegistry()
	r.MustRegister("log", echoFunc(""))

	e, err := r.Get("lgo")

	assert.Nil(t, e)
	require.Error(t, err)
	assert.True(t, permanent.Is(err))
	assert.EqualError(t, err, `unknown executor "lgo"`)
}

func TestRegistry_Names_are_sorted(t *testing.T) {
	t.Parallel()
	r := executor.NewRegistry()
	for _, name := range []string{"shell", "email", "log", "http"} {
		r.MustRegister(name, echoFunc(name))
	}

	assert.Equal(t, []string{"email", "http", "log", "shell"}, r.Names())
}

// Run with -race: registering while others look up must be safe.
func TestRegistry_is_safe_for_concurrent_use(t *testing.T) {
	t.Parallel()
	r := executor.NewRegistry()
	r.MustRegister("log", echoFunc("log"))
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			assert.NoError(t, r.Register(fmt.Sprintf("exec%d", i), echoFunc("")))
			for range 100 {
				_, err := r.Get("log")
				assert.NoError(t, err)
				_ = r.Names()
			}
		})
	}
	wg.Wait()

	assert.Len(t, r.Names(), 9)
}
