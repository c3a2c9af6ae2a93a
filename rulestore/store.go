// Package rulestore is the authoritative, versioned rule set: CRUD with
// optimistic concurrency, atomic write-back to the rules file, hot reload of
// that file, and atomic swaps into a rules.Engine.
//
// Every change, from the API or from the file, follows one path under one
// mutex: copy the current rules, apply the change, compile the whole set,
// write the file atomically, then swap the compiled set into the engine. A
// change that does not compile or cannot be written changes nothing, and an
// event is always matched against one whole set, old or new.
package rulestore

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/eventpipe/eventpipe/rules"
)

// Defaults used for zero Config fields.
const (
	// DefaultPollInterval is how often Watch looks at the rules file.
	DefaultPollInterval = 250 * time.Millisecond
	// DefaultDebounce is how long the file's content must stay the same
	// before it is loaded, so a file being written is not read half-way.
	DefaultDebounce = 200 * time.Millisecond
)

// anonymous is the actor of a change made without authentication.
const anonymous = "anonymous"

// fileActor is the actor of changes picked up from the rules file.
const fileActor = "file"

// ReloadMetrics counts refused reloads of the rules file; *metrics.Metrics
// is one (and a nil *metrics.Metrics counts nothing).
type ReloadMetrics interface {
	RulesReloadError()
}

// Config configures a Store.
type Config struct {
	// Path is the rules file. Empty means the rules live in memory only and
	// are lost on restart; Open says so in the log.
	Path string
	// Engine receives every new rule set; nil means Open makes one. Once a
	// store drives an engine, only the store may swap its set.
	Engine *rules.Engine
	// MaxFileBytes bounds the rules file (rules.max_file_bytes); a larger
	// one is refused. Default DefaultMaxFileBytes.
	MaxFileBytes int64
	// Options are passed to every rules.Compile, e.g. rules.WithTaskTypes.
	Options []rules.Option
	// Logger gets the audit log ("rule changed", Info) and reload errors
	// (Error); nil discards.
	Logger *slog.Logger
	// Metrics counts refused reloads; nil counts nothing.
	Metrics ReloadMetrics
	// PollInterval is how often Watch polls the file, default DefaultPollInterval.
	PollInterval time.Duration
	// Debounce is how long a new file content must stay unchanged before it
	// is loaded, default DefaultDebounce.
	Debounce time.Duration
	// Changes receives a ChangeRecord for every change (the rule history);
	// nil keeps only the audit log line.
	Changes ChangeLog
}

// Errors of the mutating methods; test with errors.Is or errors.As.
var (
	// ErrNotFound: no rule has the id.
	ErrNotFound = errors.New("rule not found")
	// ErrExists: Create with an id that is taken.
	ErrExists = errors.New("rule already exists")
	// ErrPreconditionFailed: the rule changed since the client read it (its
	// If-Match or version does not match the current one).
	ErrPreconditionFailed = errors.New("rule was changed since it was read")
)

// InvalidError is a change refused because the rules do not compile. Err is
// the rules.Compile error: every problem joined, each a *rules.FieldError
// naming the rule id, field and, for conditions, the expr position.
type InvalidError struct {
	Err error
}

func (e *InvalidError) Error() string { return "invalid rule: " + e.Err.Error() }

// Unwrap returns the compile error.
func (e *InvalidError) Unwrap() error { return e.Err }

// FileChangedError is a change refused because the rules file was edited on
// disk and that edit is not loaded yet: writing now would overwrite it.
// LoadErr is nil while the edit is too fresh to load (retry shortly), and
// the reason when the edited file does not load (fix the file first).
type FileChangedError struct {
	Path    string
	LoadErr error
}

func (e *FileChangedError) Error() string {
	if e.LoadErr != nil {
		return fmt.Sprintf("the rules file %s was edited and does not load; fix it first: %v", e.Path, e.LoadErr)
	}
	return fmt.Sprintf("the rules file %s was edited and is not loaded yet; retry shortly", e.Path)
}

// Unwrap returns the load error, if any.
func (e *FileChangedError) Unwrap() error { return e.LoadErr }

