package executor_test

import (
	"context"
	"crypto/rand"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/eventpipe/eventpipe/executor"
	"github.com/eventpipe/eventpipe/permanent"
)

func newShell(t *testing.T, cfg executor.ShellConfig) executor.Executor {
	t.Helper()
	e, err := executor.NewShell(cfg)
	require.NoError(t, err)
	return e
}

func TestShell_passes_shell_syntax_as_one_literal_argument(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		program string // "script" or "command"
		path    string
		payload string // %s is replaced by a marker file path
	}{
		{name: "semicolon via script", program: "script", path: script("argv.sh"), payload: "; touch %s"},
		{name: "command substitution via script", program: "script", path: script("argv.sh"), payload: "$(touch %s)"},
		{name: "backticks via script", program: "script", path: script("argv.sh"), payload: "`touch %s`"},
		{name: "semicolon via /bin/echo", program: "command", path: "/bin/echo", payload: "; touch %s"},
		{name: "command substitution via /bin/echo", program: "command", path: "/bin/echo", payload: "$(touch %s)"},
		{name: "pipe and redirect via /bin/echo", program: "command", path: "/bin/echo", payload: "x | touch %s > /dev/null"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			marker := filepath.Join(os.TempDir(), "pwned-"+rand.Text())
			arg := strings.ReplaceAll(tt.payload, "%s", marker)
			e := newShell(t, executor.ShellConfig{AllowedCommands: []string{tt.path}})

			out, err := e.Execute(t.Context(), newTask(map[string]any{
				tt.program: tt.path,
				"args":     []any{arg, "second"},
			}))

			require.NoError(t, err)
			if tt.program == "script" {
				assert.Equal(t, "2\n["+arg+"]\n[second]\n", string(out))
			} else {
				assert.Equal(t, arg+" second\n", string(out))
			}
			assert.NoFileExists(t, marker)
		})
	}
}

func TestShell_formats_scalar_arguments(t *testing.T) {
	t.Parallel()
	e := newShell(t, executor.ShellConfig{AllowedCommands: []string{script("argv.sh")}})

	out, err := e.Execute(t.Context(), newTask(map[string]any{
		"script": script("argv.sh"),
		"args":   []any{"--flag=x", 1000.0, 999.99, true, int64(-3), "", "two words"},
	}))

	require.NoError(t, err)
	assert.Equal(t, "7\n[--flag=x]\n[1000]\n[999.99]\n[true]\n[-3]\n[]\n[two words]\n", string(out))
}

// alive reports whether pid is a running process. A zombie counts as gone:
// it has exited and only waits to be reaped by its (possibly absent) reaper.
func alive(pid int) bool {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	// The state follows the command name, which is in parentheses.
	s := string(stat)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || (s[i+2] != 'Z' && s[i+2] != 'X')
}

func readPid(t *testing.T, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	require.NoError(t, err, "pid file %s: %q", path, b)
	return pid
}

func TestShell_timeout_kills_the_whole_process_group(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	childFile, parentFile := filepath.Join(dir, "child"), filepath.Join(dir, "parent")
	e := newShell(t, executor.ShellConfig{
		AllowedCommands: []string{script("spawn.sh")},
		DefaultTimeout:  time.Second,
	})

	start := time.Now()
	_, err := e.Execute(t.Context(), newTask(map[string]any{
		"script": script("spawn.sh"),
		"args":   []any{childFile, parentFile},
	}))
	elapsed := time.Since(start)

	require.Error(t, err)
	assert.False(t, permanent.Is(err), "a timeout is retryable")
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Contains(t, err.Error(), "timed out after 1s")
	// sleep 30 would hold us 30 s if only the script were killed.
	assert.Less(t, elapsed, 10*time.Second)
	child, parent := readPid(t, childFile), readPid(t, parentFile)
	assert.Eventually(t, func() bool { return !alive(child) && !alive(parent) }, 2*time.Second, 20*time.Millisecond,
		"script pid %d or its child pid %d survived the timeout", parent, child)
}

func TestShell_task_timeout_overrides_default(t *testing.T) {
	t.Parallel()
	e := newShell(t, executor.ShellConfig{
		AllowedCommands: []string{script("sleep.sh")},
		DefaultTimeout:  time.Hour,
	})
	tk := newTask(map[string]any{"script": script("sleep.sh")})
	tk.Timeout = 1

	_, err := e.Execute(t.Context(), tk)

	require.Error(t, err)
	assert.Contains(t, err.Error(), "timed out after 1s")
}

