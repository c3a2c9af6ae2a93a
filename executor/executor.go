// Package executor runs tasks: the Executor interface, a Registry that maps
// a task type to its executor, and the built-ins shell, http and log.
package executor

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/eventpipe/eventpipe/permanent"
	"github.com/eventpipe/eventpipe/task"
)

// Executor runs one task and returns its output, bounded in size.
//
// An error marked with permanent.Wrap will fail the same way on every attempt
// and is not retried; any other error is retried. An executor returns an error
// wrapping ctx.Err() when ctx is canceled, so shutdown does not poison the task.
type Executor interface {
	Execute(ctx context.Context, t *task.Task) ([]byte, error)
}

// Func adapts a plain function to the Executor interface.
type Func func(ctx context.Context, t *task.Task) ([]byte, error)

// Execute calls f(ctx, t).
func (f Func) Execute(ctx context.Context, t *task.Task) ([]byte, error) {
	return f(ctx, t)
}

// maxNameLen bounds executor names; they travel in every task as taskType.
const maxNameLen = 64

// Registry maps task types to executors. It is safe for concurrent use.
type Registry struct {
	mu        sync.RWMutex
	executors map[string]Executor
}

// NewRegistry returns an empty Registry.
func NewRegistry() *Registry {
	return &Registry{executors: make(map[string]Executor)}
}

// Register adds e under name. It returns an error if name is empty or
// invalid, if it is taken, or if e is nil. A valid name starts with a letter
// and continues with letters, digits, '_', '-' or '.', at most 64 bytes.
func (r *Registry) Register(name string, e Executor) error {
	if err := validName(name); err != nil {
		return err
	}
	if e == nil {
		return fmt.Errorf("register executor %q: executor is nil", name)
	}
	if f, ok := e.(Func); ok && f == nil {
		return fmt.Errorf("register executor %q: executor is a nil Func", name)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, taken := r.executors[name]; taken {
		return fmt.Errorf("register executor %q: name already registered", name)
	}
	r.executors[name] = e
	return nil
}

// MustRegister is Register for start-up code: a bad or duplicate name is a
// programmer error, so it panics instead of returning the error.
func (r *Registry) MustRegister(name string, e Executor) {
	if err := r.Register(name, e); err != nil {
		panic(err)
	}
}

// Get returns the executor registered under name. An unknown name is a
// permanent error: retrying will not make the executor appear.
func (r *Registry) Get(name string) (Executor, error) {
	r.mu.RLock()
	e, ok := r.executors[name]
	r.mu.RUnlock()
	if !ok {
		return nil, permanent.Wrap(fmt.Errorf("unknown executor %q", name))
	}
	return e, nil
}

// Names returns the registered names, sorted.
func (r *Registry) Names() []string {
	r.mu.RLock()
	names := make([]string, 0, len(r.executors))
	for name := range r.executors {
		names = append(names, name)
	}
	r.mu.RUnlock()
	slices.Sort(names)
	return names
}

func validName(name string) error {
	if name == "" {
		return errors.New("register executor: name is empty")
	}
	if len(name) > maxNameLen {
		return fmt.Errorf("register executor %q: name is longer than %d bytes", name, maxNameLen)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		letter := 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z'
		if i == 0 && !letter {
			return fmt.Errorf("register executor %q: name must start with a letter", name)
		}
		if !letter && !('0' <= c && c <= '9') && c != '_' && c != '-' && c != '.' {
			return fmt.Errorf("register executor %q: invalid character %q; use letters, digits, '_', '-' or '.'", name, c)
		}
	}
	return nil
}

// checkTask guards every built-in against a nil task, which would otherwise panic.
func checkTask(t *task.Task) error {
	if t == nil {
		return permanent.Wrap(errors.New("task is nil"))
	}
	return nil
}

// Task types of the built-in executors.
const (
	TypeLog   = "log"
	TypeShell = "shell"
	TypeHTTP  = "http"
)

// BuiltinTypes returns the task types every pipeline can run without
// executors registered in code.
func BuiltinTypes() []string { return []string{TypeHTTP, TypeLog, TypeShell} }
