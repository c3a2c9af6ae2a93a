package rulestore

import (
	"context"
	"crypto/sha256"
	"errors"
	"io/fs"
	"os"
	"time"
)

// racyWindow is how long after its modification time a file is re-read at
// every poll even when its stat looks unchanged: a file system with coarse
// timestamps (1 s, 2 s on FAT) can show the same mtime and size for two
// different contents written in quick succession.
const racyWindow = 3 * time.Second

// Watch polls the rules file until ctx ends and loads each new content once
// it has stayed the same for the debounce time. Content the store wrote
// itself is recognised by its hash and not reloaded. An invalid file keeps
// the current rules; it is logged at Error with file, line and rule, and
// counted (rules reload errors), once per content. A missing file keeps the
// current rules too. Watch returns nil at once when the store has no file.
//
// It polls instead of using inotify (fsnotify): editors and config tools
// replace files by rename, which ends a watch on the file itself; Kubernetes
// ConfigMaps swap a symlinked directory; network and container file systems
// often deliver no events at all; and a stat every 250 ms costs nothing
// measurable. It also keeps a dependency out of the module.
func (s *Store) Watch(ctx context.Context) error {
	if s.path == "" {
		return nil
	}
	t := time.NewTicker(s.poll)
	defer t.Stop()
	var w watchState
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			s.pollOnce(ctx, &w)
		}
	}
}

// watchState is what Watch remembers between polls.
type watchState struct {
	fi      fs.FileInfo
	hash    [sha256.Size]byte
	since   time.Time // when hash was first seen
	missing bool
}

// pollOnce looks at the file once and loads it when a new content has been
// stable for the debounce time.
func (s *Store) pollOnce(ctx context.Context, w *watchState) {
	now := time.Now()
	fi, err := os.Stat(s.path)
	if err != nil {
		if !w.missing {
			w.missing = true
			s.log.WarnContext(ctx, "rules file is unreadable; the current rules stay active",
				"file", s.path, "error", err, "missing", errors.Is(err, fs.ErrNotExist))
		}
		w.fi = nil
		return
	}
	if w.missing {
		w.missing = false
		s.log.InfoContext(ctx, "rules file is readable again", "file", s.path)
	}
	if w.fi == nil || !os.SameFile(w.fi, fi) || !fi.ModTime().Equal(w.fi.ModTime()) ||
		fi.Size() != w.fi.Size() || now.Sub(fi.ModTime()) < racyWindow {
		data, _, err := readFile(s.path, s.maxBytes)
		if err != nil {
			// Gone between stat and read (the next poll reports it), or
			// too large: hashed as read so far, syncFileLocked refuses it.
			data = []byte(err.Error())
		}
		w.fi = fi
		if h := sha256.Sum256(data); h != w.hash {
			w.hash, w.since = h, now
		}
	}
	if now.Sub(w.since) < s.debounce {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if w.hash == s.fileHash || w.hash == s.badHash {
		return
	}
	// The file is read again under the lock: a change the store wrote
	// since this poll read it must not be replaced by older content.
	_ = s.syncFileLocked(ctx, false, &w.hash) // logged and counted there
}