func TestShell_caller_cancel_returns_context_error(t *testing.T) {
	t.Parallel()
	e := newShell(t, executor.ShellConfig{AllowedCommands: []string{script("sleep.sh")}})
	ctx, cancel := context.WithCancel(t.Context())
	time.AfterFunc(200*time.Millisecond, cancel)

	_, err := e.Execute(ctx, newTask(map[string]any{"script": script("sleep.sh")}))

	require.Error(t, err)
	assert.ErrorIs(t, err, context.Canceled)
	assert.False(t, permanent.Is(err))
}

func TestShell_grandchild_holding_output_does_not_hang(t *testing.T) {
	t.Parallel()
	pidFile := filepath.Join(t.TempDir(), "grandchild")
	e := newShell(t, executor.ShellConfig{AllowedCommands: []string{script("escape.sh")}})

	start := time.Now()
	out, err := e.Execute(t.Context(), newTask(map[string]any{
		"script": script("escape.sh"),
		"args":   []any{pidFile},
	}))
	elapsed := time.Since(start)

	// The grandchild left our process group on purpose; clean it up.
	if pid := readPid(t, pidFile); pid > 0 {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	require.NoError(t, err)
	assert.Equal(t, "done\n", string(out))
	assert.Less(t, elapsed, 10*time.Second)
}

func TestShell_bounds_output(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		bytes   int
		max     int
		wantOut string
	}{
		{name: "under the limit is kept whole", bytes: 10, max: 100, wantOut: strings.Repeat("x", 10)},
		{name: "exactly the limit is kept whole", bytes: 100, max: 100, wantOut: strings.Repeat("x", 100)},
		{name: "over the limit keeps the head and says how much was cut", bytes: 1_000_000, max: 100,
			wantOut: strings.Repeat("x", 100) + "…[truncated 999900 bytes]"},
		{name: "default limit is 64 KiB", bytes: 100_000, max: 0,
			wantOut: strings.Repeat("x", 65536) + "…[truncated 34464 bytes]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newShell(t, executor.ShellConfig{AllowedCommands: []string{script("bigout.sh")}, MaxOutputBytes: tt.max})

			out, err := e.Execute(t.Context(), newTask(map[string]any{
				"script": script("bigout.sh"),
				"args":   []any{float64(tt.bytes)},
			}))

			require.NoError(t, err)
			assert.Equal(t, tt.wantOut, string(out))
		})
	}
}

func TestShell_environment_is_minimal_and_carries_the_task(t *testing.T) {
	t.Parallel()
	require.Equal(t, "hunter2", os.Getenv(secretEnv), "precondition: the parent has the variable")
	e := newShell(t, executor.ShellConfig{AllowedCommands: []string{"env"}, AllowShell: true})
	tk := newTask(map[string]any{
		"command":     "env",
		"orderId":     "order-12345",
		"amount":      999.99,
		"vip":         true,
		"customer":    map[string]any{"id": "c-1"},
		"HTTPCode":    200,
		"bad-name":    "skipped",
		"nothing":     nil,
		"with\x00nul": "skipped",
		"nulValue":    "a\x00b",
	})

	out, err := e.Execute(t.Context(), tk)

	require.NoError(t, err)
	env := map[string]string{}
	for line := range strings.Lines(string(out)) {
		name, value, _ := strings.Cut(strings.TrimSuffix(line, "\n"), "=")
		env[name] = value
	}
	assert.Equal(t, map[string]string{
		"PATH":                      os.Getenv("PATH"),
		"EVENTPIPE_TASK_ID":         tk.TaskID,
		"EVENTPIPE_TASK_NAME":       "test-task",
		"EVENTPIPE_RULE_ID":         "rule-1",
		"EVENTPIPE_EVENT_ID":        "evt-1",
		"EVENTPIPE_TRACE_ID":        "trace-1",
		"EVENTPIPE_PARAM_COMMAND":   "env",
		"EVENTPIPE_PARAM_ORDER_ID":  "order-12345",
		"EVENTPIPE_PARAM_AMOUNT":    "999.99",
		"EVENTPIPE_PARAM_VIP":       "true",
		"EVENTPIPE_PARAM_CUSTOMER":  `{"id":"c-1"}`,
		"EVENTPIPE_PARAM_HTTP_CODE": "200",
	}, env)
	assert.NotContains(t, string(out), "hunter2")
}

func TestShell_runs_in_configured_dir(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	e := newShell(t, executor.ShellConfig{AllowedCommands: []string{"pwd"}, Dir: dir})

	out, err := e.Execute(t.Context(), newTask(map[string]any{"command": "pwd"}))

	require.NoError(t, err)
	assert.Equal(t, dir+"\n", string(out))
}