// Change says who makes a change and on which condition.
type Change struct {
	// Actor is who makes the change, for the audit log (the API token's
	// name); empty means "anonymous".
	Actor string
	// IfMatch is an If-Match header value: empty for none, "*" for any
	// current version, or a comma-separated list of ETags of which one must
	// be the rule's current ETag. Create ignores it.
	IfMatch string
	// restores is the version a rollback brings back, 0 for other changes.
	restores int64
}

func (c Change) actor() string {
	if c.Actor == "" {
		return anonymous
	}
	return c.Actor
}

// state is one immutable snapshot: the rules in file order, their index and
// their compiled set. Readers load it without locking.
type state struct {
	rules []rules.Rule
	index map[string]int
	set   *rules.Set
	// items are the rules' YAML list items (rules.MarshalRuleYAML), kept
	// so a change of one rule encodes one rule; nil until first written.
	items [][]byte
}

func newState(rs []rules.Rule, set *rules.Set) *state {
	st := &state{rules: rs, index: make(map[string]int, len(rs)), set: set}
	for i, r := range rs {
		st.index[r.RuleID] = i
	}
	return st
}

// Store holds the rule set. Create it with Open. It is safe for concurrent use.
type Store struct {
	path     string
	maxBytes int64
	engine   *rules.Engine
	opts     []rules.Option
	log      *slog.Logger
	metrics  ReloadMetrics
	changes  ChangeLog
	poll     time.Duration
	debounce time.Duration
	// now gives updatedAt; tests replace it.
	now func() time.Time
	// rename is os.Rename; tests make it fail to simulate a crash.
	rename func(oldpath, newpath string) error

	cur atomic.Pointer[state]

	// mu serialises every change and guards the fields below.
	mu sync.Mutex
	// fileHash is the hash of the file content the current state is in
	// sync with: the last content loaded or written.
	fileHash [sha256.Size]byte
	// badHash and badErr remember the last file content that did not load,
	// so it is reported once, not at every poll.
	badHash [sha256.Size]byte
	badErr  error
}

