package rulestore

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/eventpipe/eventpipe/rules"
)

// DefaultMaxFileBytes is the default bound of the rules file: 16 MiB holds
// about 80,000 rules of the seed's size, four times rules.DefaultMaxRules.
const DefaultMaxFileBytes = 16 << 20

// readFile reads the rules file and its stat, refusing one over maxBytes
// before reading it: YAML decoding holds several times the file in memory.
func readFile(path string, maxBytes int64) ([]byte, fs.FileInfo, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, nil, err
	}
	if fi.Size() > maxBytes {
		return nil, nil, fmt.Errorf("rules file %s is %d bytes, more than %d (rules.max_file_bytes)", path, fi.Size(), maxBytes)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer func() { _ = f.Close() }()
	// The file may have grown since Stat: read one byte over the bound.
	data, err := io.ReadAll(io.LimitReader(f, maxBytes+1))
	if err != nil {
		return nil, nil, err
	}
	if int64(len(data)) > maxBytes {
		return nil, nil, fmt.Errorf("rules file %s is more than %d bytes (rules.max_file_bytes)", path, maxBytes)
	}
	return data, fi, nil
}

// removeTempFiles removes the temporary files a process that crashed while
// writing the rules file left next to it (see writeFile).
func (s *Store) removeTempFiles() {
	target := s.path
	if resolved, err := filepath.EvalSymlinks(target); err == nil {
		target = resolved
	}
	left, _ := filepath.Glob(filepath.Join(filepath.Dir(target), "."+escapeGlob(filepath.Base(target))+".tmp-*"))
	for _, name := range left {
		if err := os.Remove(name); err == nil {
			s.log.Info("removed a temporary rules file left by an interrupted write", "file", name)
		}
	}
}

