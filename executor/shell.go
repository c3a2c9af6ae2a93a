package executor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/eventpipe/eventpipe/permanent"
	"github.com/eventpipe/eventpipe/task"
)

// Shell defaults.
const (
	DefaultShellMaxOutputBytes = 64 << 10
	DefaultShellTimeout        = time.Minute
)

// waitDelay bounds how long Execute waits for the output pipes to close after
// the program exited or was killed: a grandchild that left the process group
// and still holds stdout must not hang the executor.
const waitDelay = 2 * time.Second

// errTailBytes is how much of the end of the output an error message carries.
const errTailBytes = 512

// ShellConfig configures the shell executor.
type ShellConfig struct {
	// AllowedCommands lists the programs tasks may run. An entry is either an
	// absolute path, compared with the task's cleaned path exactly (no
	// symlinks are resolved), or a bare name such as "rsync", resolved with
	// exec.LookPath once, in NewShell; a task may then name the program by
	// the bare name or by the resolved path. Empty: every task is refused.
	AllowedCommands []string
	// MaxOutputBytes bounds the captured stdout+stderr; default 64 KiB.
	MaxOutputBytes int
	// DefaultTimeout applies to tasks without a timeout; default 1 minute.
	DefaultTimeout time.Duration
	// Dir is the working directory of every program; default the process's.
	Dir string
	// AllowShell lets AllowedCommands name a shell or an interpreter that
	// runs code given in its arguments (sh, bash, python, env, ...): with
	// one, a task's args are a program, and event content filling an
	// argument can choose what runs. Default false: NewShell refuses them.
	AllowShell bool
}

// interpreters are the programs that run code given in their arguments
// (sh -c, python -c, env prog, busybox applet), by base name without a
// version suffix.
var interpreters = map[string]bool{
	"sh": true, "bash": true, "dash": true, "zsh": true, "ksh": true, "mksh": true, "csh": true, "tcsh": true,
	"fish": true, "ash": true, "busybox": true, "env": true, "python": true, "perl": true, "ruby": true,
	"node": true, "nodejs": true, "php": true, "lua": true, "tclsh": true, "xargs": true, "sudo": true,
}

// checkAllowed refuses an allowed command that is a directory, or a shell
// or interpreter without allowShell. A symlink is judged by what it
// points to too (/bin/sh is dash on Debian).
func checkAllowed(i int, path string, allowShell bool) error {
	if fi, err := os.Stat(path); err == nil && fi.IsDir() {
		return fmt.Errorf("shell.allowed_commands[%d] %q is a directory, not a program", i, path)
	}
	if allowShell {
		return nil
	}
	names := []string{filepath.Base(path)}
	if resolved, err := filepath.EvalSymlinks(path); err == nil {
		names = append(names, filepath.Base(resolved))
	}
	for _, n := range names {
		if interpreters[strings.TrimRight(n, "0123456789.-")] {
			return fmt.Errorf("shell.allowed_commands[%d] %q is a shell or interpreter (%s): its arguments are a program, "+
				"so event content in an argument could choose what runs; allow it with executors.shell.allow_shell: true", i, path, n)
		}
	}
	return nil
}

type shellExecutor struct {
	cfg ShellConfig
	// byName maps an allowed bare name to the path LookPath found for it.
	byName map[string]string
	// paths holds every allowed absolute path, including resolved bare names.
	paths map[string]bool
}