// Open loads the rules file (if any), compiles it and swaps it into the
// engine. A missing or invalid file is an error listing every problem with
// file, line and rule. Rules without a version get version 1; without
// updatedAt, the file's modification time.
func Open(cfg Config) (*Store, error) {
	s := &Store{
		path:     cfg.Path,
		maxBytes: cfg.MaxFileBytes,
		engine:   cfg.Engine,
		opts:     cfg.Options,
		log:      cfg.Logger,
		metrics:  cfg.Metrics,
		changes:  cfg.Changes,
		poll:     cfg.PollInterval,
		debounce: cfg.Debounce,
		now:      time.Now,
		rename:   os.Rename,
	}
	if s.log == nil {
		s.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if s.metrics == nil {
		s.metrics = noMetrics{}
	}
	if s.poll <= 0 {
		s.poll = DefaultPollInterval
	}
	if s.debounce <= 0 {
		s.debounce = DefaultDebounce
	}
	if s.maxBytes <= 0 {
		s.maxBytes = DefaultMaxFileBytes
	}
	if s.engine == nil {
		s.engine = rules.NewEngine(nil)
	}
	var rs []rules.Rule
	var data []byte
	if s.path == "" {
		s.log.Warn("no rules file configured: rules API changes are kept in memory only and lost on restart")
	} else {
		var fi fs.FileInfo
		var err error
		s.removeTempFiles()
		if data, fi, err = readFile(s.path, s.maxBytes); err != nil {
			return nil, fmt.Errorf("load rules: %w", err)
		}
		if rs, err = rules.Parse(data, s.path, s.opts...); err != nil {
			return nil, fmt.Errorf("load rules: %w", err)
		}
		stamp := fi.ModTime().UTC().Truncate(time.Second)
		for i := range rs {
			if rs[i].Version <= 0 {
				rs[i].Version = 1
			}
			if rs[i].UpdatedAt.IsZero() {
				rs[i].UpdatedAt = stamp
			}
		}
		s.fileHash = sha256.Sum256(data)
	}
	set, err := s.compileFile(rs, data)
	if err != nil {
		return nil, fmt.Errorf("load rules: %w", err)
	}
	s.publish(rs, set)
	s.log.Info("rules loaded", "file", s.path, "rules", len(rs))
	return s, nil
}

type noMetrics struct{}

func (noMetrics) RulesReloadError() {}

// Engine returns the engine the store swaps rule sets into.
func (s *Store) Engine() *rules.Engine { return s.engine }

// Path returns the rules file, "" when the store is in memory only.
func (s *Store) Path() string { return s.path }

// Set returns the current compiled rule set, the one the engine matches with.
func (s *Store) Set() *rules.Set { return s.cur.Load().set }

// Get returns a copy of the rule with id, and whether it exists.
func (s *Store) Get(id string) (rules.Rule, bool) {
	st := s.cur.Load()
	i, ok := st.index[id]
	if !ok {
		return rules.Rule{}, false
	}
	return cloneRule(st.rules[i]), true
}

// List returns copies of at most limit rules from offset on, in file order,
// and the total number of rules. An offset past the end gives none.
func (s *Store) List(offset, limit int) ([]rules.Rule, int) {
	st := s.cur.Load()
	total := len(st.rules)
	if offset < 0 || offset >= total || limit <= 0 {
		return []rules.Rule{}, total
	}
	end := total
	if limit < total-offset {
		end = offset + limit
	}
	out := make([]rules.Rule, 0, end-offset)
	for _, r := range st.rules[offset:end] {
		out = append(out, cloneRule(r))
	}
	return out, total
}

// ETag is the rule's entity tag: "<ruleId>-v<version>", quoted as HTTP
// wants it. Rule ids cannot contain quotes, so it is always well formed.
func ETag(r rules.Rule) string {
	return `"` + r.RuleID + "-v" + strconv.FormatInt(r.Version, 10) + `"`
}

// etagMatches applies an If-Match header value to the current ETag with the
// strong comparison RFC 9110 asks for: weak tags never match.
func etagMatches(ifMatch, current string) bool {
	ifMatch = strings.TrimSpace(ifMatch)
	if ifMatch == "" || ifMatch == "*" {
		return true
	}
	for tag := range strings.SplitSeq(ifMatch, ",") {
		if strings.TrimSpace(tag) == current {
			return true
		}
	}
	return false
}

// Create adds r at the end of the rule set with version 1. It fails with
// *InvalidError, ErrExists or *FileChangedError. The version and updatedAt
// r carries are ignored: the store owns them.
func (s *Store) Create(ctx context.Context, r rules.Rule, ch Change) (rules.Rule, error) {
	// Compiled alone first, so problems name the rule "#1" rather than its
	// position in the whole set when it has no usable id.
	if _, err := rules.Compile([]rules.Rule{r}, s.opts...); err != nil {
		return rules.Rule{}, &InvalidError{Err: err}
	}
	return s.create(ctx, r, ch, "create", 1)
}

// create adds r at the end of the rule set with the given version.
func (s *Store) create(ctx context.Context, r rules.Rule, ch Change, action string, version int64) (rules.Rule, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.syncFileLocked(ctx, true, nil); err != nil {
		return rules.Rule{}, err
	}
	st := s.cur.Load()
	if _, ok := st.index[r.RuleID]; ok {
		return rules.Rule{}, fmt.Errorf("%w: %q", ErrExists, r.RuleID)
	}
	r = canonical(r)
	r.Version, r.UpdatedAt = version, s.stamp()
	next := append(append(make([]rules.Rule, 0, len(st.rules)+1), st.rules...), r)
	if err := s.commitLocked(next, func(j int) bool { return j < len(st.rules) }); err != nil {
		return rules.Rule{}, err
	}
	s.audit(ctx, ch, action, r, nil)
	return cloneRule(r), nil
}

// Update replaces the rule with r.RuleID by r and increments its version.
// The change must satisfy ch.IfMatch, and r.Version when non-zero must be
// the current version (a client that read, edited and sent back a rule
// gets ErrPreconditionFailed instead of overwriting a newer edit). An r
// equal to the current rule changes nothing and keeps the version. It fails
// with ErrNotFound, ErrPreconditionFailed, *InvalidError or *FileChangedError.
func (s *Store) Update(ctx context.Context, r rules.Rule, ch Change) (rules.Rule, error) {
	expect := r.Version
	return s.modify(ctx, r.RuleID, ch, "update", func(cur rules.Rule) (rules.Rule, error) {
		if expect != 0 && expect != cur.Version {
			return rules.Rule{}, fmt.Errorf("%w: rule %q is at version %d, not %d", ErrPreconditionFailed, cur.RuleID, cur.Version, expect)
		}
		return canonical(r), nil
	})
}

// SetEnabled enables or disables the rule with id, incrementing its version
// unless it already is in that state. Errors are those of Update.
func (s *Store) SetEnabled(ctx context.Context, id string, enabled bool, ch Change) (rules.Rule, error) {
	action := "disable"
	if enabled {
		action = "enable"
	}
	return s.modify(ctx, id, ch, action, func(cur rules.Rule) (rules.Rule, error) {
		next := cloneRule(cur)
		next.Enabled = &enabled
		return next, nil
	})
}

// modify applies edit to the rule with id under the store's lock, checking
// ch.IfMatch against the current version first.
func (s *Store) modify(ctx context.Context, id string, ch Change, action string,
	edit func(cur rules.Rule) (rules.Rule, error)) (rules.Rule, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.syncFileLocked(ctx, true, nil); err != nil {
		return rules.Rule{}, err
	}
	st := s.cur.Load()
	i, ok := st.index[id]
	if !ok {
		return rules.Rule{}, fmt.Errorf("%w: %q", ErrNotFound, id)
	}
	cur := st.rules[i]
	if !etagMatches(ch.IfMatch, ETag(cur)) {
		return rules.Rule{}, fmt.Errorf("%w: If-Match %s, current ETag %s", ErrPreconditionFailed, ch.IfMatch, ETag(cur))
	}
	next, err := edit(cur)
	if err != nil {
		return rules.Rule{}, err
	}
	next.RuleID = id
	changed := diff(cur, next)
	if len(changed) == 0 {
		return cloneRule(cur), nil // nothing to do: PUT is idempotent
	}
	next.Version, next.UpdatedAt = cur.Version+1, s.stamp()
	all := append(make([]rules.Rule, 0, len(st.rules)), st.rules...)
	all[i] = next
	if err := s.commitLocked(all, func(j int) bool { return j != i }); err != nil {
		return rules.Rule{}, err
	}
	s.audit(ctx, ch, action, next, changed)
	return cloneRule(next), nil
}

// Delete removes the rule with id, if ch.IfMatch allows. It fails with
// ErrNotFound, ErrPreconditionFailed or *FileChangedError.
func (s *Store) Delete(ctx context.Context, id string, ch Change) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.syncFileLocked(ctx, true, nil); err != nil {
		return err
	}
	st := s.cur.Load()
	i, ok := st.index[id]
	if !ok {
		return fmt.Errorf("%w: %q", ErrNotFound, id)
	}
	cur := st.rules[i]
	if !etagMatches(ch.IfMatch, ETag(cur)) {
		return fmt.Errorf("%w: If-Match %s, current ETag %s", ErrPreconditionFailed, ch.IfMatch, ETag(cur))
	}
	next := append(append(make([]rules.Rule, 0, len(st.rules)-1), st.rules[:i]...), st.rules[i+1:]...)
	if err := s.commitLocked(next, func(int) bool { return true }); err != nil {
		return err
	}
	s.audit(ctx, ch, "delete", cur, nil)
	return nil
}

