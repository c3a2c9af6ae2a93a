package history

import (
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/eventpipe/eventpipe/event"
	"github.com/eventpipe/eventpipe/history/historytest"
	"github.com/eventpipe/eventpipe/rules"
)

// dialects runs fn against a fresh SQLite store and a fresh PostgreSQL
// schema. PostgreSQL missing skips its half, except under CI=true.
func dialects(t *testing.T, cfg Config, fn func(t *testing.T, s *Store)) {
	t.Helper()
	t.Run("sqlite", func(t *testing.T) {
		t.Parallel()
		fn(t, openSQLiteStore(t, cfg))
	})
	t.Run("postgres", func(t *testing.T) {
		t.Parallel()
		fn(t, openPostgresStore(t, cfg))
	})
}

func openSQLiteStore(t *testing.T, cfg Config) *Store {
	t.Helper()
	cfg.Store, cfg.Path = StoreSQLite, filepath.Join(t.TempDir(), "data", DefaultFile)
	s, err := Open(t.Context(), cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// openPostgresStore opens a store in a schema of its own, dropped at the end.
func openPostgresStore(t *testing.T, cfg Config) *Store {
	t.Helper()
	cfg.Store, cfg.PostgresURL = StorePostgres, historytest.Schema(t)
	s, err := Open(t.Context(), cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func mustSet(t *testing.T, rs ...rules.Rule) *rules.Set {
	t.Helper()
	set, err := rules.Compile(rs)
	require.NoError(t, err)
	return set
}

func mustEvent(t *testing.T, raw string) *event.Event {
	t.Helper()
	ev, err := event.Parse([]byte(raw))
	require.NoError(t, err)
	return ev
}

func ptr[T any](v T) *T { return &v }

func parseEvent(raw string) (*event.Event, error) { return event.Parse([]byte(raw)) }