// NewShell returns the shell executor. It runs parameters.script or
// parameters.command (exactly one) with parameters.args as argv, never
// through a shell, so no argument is ever parsed as shell syntax.
//
// NewShell returns an error naming the entry when an allowed command is
// empty or relative, or a bare name is not found on PATH, and when a limit is
// negative or Dir is not a directory.
func NewShell(cfg ShellConfig) (Executor, error) {
	var errs []error
	if cfg.MaxOutputBytes < 0 {
		errs = append(errs, fmt.Errorf("shell.max_output_bytes must be >= 0, got %d", cfg.MaxOutputBytes))
	}
	if cfg.MaxOutputBytes == 0 {
		cfg.MaxOutputBytes = DefaultShellMaxOutputBytes
	}
	if cfg.DefaultTimeout < 0 {
		errs = append(errs, fmt.Errorf("shell.default_timeout must be >= 0, got %s", cfg.DefaultTimeout))
	}
	if cfg.DefaultTimeout == 0 {
		cfg.DefaultTimeout = DefaultShellTimeout
	}
	if cfg.Dir != "" {
		if fi, err := os.Stat(cfg.Dir); err != nil {
			errs = append(errs, fmt.Errorf("shell.dir: %w", err))
		} else if !fi.IsDir() {
			errs = append(errs, fmt.Errorf("shell.dir %q is not a directory", cfg.Dir))
		}
	}
	e := &shellExecutor{cfg: cfg, byName: map[string]string{}, paths: map[string]bool{}}
	for i, c := range cfg.AllowedCommands {
		switch {
		case c == "":
			errs = append(errs, fmt.Errorf("shell.allowed_commands[%d] is empty", i))
		case filepath.IsAbs(c):
			if err := checkAllowed(i, filepath.Clean(c), cfg.AllowShell); err != nil {
				errs = append(errs, err)
				continue
			}
			e.paths[filepath.Clean(c)] = true
		case strings.ContainsRune(c, '/'):
			errs = append(errs, fmt.Errorf("shell.allowed_commands[%d] %q: want an absolute path or a bare name", i, c))
		default:
			path, err := exec.LookPath(c)
			if err == nil && !filepath.IsAbs(path) {
				// PATH held a relative directory; a program found there would
				// change with the working directory.
				err = errors.New("found only in a relative PATH entry")
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("shell.allowed_commands[%d] %q: %w", i, c, err))
				continue
			}
			if err := checkAllowed(i, filepath.Clean(path), cfg.AllowShell); err != nil {
				errs = append(errs, err)
				continue
			}
			e.byName[c] = filepath.Clean(path)
			e.paths[filepath.Clean(path)] = true
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	// The config is kept by value: copy the slice so later edits by the
	// caller cannot change what is allowed.
	e.cfg.AllowedCommands = slices.Clone(cfg.AllowedCommands)
	return e, nil
}

func (e *shellExecutor) Execute(ctx context.Context, t *task.Task) ([]byte, error) {
	if err := checkTask(t); err != nil {
		return nil, err
	}
	program, err := e.program(t)
	if err != nil {
		return nil, err
	}
	args, err := shellArgs(t)
	if err != nil {
		return nil, err
	}
	timeout, err := taskTimeout(t, e.cfg.DefaultTimeout)
	if err != nil {
		return nil, err
	}

	runCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(runCtx, program, args...)
	cmd.Dir = e.cfg.Dir
	cmd.Env = appendTraceEnv(ctx, taskEnv(t))
	// One writer for both streams: exec then uses a single pipe, so the
	// output keeps its order and Write is never called concurrently.
	out := &boundedBuffer{limit: e.cfg.MaxOutputBytes}
	cmd.Stdout, cmd.Stderr = out, out
	// The program leads a process group of its own, so a timeout kills the
	// children it started too, not just the program.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error {
		err := syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		if errors.Is(err, syscall.ESRCH) {
			return os.ErrProcessDone
		}
		return err
	}
	cmd.WaitDelay = waitDelay

	err = cmd.Run()
	output := out.Bytes()
	if err == nil || errors.Is(err, exec.ErrWaitDelay) {
		// ErrWaitDelay: the program succeeded, but something it left behind
		// held the output open; the task itself is done.
		return output, nil
	}
	if cmd.Process == nil {
		return nil, startError(program, err)
	}
	if ctxErr := ctx.Err(); ctxErr != nil {
		// The caller canceled (shutdown): not the task's fault, so return the
		// context error for the handler to redeliver rather than poison.
		return output, fmt.Errorf("shell task %s: %s: %w", t.TaskID, program, ctxErr)
	}
	if runCtx.Err() != nil {
		return output, fmt.Errorf("shell task %s: %s timed out after %s: %w; output: %s",
			t.TaskID, program, timeout, context.DeadlineExceeded, out.Tail())
	}
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) {
		return output, fmt.Errorf("shell task %s: %s %s; output: %s", t.TaskID, program, exitDescription(exitErr), out.Tail())
	}
	return output, fmt.Errorf("shell task %s: %s: %w", t.TaskID, program, err)
}

// program returns the path to run for t, or a permanent error when the task
// names no program, two programs, or one not on the allowlist.
func (e *shellExecutor) program(t *task.Task) (string, error) {
	script, hasScript, err := stringParam(t, "script")
	if err != nil {
		return "", err
	}
	command, hasCommand, err := stringParam(t, "command")
	if err != nil {
		return "", err
	}
	name, field := script, "script"
	switch {
	case hasScript && hasCommand:
		return "", permanent.Wrap(errors.New("parameters.script and parameters.command are both set; give exactly one"))
	case !hasScript && !hasCommand:
		return "", permanent.Wrap(errors.New("parameters.script or parameters.command is required"))
	case hasCommand:
		name, field = command, "command"
	}
	if name == "" {
		return "", paramError(field, "is empty")
	}
	if !strings.ContainsRune(name, '/') {
		if path, ok := e.byName[name]; ok {
			return path, nil
		}
	} else if filepath.IsAbs(name) && e.paths[filepath.Clean(name)] {
		return filepath.Clean(name), nil
	}
	return "", paramError(field, "program %q is not on the shell allowlist", name)
}

// shellArgs returns parameters.args as argv: each element is one argument,
// whatever characters it holds.
func shellArgs(t *task.Task) ([]string, error) {
	var list []any
	switch v := t.Parameters["args"].(type) {
	case nil:
		return nil, nil
	case []any:
		list = v
	case []string:
		list = make([]any, len(v))
		for i, s := range v {
			list[i] = s
		}
	default:
		return nil, paramError("args", "want a list of strings, numbers or bools, got %s", typeName(v))
	}
	args := make([]string, len(list))
	for i, v := range list {
		s, ok := formatScalar(v)
		if !ok {
			return nil, paramError("args["+strconv.Itoa(i)+"]", "want a string, number or bool, got %s", typeName(v))
		}
		if strings.IndexByte(s, 0) >= 0 {
			// execve cannot pass a NUL byte; fail clearly instead of with EINVAL.
			return nil, paramError("args["+strconv.Itoa(i)+"]", "contains a NUL byte")
		}
		args[i] = s
	}
	return args, nil
}