func TestShell_refuses_programs_not_on_the_allowlist(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		allowed []string
		params  map[string]any
		wantErr string
	}{
		{name: "empty allowlist refuses everything", allowed: nil,
			params: map[string]any{"command": "/bin/echo"}, wantErr: `parameters.command: program "/bin/echo" is not on the shell allowlist`},
		{name: "other absolute path", allowed: []string{"/bin/echo"},
			params: map[string]any{"command": "/bin/rm"}, wantErr: `program "/bin/rm" is not on the shell allowlist`},
		{name: "bare name not listed", allowed: []string{"/bin/echo"},
			params: map[string]any{"command": "echo"}, wantErr: `program "echo" is not on the shell allowlist`},
		{name: "relative path", allowed: []string{"echo"},
			params: map[string]any{"command": "./echo"}, wantErr: `program "./echo" is not on the shell allowlist`},
		{name: "traversal out of an allowed dir", allowed: []string{script("argv.sh")},
			params: map[string]any{"script": script("../argv.sh")}, wantErr: `parameters.script: program`},
		{name: "same file through a symlink is refused", allowed: []string{"/usr/bin/echo"},
			params: map[string]any{"command": "/usr/bin/../../bin/echo"}, wantErr: "not on the shell allowlist"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newShell(t, executor.ShellConfig{AllowedCommands: tt.allowed})

			out, err := e.Execute(t.Context(), newTask(tt.params))

			require.Error(t, err)
			assert.True(t, permanent.Is(err), "a refused program is permanent: %v", err)
			assert.Contains(t, err.Error(), tt.wantErr)
			assert.Empty(t, out)
		})
	}
}

func TestShell_allows_cleaned_paths_and_resolved_names(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		allowed []string
		command string
	}{
		{name: "exact path", allowed: []string{"/bin/echo"}, command: "/bin/echo"},
		{name: "path that cleans to an allowed one", allowed: []string{"/bin/echo"}, command: "/bin//./echo"},
		{name: "bare name", allowed: []string{"echo"}, command: "echo"},
		{name: "resolved path of an allowed bare name", allowed: []string{"echo"}, command: "/usr/bin/echo"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newShell(t, executor.ShellConfig{AllowedCommands: tt.allowed})

			out, err := e.Execute(t.Context(), newTask(map[string]any{"command": tt.command, "args": []any{"hi"}}))

			require.NoError(t, err)
			assert.Equal(t, "hi\n", string(out))
		})
	}
}

