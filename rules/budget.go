package rules

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"time"

	"github.com/eventpipe/eventpipe/event"
)

// Defaults of Budget; see its fields.
const (
	DefaultConditionMemory   = 64 << 20
	DefaultConditionTime     = time.Second
	DefaultEventTime         = 5 * time.Second
	DefaultMaxRegexpProgram  = 1000
	DefaultMaxRules          = 20_000
	defaultGuardAboveTime    = 50 * time.Millisecond
	defaultGuardAboveMemory  = 16 << 20
	maxConcurrentEvaluations = 1024
)

// Budget bounds what conditions may cost, checked where a rule is accepted
// (rules file, rules API, dry run) and again per event at run time. It is
// the one place that decides whether a condition is acceptable; the zero
// value takes the defaults.
type Budget struct {
	// MaxEventBytes is the largest event a condition can see
	// (event.max_bytes). Estimates assume every field can be this large.
	// Default event.DefaultMaxBytes.
	MaxEventBytes int
	// ConditionMemory bounds the bytes one condition may allocate on an
	// event of MaxEventBytes, by the estimate at load. Default 64 MiB.
	ConditionMemory int64
	// ConditionTime bounds the CPU time one condition may take on an
	// event of MaxEventBytes, by the estimate at load. Default 1s.
	ConditionTime time.Duration
	// EventTime bounds the time all conditions of one event may take: the
	// estimate at the event's size is checked before evaluating and the
	// time spent after each rule. An event over it is poisoned with a
	// budget reason. Default 5s.
	EventTime time.Duration
	// MaxRegexpProgram bounds the instructions of a `matches` pattern:
	// RE2 is linear in the input, times the program size. Default 1000.
	MaxRegexpProgram int
	// MaxRules bounds the rules of one set: each costs memory and load
	// time. Default 20000.
	MaxRules int
	// ConcurrentEvaluations bounds the events whose conditions run at once
	// in the process, dry runs included. Default GOMAXPROCS: evaluation is
	// CPU-bound, more only adds memory.
	ConcurrentEvaluations int
}

// SetDefaults fills zero fields with their defaults.
func (b *Budget) SetDefaults() {
	if b.MaxEventBytes <= 0 {
		b.MaxEventBytes = event.DefaultMaxBytes
	}
	if b.ConditionMemory == 0 {
		b.ConditionMemory = DefaultConditionMemory
	}
	if b.ConditionTime == 0 {
		b.ConditionTime = DefaultConditionTime
	}
	if b.EventTime == 0 {
		b.EventTime = DefaultEventTime
	}
	if b.MaxRegexpProgram == 0 {
		b.MaxRegexpProgram = DefaultMaxRegexpProgram
	}
	if b.MaxRules == 0 {
		b.MaxRules = DefaultMaxRules
	}
	if b.ConcurrentEvaluations == 0 {
		b.ConcurrentEvaluations = runtime.GOMAXPROCS(0)
	}
}

// Validate reports every out-of-range field, named by its YAML key under
// rules.budget.
func (b *Budget) Validate() error {
	var errs []error
	if b.ConditionMemory < 1<<20 {
		errs = append(errs, fmt.Errorf("rules.budget.condition_memory must be at least 1 MiB (1048576), got %d", b.ConditionMemory))
	}
	if b.ConditionTime < time.Millisecond {
		errs = append(errs, fmt.Errorf("rules.budget.condition_time must be at least 1ms, got %s", b.ConditionTime))
	}
	if b.EventTime < b.ConditionTime {
		errs = append(errs, fmt.Errorf("rules.budget.event_time must be at least rules.budget.condition_time (%s), got %s", b.ConditionTime, b.EventTime))
	}
	if b.MaxRegexpProgram < 10 {
		errs = append(errs, fmt.Errorf("rules.budget.max_regexp_program must be at least 10, got %d", b.MaxRegexpProgram))
	}
	if b.MaxRules < 1 {
		errs = append(errs, fmt.Errorf("rules.budget.max_rules must be at least 1, got %d", b.MaxRules))
	}
	if b.ConcurrentEvaluations < 1 || b.ConcurrentEvaluations > maxConcurrentEvaluations {
		errs = append(errs, fmt.Errorf("rules.budget.concurrent_evaluations must be 1 to %d, got %d", maxConcurrentEvaluations, b.ConcurrentEvaluations))
	}
	return errors.Join(errs...)
}