// taskEnv builds the program's whole environment. It is deliberately not the
// parent's: the pipeline's own environment holds broker URLs and API tokens
// that must not leak into tasks. PATH is kept so scripts can find tools.
func taskEnv(t *task.Task) []string {
	env := make([]string, 0, 6+len(t.Parameters))
	add := func(name, value string) {
		// execve rejects the whole environment over one NUL byte.
		if strings.IndexByte(value, 0) < 0 {
			env = append(env, name+"="+value)
		}
	}
	add("PATH", os.Getenv("PATH"))
	add("EVENTPIPE_TASK_ID", t.TaskID)
	add("EVENTPIPE_TASK_NAME", t.TaskName)
	add("EVENTPIPE_RULE_ID", t.RuleID)
	add("EVENTPIPE_EVENT_ID", t.EventID)
	add("EVENTPIPE_TRACE_ID", t.TraceID)
	// Sorted, so that two names mapping to the same variable (orderId and
	// order_id) resolve the same way every time: the later one wins.
	names := make([]string, 0, len(t.Parameters))
	for name := range t.Parameters {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		envName, ok := paramEnvName(name)
		if !ok {
			continue
		}
		v := t.Parameters[name]
		if v == nil {
			continue
		}
		value, ok := formatScalar(v)
		if !ok {
			b, err := json.Marshal(v)
			if err != nil {
				continue
			}
			value = string(b)
		}
		add(envName, value)
	}
	return env
}

// paramEnvName maps a parameter name to EVENTPIPE_PARAM_<UPPER_SNAKE_NAME>:
// orderId -> ORDER_ID, HTTPCode -> HTTP_CODE, order_id -> ORDER_ID. Names
// other than [A-Za-z_][A-Za-z0-9_]* are not valid variable names: ok is false.
func paramEnvName(name string) (string, bool) {
	if name == "" {
		return "", false
	}
	var b strings.Builder
	b.WriteString("EVENTPIPE_PARAM_")
	for i := 0; i < len(name); i++ {
		c := name[i]
		lower, upper, digit := 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9'
		if !lower && !upper && c != '_' && (!digit || i == 0) {
			return "", false
		}
		if upper && i > 0 {
			prev := name[i-1]
			nextLower := i+1 < len(name) && 'a' <= name[i+1] && name[i+1] <= 'z'
			prevUpper := 'A' <= prev && prev <= 'Z'
			if prev != '_' && (!prevUpper || nextLower) {
				b.WriteByte('_')
			}
		}
		if lower {
			c -= 'a' - 'A'
		}
		b.WriteByte(c)
	}
	return b.String(), true
}

// startError classifies a failure to start the program: a missing or
// non-executable file, or an argument list the kernel refuses, fails the same
// way every time; anything else (out of processes, a file being written)
// may pass on retry.
func startError(program string, err error) error {
	err = fmt.Errorf("start %s: %w", program, err)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission) ||
		errors.Is(err, syscall.E2BIG) || errors.Is(err, syscall.ENOEXEC) {
		return permanent.Wrap(err)
	}
	return err
}

func exitDescription(err *exec.ExitError) string {
	if ws, ok := err.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return "killed by signal " + ws.Signal().String()
	}
	return "exited with code " + strconv.Itoa(err.ExitCode())
}

// boundedBuffer keeps the first limit bytes written to it, counts the rest,
// and remembers the last errTailBytes for error messages, so a program
// printing gigabytes costs a fixed amount of memory.
type boundedBuffer struct {
	limit   int
	head    []byte
	dropped int64
	tail    []byte
}

// Write never fails: an error would stop the copy and leave the program
// blocked on a full pipe.
func (b *boundedBuffer) Write(p []byte) (int, error) {
	n := len(p)
	if room := b.limit - len(b.head); room > 0 {
		take := min(room, len(p))
		b.head = append(b.head, p[:take]...)
		b.dropped += int64(len(p) - take)
	} else {
		b.dropped += int64(len(p))
	}
	if len(p) > errTailBytes {
		p = p[len(p)-errTailBytes:]
	}
	b.tail = append(b.tail, p...)
	if len(b.tail) > errTailBytes {
		b.tail = append(b.tail[:0], b.tail[len(b.tail)-errTailBytes:]...)
	}
	return n, nil
}

// Bytes returns the kept output, with a marker saying how much was cut.
func (b *boundedBuffer) Bytes() []byte {
	if b.dropped == 0 {
		return b.head
	}
	return fmt.Appendf(b.head, "…[truncated %d bytes]", b.dropped)
}

// Tail returns the end of the whole output, trimmed, as valid UTF-8.
func (b *boundedBuffer) Tail() string {
	s := strings.TrimSpace(strings.ToValidUTF8(string(b.tail), "\uFFFD"))
	if s == "" {
		return "(none)"
	}
	return s
}