// Replace makes rs the whole rule set in one atomic change, in the given
// order: rules that did not change keep their version, changed ones get the
// next version, new ones start at 1 (or the version they carry). It fails
// with *InvalidError or *FileChangedError.
func (s *Store) Replace(ctx context.Context, rs []rules.Rule, ch Change) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.syncFileLocked(ctx, true, nil); err != nil {
		return err
	}
	next, changes := reconcile(s.cur.Load(), rs, s.stamp())
	if err := s.commitLocked(next, nil); err != nil {
		return err
	}
	s.auditAll(ctx, ch.actor(), "replace", changes)
	return nil
}

// Reload loads the rules file now if it changed since it was last loaded or
// written. Watch calls it for you; an invalid file keeps the current rules,
// is logged at Error and counted, and is returned as *FileChangedError.
func (s *Store) Reload(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.syncFileLocked(ctx, false, nil)
}

// commitLocked compiles next, writes it to the file and swaps it in. On
// any error nothing has changed. unchanged (nil: none) names the rules of
// next that are the current set's, which are not compiled again: a change
// to one rule compiles that rule only.
func (s *Store) commitLocked(next []rules.Rule, unchanged func(i int) bool) error {
	cur := s.cur.Load()
	set, err := rules.Recompile(cur.set, next, unchanged, s.opts...)
	if err != nil {
		return &InvalidError{Err: err}
	}
	var items [][]byte
	if s.path != "" {
		items = make([][]byte, len(next))
		for i := range next {
			if j, ok := cur.index[next[i].RuleID]; ok && unchanged != nil && unchanged(i) && cur.items != nil {
				items[i] = cur.items[j]
				continue
			}
			if items[i], err = rules.MarshalRuleYAML(next[i]); err != nil {
				return err
			}
		}
		data := rules.JoinYAML(items)
		if err := s.writeFile(data); err != nil {
			return err
		}
		s.fileHash = sha256.Sum256(data)
	}
	s.publishItems(next, set, items)
	return nil
}

