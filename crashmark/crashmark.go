// Package crashmark keeps, on disk, the ids of events being evaluated, so
// an event that took the process down is known when it comes back.
//
// A mark is an empty file named by the hash of the event id, created before
// an expensive evaluation and removed after it. A process killed meanwhile
// (out of memory, SIGKILL) leaves it behind; Open reads what is left into
// memory, so checking a delivery is a map lookup, not a system call. Marks
// are not fsynced: they must survive the process, not the machine, and a
// file written before a crash is in the page cache either way.
//
// Only events whose conditions' estimate is large are marked (see
// rules.Evaluation.Guard), so the hot path of ordinary events touches no
// disk at all. The evidence is local to the data directory: on RabbitMQ a
// redelivery to another replica is not recognised there (see README).
package crashmark

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"sync"
)

// Dir is a directory of marks. It implements rules.CrashGuard.
type Dir struct {
	path string
	mu   sync.Mutex
	// left are the marks found at Open: evaluations that never finished.
	left map[string]bool
}

// Open creates path if needed and reads the marks a previous process left.
func Open(path string) (*Dir, error) {
	if err := os.MkdirAll(path, 0o700); err != nil {
		return nil, fmt.Errorf("crash marks: %w", err)
	}
	entries, err := os.ReadDir(path)
	if err != nil {
		return nil, fmt.Errorf("crash marks: %w", err)
	}
	d := &Dir{path: path, left: map[string]bool{}}
	for _, e := range entries {
		if !e.IsDir() {
			d.left[e.Name()] = true
		}
	}
	return d, nil
}

// Left returns the number of marks found at Open that are not cleared yet.
func (d *Dir) Left() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.left)
}

// Crashed reports whether eventID was being evaluated when a previous
// process stopped, and clears that evidence: the caller poisons the event,
// and a replay after a fix must be evaluated again.
func (d *Dir) Crashed(eventID string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.left) == 0 {
		return false
	}
	name := markName(eventID)
	if !d.left[name] {
		return false
	}
	delete(d.left, name)
	_ = os.Remove(filepath.Join(d.path, name))
	return true
}

// Mark records that eventID is being evaluated.
func (d *Dir) Mark(eventID string) error {
	f, err := os.OpenFile(filepath.Join(d.path, markName(eventID)), os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	return f.Close()
}

// Unmark records that eventID's evaluation finished.
func (d *Dir) Unmark(eventID string) {
	_ = os.Remove(filepath.Join(d.path, markName(eventID)))
}

func markName(eventID string) string {
	sum := sha256.Sum256([]byte(eventID))
	return hex.EncodeToString(sum[:16])
}