// escapeGlob quotes the glob metacharacters of a file name.
func escapeGlob(name string) string {
	var b strings.Builder
	for _, r := range name {
		if strings.ContainsRune(`*?[\`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}

// declaresNoRules reports whether the file content says, in so many words,
// that it holds no rules (`taskTriggerRules: []`), as opposed to being
// empty, which a truncated write also is.
func declaresNoRules(data []byte) bool {
	var doc struct {
		Rules *[]any `yaml:"taskTriggerRules"`
	}
	return yaml.Unmarshal(data, &doc) == nil && doc.Rules != nil && len(*doc.Rules) == 0
}

// compileFile compiles rules read from the file content data. Every
// problem names the file, line and rule: rules.Parse placed its own, and the
// problems only the store's compile options find (an unknown taskType) get
// the line of their rule's key here.
func (s *Store) compileFile(rs []rules.Rule, data []byte) (*rules.Set, error) {
	set, err := rules.Compile(rs, s.opts...)
	if err != nil {
		lines := keyLines(data)
		for _, fe := range fieldErrors(err) {
			if fe.File == "" {
				fe.File = s.path
				fe.Line = lines.of(fe.RuleID, fe.Field)
			}
		}
		return nil, err
	}
	return set, nil
}

// fieldErrors lists the *rules.FieldError in an errors.Join tree.
func fieldErrors(err error) []*rules.FieldError {
	var out []*rules.FieldError
	var walk func(error)
	walk = func(err error) {
		var fe *rules.FieldError
		switch e := err.(type) {
		case nil:
		case interface{ Unwrap() []error }:
			for _, inner := range e.Unwrap() {
				walk(inner)
			}
		default:
			if errors.As(err, &fe) {
				out = append(out, fe)
			}
		}
	}
	walk(err)
	return out
}

// ruleLines maps rule ids to the line of the rule ("") and of each of its keys.
type ruleLines map[string]map[string]int

// keyLines finds where each rule and key is in a rules file that parsed.
func keyLines(data []byte) ruleLines {
	out := ruleLines{}
	var doc yaml.Node
	if yaml.Unmarshal(data, &doc) != nil || len(doc.Content) == 0 || doc.Content[0].Kind != yaml.MappingNode {
		return out
	}
	top := doc.Content[0]
	for i := 0; i+1 < len(top.Content); i += 2 {
		if top.Content[i].Value != "taskTriggerRules" || top.Content[i+1].Kind != yaml.SequenceNode {
			continue
		}
		for n, item := range top.Content[i+1].Content {
			if item.Kind != yaml.MappingNode {
				continue
			}
			keys := map[string]int{"": item.Line}
			id := fmt.Sprintf("#%d", n+1)
			for j := 0; j+1 < len(item.Content); j += 2 {
				keys[item.Content[j].Value] = item.Content[j].Line
				if item.Content[j].Value == "ruleId" && item.Content[j+1].Value != "" {
					id = item.Content[j+1].Value
				}
			}
			out[id] = keys
		}
	}
	return out
}

// of is the line of a rule's top-level key, else of the rule, else 0.
func (l ruleLines) of(ruleID, field string) int {
	keys := l[ruleID]
	for i := 0; i < len(field); i++ {
		if field[i] == '.' || field[i] == '[' {
			field = field[:i]
			break
		}
	}
	if line, ok := keys[field]; ok {
		return line
	}
	return keys[""]
}

// writeFile replaces the rules file with data so that a reader, or the file
// after a crash, holds either the old content or the new one, never a mix:
// write a temporary file in the same directory (rename is atomic only within
// one file system), fsync it, rename it over the file, fsync the directory so
// the rename itself is durable. A symlinked rules file keeps its link: the
// link's target is replaced. The file keeps its permissions; a new one is
// 0600, since rule parameters may hold credentials (http headers).
func (s *Store) writeFile(data []byte) error {
	target := s.path
	if resolved, err := filepath.EvalSymlinks(target); err == nil {
		target = resolved
	}
	perm := fs.FileMode(0o600)
	if fi, err := os.Stat(target); err == nil {
		perm = fi.Mode().Perm()
	}
	dir := filepath.Dir(target)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(target)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write rules file %s: %w", s.path, err)
	}
	renamed := false
	defer func() {
		if !renamed {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
		}
	}()
	if _, err := tmp.Write(data); err != nil {
		return fmt.Errorf("write rules file %s: %w", tmp.Name(), err)
	}
	if err := tmp.Chmod(perm); err != nil {
		return fmt.Errorf("write rules file %s: %w", tmp.Name(), err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("sync rules file %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write rules file %s: %w", tmp.Name(), err)
	}
	if err := s.rename(tmp.Name(), target); err != nil {
		return fmt.Errorf("replace rules file %s: %w", target, err)
	}
	renamed = true
	// The new content is in place; failing to make the rename durable does
	// not undo it, so it is logged rather than reported as a failed change.
	if err := syncDir(dir); err != nil {
		s.log.Warn("rules file written but its directory could not be synced", "file", target, "error", err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer func() { _ = d.Close() }()
	return d.Sync()
}

// syncFileLocked loads the rules file if its content differs from the one
// the current state came from, so an edit on disk is never overwritten by a
// change made without it. A missing file changes nothing (a change recreates
// it). Content that does not load keeps the current rules and is logged and
// counted once per content.
//
// stableOnly (the API's mutations) loads only content older than the
// debounce, so a file being written is not read half-way; fresher content is
// refused with *FileChangedError and the watcher loads it shortly. want (the
// watcher's) is the debounced content's hash: other content is left for the
// next poll.
func (s *Store) syncFileLocked(ctx context.Context, stableOnly bool, want *[sha256.Size]byte) error {
	if s.path == "" {
		return nil
	}
	data, fi, err := readFile(s.path, s.maxBytes)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		err = fmt.Errorf("read rules file: %w", err)
		if want != nil && *want != s.badHash {
			// The watcher's poll: report a file that cannot be read (too
			// large) once per content, like one that does not load.
			s.badHash, s.badErr = *want, err
			s.metrics.RulesReloadError()
			s.log.ErrorContext(ctx, "rules file refused; the previous rules stay active", "file", s.path, "error", err)
		}
		return err
	}
	h := sha256.Sum256(data)
	switch {
	case h == s.fileHash, want != nil && h != *want:
		return nil
	case h == s.badHash:
		return &FileChangedError{Path: s.path, LoadErr: s.badErr}
	case stableOnly && time.Since(fi.ModTime()) < s.debounce:
		return &FileChangedError{Path: s.path}
	}
	rs, err := rules.Parse(data, s.path, s.opts...)
	if err == nil && len(rs) == 0 && len(s.cur.Load().rules) > 0 && !declaresNoRules(data) {
		err = fmt.Errorf("%s holds no rules, and %d are loaded: an empty or truncated file is refused; "+
			"to remove every rule, write `taskTriggerRules: []`", s.path, len(s.cur.Load().rules))
	}
	var set *rules.Set
	var changes []ruleChange
	if err == nil {
		rs, changes = reconcile(s.cur.Load(), rs, s.stamp())
		set, err = s.compileFile(rs, data)
	}
	if err != nil {
		s.badHash, s.badErr = h, err
		s.metrics.RulesReloadError()
		s.log.ErrorContext(ctx, "rules file refused; the previous rules stay active", "file", s.path, "error", err)
		return &FileChangedError{Path: s.path, LoadErr: err}
	}
	s.fileHash, s.badHash, s.badErr = h, [sha256.Size]byte{}, nil
	s.publish(rs, set)
	s.auditAll(ctx, fileActor, "reload", changes)
	s.log.InfoContext(ctx, "rules file reloaded", "file", s.path, "rules", len(rs), "changed", len(changes))
	return nil
}