// publish makes the new state current: the engine first, so that once a
// change is acknowledged every event after it is matched by the new set.
func (s *Store) publish(rs []rules.Rule, set *rules.Set) { s.publishItems(rs, set, nil) }

// publishItems is publish with the rules' YAML items, when known.
func (s *Store) publishItems(rs []rules.Rule, set *rules.Set, items [][]byte) {
	s.engine.Swap(set)
	st := newState(rs, set)
	st.items = items
	s.cur.Store(st)
}

// stamp is an updatedAt: UTC, whole seconds, so it reads as plain RFC 3339.
func (s *Store) stamp() time.Time { return s.now().UTC().Truncate(time.Second) }

// audit logs one change with who made it and which fields changed, and
// records it in the change log.
func (s *Store) audit(ctx context.Context, ch Change, action string, r rules.Rule, changed []string) {
	actor := ch.actor()
	s.record(ctx, ChangeRecord{RuleID: r.RuleID, Version: r.Version, Action: action, Actor: actor,
		At: s.now().UTC(), Changed: changed, Restores: ch.restores, Rule: ptrTo(cloneRule(r))})
	attrs := []slog.Attr{
		slog.String("actor", actor),
		slog.String("action", action),
		slog.String("rule_id", r.RuleID),
		slog.Int64("version", r.Version),
	}
	if changed != nil {
		attrs = append(attrs, slog.Any("changed", changed))
	}
	s.log.LogAttrs(ctx, slog.LevelInfo, "rule changed", attrs...)
}

// auditAll logs each rule a whole-set change touched; op says whether the
// rule was created, updated or deleted by it.
func (s *Store) auditAll(ctx context.Context, actor, action string, changes []ruleChange) {
	recs := make([]ChangeRecord, len(changes))
	for i, c := range changes {
		recs[i] = ChangeRecord{RuleID: c.rule.RuleID, Version: c.rule.Version, Action: c.op, Via: action,
			Actor: actor, At: s.now().UTC(), Changed: c.changed, Rule: ptrTo(cloneRule(c.rule))}
	}
	s.record(ctx, recs...)
	for _, c := range changes {
		attrs := []slog.Attr{
			slog.String("actor", actor),
			slog.String("action", action),
			slog.String("op", c.op),
			slog.String("rule_id", c.rule.RuleID),
			slog.Int64("version", c.rule.Version),
		}
		if c.changed != nil {
			attrs = append(attrs, slog.Any("changed", c.changed))
		}
		s.log.LogAttrs(ctx, slog.LevelInfo, "rule changed", attrs...)
	}
}
