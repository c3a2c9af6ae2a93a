// Package historytest gives tests a PostgreSQL schema of their own for a
// history store.
package historytest

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"net/url"
	"os"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx"
)

// PostgresURL is the database tests make their schemas in:
// EVENTPIPE_TEST_POSTGRES_URL, default the one scripts/test-deps.sh
// prepares (role eventpipe, database eventpipe_test on 127.0.0.1:5432).
func PostgresURL() string {
	if u := os.Getenv("EVENTPIPE_TEST_POSTGRES_URL"); u != "" {
		return u
	}
	return "postgres://eventpipe:eventpipe@127.0.0.1:5432/eventpipe_test?sslmode=disable"
}

// Schema creates a schema for t, dropped when t ends, and returns a URL
// whose connections use it. Without PostgreSQL the test is skipped, or
// fails under CI=true.
func Schema(t testing.TB) string {
	t.Helper()
	admin, err := sql.Open("pgx", PostgresURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = admin.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := admin.PingContext(ctx); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("PostgreSQL is required under CI=true (run scripts/test-deps.sh): %v", err)
		}
		t.Skipf("no PostgreSQL (run scripts/test-deps.sh, or set EVENTPIPE_TEST_POSTGRES_URL): %v", err)
	}
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	schema := "history_test_" + hex.EncodeToString(b)
	if _, err := admin.ExecContext(ctx, "CREATE SCHEMA "+schema); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := admin.ExecContext(context.Background(), "DROP SCHEMA "+schema+" CASCADE"); err != nil {
			t.Errorf("drop schema %s: %v", schema, err)
		}
	})
	return WithSchema(PostgresURL(), schema)
}

// WithSchema returns raw with search_path set to schema.
func WithSchema(raw, schema string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return raw
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String()
}