func TestShell_rejects_bad_parameters(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		params  map[string]any
		wantErr string
	}{
		{name: "neither script nor command", params: map[string]any{"args": []any{"x"}},
			wantErr: "parameters.script or parameters.command is required"},
		{name: "both script and command", params: map[string]any{"script": "/bin/echo", "command": "/bin/echo"},
			wantErr: "parameters.script and parameters.command are both set; give exactly one"},
		{name: "command not a string", params: map[string]any{"command": 42.0},
			wantErr: "parameters.command: want a string, got number"},
		{name: "empty command", params: map[string]any{"command": ""},
			wantErr: "parameters.command: is empty"},
		{name: "args not a list", params: map[string]any{"command": "/bin/echo", "args": "a b"},
			wantErr: "parameters.args: want a list of strings, numbers or bools, got string"},
		{name: "object in args names its index", params: map[string]any{"command": "/bin/echo", "args": []any{"a", map[string]any{"x": 1}}},
			wantErr: "parameters.args[1]: want a string, number or bool, got object"},
		{name: "null in args", params: map[string]any{"command": "/bin/echo", "args": []any{nil}},
			wantErr: "parameters.args[0]: want a string, number or bool, got null"},
		{name: "NUL byte in args", params: map[string]any{"command": "/bin/echo", "args": []any{"a\x00b"}},
			wantErr: "parameters.args[0]: contains a NUL byte"},
		{name: "negative timeout", params: map[string]any{"command": "/bin/echo", "timeout": -1.0},
			wantErr: `parameters.timeout: want a positive number of seconds, got number "-1"`},
		{name: "string timeout", params: map[string]any{"command": "/bin/echo", "timeout": "10"},
			wantErr: `parameters.timeout: want a positive number of seconds, got string "10"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newShell(t, executor.ShellConfig{AllowedCommands: []string{"/bin/echo"}})

			_, err := e.Execute(t.Context(), newTask(tt.params))

			require.Error(t, err)
			assert.True(t, permanent.Is(err), "bad parameters are permanent: %v", err)
			assert.Contains(t, err.Error(), tt.wantErr)
		})
	}
}

func TestShell_nil_task_is_permanent(t *testing.T) {
	t.Parallel()
	e := newShell(t, executor.ShellConfig{})

	_, err := e.Execute(t.Context(), nil)

	assert.True(t, permanent.Is(err))
}

func TestShell_nonzero_exit_is_retryable_with_code_and_output_tail(t *testing.T) {
	t.Parallel()
	e := newShell(t, executor.ShellConfig{AllowedCommands: []string{script("fail.sh")}})

	out, err := e.Execute(t.Context(), newTask(map[string]any{"script": script("fail.sh")}))

	require.Error(t, err)
	assert.False(t, permanent.Is(err))
	assert.Contains(t, err.Error(), "exited with code 3")
	assert.Contains(t, err.Error(), "boom: disk full")
	assert.Equal(t, "starting\nboom: disk full\n", string(out))
}

func TestShell_error_tail_is_the_end_of_truncated_output(t *testing.T) {
	t.Parallel()
	const allowed = "/bin/sh"
	e := newShell(t, executor.ShellConfig{AllowedCommands: []string{allowed}, MaxOutputBytes: 10, AllowShell: true})

	// The rule author's own script: a long output whose last line explains the failure.
	_, err := e.Execute(t.Context(), newTask(map[string]any{
		"command": allowed,
		"args":    []any{"-c", `head -c 5000 /dev/zero | tr '\0' y; echo; echo "real reason"; exit 1`},
	}))

	require.Error(t, err)
	assert.True(t, strings.HasSuffix(err.Error(), "real reason"), err.Error())
	assert.Less(t, len(err.Error()), 1000)
}

func TestShell_missing_program_is_permanent(t *testing.T) {
	t.Parallel()
	missing := filepath.Join(t.TempDir(), "deleted.sh")
	e := newShell(t, executor.ShellConfig{AllowedCommands: []string{missing}})

	_, err := e.Execute(t.Context(), newTask(map[string]any{"script": missing}))

	require.Error(t, err)
	assert.True(t, permanent.Is(err))
	assert.True(t, errors.Is(err, os.ErrNotExist), err.Error())
}

func TestNewShell_rejects_bad_config(t *testing.T) {
	t.Parallel()
	file := script("argv.sh")
	tests := []struct {
		name    string
		cfg     executor.ShellConfig
		wantErr string
	}{
		{name: "empty entry", cfg: executor.ShellConfig{AllowedCommands: []string{""}},
			wantErr: "shell.allowed_commands[0] is empty"},
		{name: "relative path entry", cfg: executor.ShellConfig{AllowedCommands: []string{"/bin/echo", "bin/echo"}},
			wantErr: `shell.allowed_commands[1] "bin/echo": want an absolute path or a bare name`},
		{name: "bare name not on PATH", cfg: executor.ShellConfig{AllowedCommands: []string{"no-such-program-xyz"}},
			wantErr: `shell.allowed_commands[0] "no-such-program-xyz"`},
		{name: "negative output limit", cfg: executor.ShellConfig{MaxOutputBytes: -1},
			wantErr: "shell.max_output_bytes must be >= 0, got -1"},
		{name: "negative timeout", cfg: executor.ShellConfig{DefaultTimeout: -time.Second},
			wantErr: "shell.default_timeout must be >= 0, got -1s"},
		{name: "missing dir", cfg: executor.ShellConfig{Dir: "/no/such/dir"},
			wantErr: "shell.dir: stat /no/such/dir"},
		{name: "dir is a file", cfg: executor.ShellConfig{Dir: file},
			wantErr: "is not a directory"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e, err := executor.NewShell(tt.cfg)

			assert.Nil(t, e)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.wantErr)
		})
	}
}

// A shell, an interpreter or a directory on the allowlist is refused at
// start unless allow_shell says so: with sh allowed, an argument filled
// from the event (sh -c ${payload.x}) is a program.
func TestNewShell_refuses_shells_and_directories_on_the_allowlist(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		allowed    string
		allowShell bool
		want       string
	}{
		{name: "bin_sh", allowed: "/bin/sh", want: `shell.allowed_commands[0] "/bin/sh" is a shell or interpreter (sh)`},
		{name: "bare_bash", allowed: "bash", want: "is a shell or interpreter (bash)"},
		{name: "env", allowed: "/usr/bin/env", want: "is a shell or interpreter (env)"},
		{name: "directory", allowed: "/usr/bin", want: `shell.allowed_commands[0] "/usr/bin" is a directory, not a program`},
		{name: "directory_even_with_allow_shell", allowed: "/usr/bin", allowShell: true, want: "is a directory"},
		{name: "sh_with_allow_shell", allowed: "/bin/sh", allowShell: true},
		{name: "echo", allowed: "/bin/echo"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := executor.NewShell(executor.ShellConfig{AllowedCommands: []string{tt.allowed}, AllowShell: tt.allowShell})
			if tt.want == "" {
				require.NoError(t, err)
				return
			}
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.want)
		})
	}
}
