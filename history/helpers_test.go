package history

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/eventpipe/eventpipe/event"
	"github.com/eventpipe/eventpipe/rules"
)

// testPostgresURL is the database the tests make their schemas in;
// scripts/test-deps.sh creates it (role eventpipe, database eventpipe_test).
func testPostgresURL() string {
	if u := os.Getenv("EVENTPIPE_TEST_POSTGRES_URL"); u != "" {
		return u
	}
	return "postgres://eventpipe:eventpipe@127.0.0.1:5432/eventpipe_test?sslmode=disable"
}

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
	return openPostgresSchema(t, cfg, newSchema(t))
}

// newSchema creates a PostgreSQL schema for one test and drops it after.
func newSchema(t *testing.T) string {
	t.Helper()
	admin, err := sql.Open("pgx", testPostgresURL())
	require.NoError(t, err)
	t.Cleanup(func() { _ = admin.Close() })
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if err := admin.PingContext(ctx); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("PostgreSQL is required under CI=true (run scripts/test-deps.sh): %v", err)
		}
		t.Skipf("no PostgreSQL at %s (run scripts/test-deps.sh, or set EVENTPIPE_TEST_POSTGRES_URL): %v", redact(testPostgresURL()), err)
	}
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	schema := "history_test_" + hex.EncodeToString(b)
	_, err = admin.ExecContext(ctx, "CREATE SCHEMA "+schema)
	require.NoError(t, err)
	t.Cleanup(func() {
		_, err := admin.ExecContext(context.Background(), "DROP SCHEMA "+schema+" CASCADE")
		require.NoError(t, err)
	})
	return schema
}

func openPostgresSchema(t *testing.T, cfg Config, schema string) *Store {
	t.Helper()
	u, err := url.Parse(testPostgresURL())
	require.NoError(t, err)
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	cfg.Store, cfg.PostgresURL = StorePostgres, u.String()
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