// Cost is an upper bound on what evaluating a condition costs.
type Cost struct {
	// Memory is the bytes allocated in all (not only at peak).
	Memory int64
	// Time is CPU time, from per-byte costs measured on a shared 2-core
	// machine with margin (see estimate.go).
	Time time.Duration
}

func (c Cost) add(o Cost) Cost { return Cost{Memory: c.Memory + o.Memory, Time: c.Time + o.Time} }

// Gate bounds the evaluations that run at once in a process. Every rule set
// compiled with the same Gate (WithGate) shares it; sets compiled without
// one share the package's default gate of GOMAXPROCS slots.
type Gate struct{ slots chan struct{} }

// NewGate returns a gate of n slots (n < 1 means 1).
func NewGate(n int) *Gate { return &Gate{slots: make(chan struct{}, max(n, 1))} }

// acquire takes a slot, waiting until one is free or ctx ends.
func (g *Gate) acquire(ctx context.Context) error {
	select {
	case g.slots <- struct{}{}:
		return nil
	default:
	}
	select {
	case g.slots <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("wait for an evaluation slot (%d busy): %w", cap(g.slots), ctx.Err())
	}
}

func (g *Gate) release() { <-g.slots }

var defaultGate = NewGate(runtime.GOMAXPROCS(0))

// WithBudget makes Compile refuse conditions over b (after defaults) and
// sets the per-event budget of the compiled set.
func WithBudget(b Budget) Option {
	return func(o *options) { o.budget = b }
}

// WithGate makes the compiled set take a slot of g for each event it
// evaluates, so one process runs at most g's size of evaluations at once.
func WithGate(g *Gate) Option {
	return func(o *options) { o.gate = g }
}

// CrashGuard keeps evidence, across a crash, that an event was being
// evaluated: Mark before, Unmark after. A Mark still present when the
// process starts again means the evaluation never finished.
type CrashGuard interface {
	Mark(eventID string) error
	Unmark(eventID string)
}

// Evaluation is what Evaluate needs besides the event.
type Evaluation struct {
	// Size is the event's size as received, in bytes; 0 means unknown, and
	// the estimate before evaluating is skipped (the time spent is still
	// checked).
	Size int
	// Guard, when set, marks the event while conditions run whose estimate
	// at Size is large enough to threaten the process (50 ms or 16 MiB):
	// cheap events, nearly all of them, touch no disk.
	Guard CrashGuard
}

// BudgetError is returned, marked permanent, for an event whose evaluation
// exceeds the per-event budget; the event is poisoned with its text.
type BudgetError struct {
	EventID string
	Reason  string
}

func (e *BudgetError) Error() string {
	return fmt.Sprintf("evaluation budget exceeded for event %s: %s", e.EventID, e.Reason)
}

// ladder are the event sizes estimates are computed at; a rule keeps its
// cost at each (up to MaxEventBytes), so Evaluate reads an upper bound for
// an event's size from a small array instead of walking the condition.
var ladder = []int{1 << 10, 4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20, 64 << 20}

// costLadder estimates a condition at every ladder size below maxBytes and
// at maxBytes itself (the last entry).
type costLadder struct {
	sizes []int
	costs []Cost
}

// at returns an upper bound of the cost for an event of size bytes.
func (l *costLadder) at(size int) Cost {
	if l == nil || len(l.costs) == 0 {
		return Cost{}
	}
	for i, s := range l.sizes {
		if size <= s {
			return l.costs[i]
		}
	}
	return l.costs[len(l.costs)-1]
}

// worst is the cost at the largest event.
func (l *costLadder) worst() Cost {
	if l == nil || len(l.costs) == 0 {
		return Cost{}
	}
	return l.costs[len(l.costs)-1]
}
