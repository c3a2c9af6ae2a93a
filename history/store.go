package history

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx"
	_ "modernc.org/sqlite"             // database/sql driver "sqlite", pure Go
)

// dialect is what differs between SQLite and PostgreSQL.
type dialect int

const (
	sqlite dialect = iota
	postgres
)

// Store is the history database. Open it with Open; it is safe for
// concurrent use. Several processes may share a PostgreSQL store.
type Store struct {
	db      *sql.DB
	dialect dialect
	cfg     Config
	// fullChunk holds the prepared upsert of rowsPerStatement rows, by table.
	fullChunk map[string]*sql.Stmt
}

// Open connects to the store cfg names, creating the SQLite file and its
// directory if needed, and applies pending schema migrations.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Store{cfg: cfg}
	var err error
	switch cfg.Store {
	case StoreSQLite:
		s.dialect = sqlite
		s.db, err = openSQLite(cfg.Path)
	case StorePostgres:
		s.dialect = postgres
		s.db, err = sql.Open("pgx", cfg.PostgresURL)
		if err == nil {
			s.db.SetMaxOpenConns(8)
			s.db.SetConnMaxIdleTime(time.Minute)
		}
	default:
		return nil, fmt.Errorf("history store %q cannot be opened", cfg.Store)
	}
	if err != nil {
		return nil, fmt.Errorf("open %s history store: %w", cfg.Store, err)
	}
	if err := s.db.PingContext(ctx); err != nil {
		_ = s.db.Close()
		return nil, fmt.Errorf("connect to %s history store %s: %w", cfg.Store, s.where(), err)
	}
	if err := s.migrate(ctx); err != nil {
		_ = s.db.Close()
		return nil, fmt.Errorf("migrate %s history store %s: %w", cfg.Store, s.where(), err)
	}
	if err := s.prepareChunks(ctx); err != nil {
		_ = s.db.Close()
		return nil, err
	}
	return s, nil
}

// openSQLite opens path in WAL mode: readers (the API) never wait for the
// writer, and a crash loses at most the last batch. busy_timeout lets the
// pruner and the writer take turns.
func openSQLite(path string) (*sql.DB, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("create data directory: %w", err)
	}
	q := url.Values{}
	for _, p := range []string{"journal_mode(WAL)", "synchronous(NORMAL)", "busy_timeout(10000)", "foreign_keys(OFF)"} {
		q.Add("_pragma", p)
	}
	q.Set("_txlock", "immediate")
	db, err := sql.Open("sqlite", "file:"+filepath.ToSlash(path)+"?"+q.Encode())
	if err != nil {
		return nil, err
	}
	// One writer at a time is all SQLite allows; a few connections let
	// API reads run beside it.
	db.SetMaxOpenConns(4)
	return db, nil
}

// where names the store in errors without its password.
func (s *Store) where() string {
	if s.dialect == sqlite {
		return s.cfg.Path
	}
	return redact(s.cfg.PostgresURL)
}

// Close closes the database.
func (s *Store) Close() error { return s.db.Close() }

// Ping checks the database answers.
func (s *Store) Ping(ctx context.Context) error { return s.db.PingContext(ctx) }

// q rewrites a query written with ? placeholders for the store's dialect.
func (s *Store) q(query string) string {
	if s.dialect == sqlite {
		return query
	}
	var b strings.Builder
	n := 0
	for _, r := range query {
		if r == '?' {
			n++
			b.WriteByte('$')
			b.WriteString(strconv.Itoa(n))
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

// micros stores times as Unix microseconds: one portable, indexable column
// type in both dialects.
func micros(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMicro()
}

func fromMicros(us int64) time.Time {
	if us == 0 {
		return time.Time{}
	}
	return time.UnixMicro(us).UTC()
}

// isNoRows reports a query that found nothing.
func isNoRows(err error) bool { return errors.Is(err, sql.ErrNoRows) }
