package history

import (
	"errors"
	"fmt"
	"net/url"
	"path/filepath"
	"slices"
	"time"
)

// Store kinds accepted in Config.Store (history.store).
const (
	// StoreNone turns history off: nothing is recorded, the history
	// endpoints answer 501.
	StoreNone = "none"
	// StoreSQLite keeps history in an SQLite file under the data directory
	// (a pure-Go driver: no cgo). For one process.
	StoreSQLite = "sqlite"
	// StorePostgres keeps history in PostgreSQL, which several replicas
	// write to and read from.
	StorePostgres = "postgres"
)

// StoreKinds lists every accepted store kind, for error messages.
var StoreKinds = []string{StoreNone, StoreSQLite, StorePostgres}

// Defaults used for zero Config fields.
const (
	// DefaultFile is the SQLite file name inside the data directory.
	DefaultFile = "history.db"
	// DefaultQueueSize bounds the records waiting to be written; past it
	// new records are dropped (counted and logged), never waited for.
	DefaultQueueSize = 16384
	// DefaultBatchSize is the most records written in one transaction.
	DefaultBatchSize = 2048
	// DefaultFlushInterval is the longest a record waits for its batch.
	DefaultFlushInterval = 200 * time.Millisecond
	// DefaultMaxAge is how long history is kept.
	DefaultMaxAge = 7 * 24 * time.Hour
	// DefaultMaxEvents bounds the events kept (with their tasks); the
	// oldest go first.
	DefaultMaxEvents = 1_000_000
	// DefaultPruneInterval is how often retention runs.
	DefaultPruneInterval = time.Minute
	// DefaultMaxPayloadBytes is how much of each event's payload is kept.
	DefaultMaxPayloadBytes = 8 << 10
	// DefaultMaxRulesPerEvent bounds the rule explanations kept per event.
	DefaultMaxRulesPerEvent = 100
)

// Config configures the history store and its recorder. Zero fields take
// the Default* values; Store "" means StoreNone.
type Config struct {
	// Store is none, sqlite or postgres.
	Store string
	// Path is the SQLite file (sqlite). Required for sqlite; the pipeline
	// sets it to <data_dir>/history.db.
	Path string
	// PostgresURL is postgres://user:pass@host:5432/db (postgres).
	PostgresURL string
	// QueueSize bounds the records waiting to be written, default DefaultQueueSize.
	QueueSize int
	// BatchSize is the most records per transaction, default DefaultBatchSize.
	BatchSize int
	// FlushInterval is the longest a record waits, default DefaultFlushInterval.
	FlushInterval time.Duration
	// MaxAge is how long history is kept, default DefaultMaxAge.
	MaxAge time.Duration
	// MaxEvents bounds the events kept, default DefaultMaxEvents.
	MaxEvents int
	// PruneInterval is how often retention runs, default DefaultPruneInterval.
	PruneInterval time.Duration
	// MaxPayloadBytes is how much of an event's payload is kept, default
	// DefaultMaxPayloadBytes.
	MaxPayloadBytes int
}

func (c *Config) setDefaults() {
	if c.Store == "" {
		c.Store = StoreNone
	}
	setInt(&c.QueueSize, DefaultQueueSize)
	setInt(&c.BatchSize, DefaultBatchSize)
	setInt(&c.MaxEvents, DefaultMaxEvents)
	setInt(&c.MaxPayloadBytes, DefaultMaxPayloadBytes)
	setDuration(&c.FlushInterval, DefaultFlushInterval)
	setDuration(&c.MaxAge, DefaultMaxAge)
	setDuration(&c.PruneInterval, DefaultPruneInterval)
}

func setInt(p *int, def int) {
	if *p == 0 {
		*p = def
	}
}

func setDuration(p *time.Duration, def time.Duration) {
	if *p == 0 {
		*p = def
	}
}

// Enabled reports whether a store is configured.
func (c Config) Enabled() bool { return c.Store != "" && c.Store != StoreNone }

// Validate reports every problem, each naming its history.* key and value.
// Zero values are valid (they take the defaults).
func (c Config) Validate() error {
	var errs []error
	check := func(ok bool, format string, args ...any) {
		if !ok {
			errs = append(errs, fmt.Errorf(format, args...))
		}
	}
	check(c.Store == "" || slices.Contains(StoreKinds, c.Store), "history.store must be one of none, sqlite, postgres, got %q", c.Store)
	if c.Store == StoreSQLite {
		check(c.Path != "" && filepath.Base(c.Path) != ".", "history: the sqlite file needs a data directory (data_dir, EVENTPIPE_DATA_DIR), got %q", c.Path)
	}
	if c.Store == StorePostgres {
		u, err := url.Parse(c.PostgresURL)
		check(err == nil && (u.Scheme == "postgres" || u.Scheme == "postgresql") && u.Host != "",
			"history.postgres_url must be postgres://user:pass@host:port/db, got %q", redact(c.PostgresURL))
	}
	check(c.QueueSize >= 0, "history.queue_size must be >= 1, got %d", c.QueueSize)
	check(c.BatchSize >= 0, "history.batch_size must be >= 1, got %d", c.BatchSize)
	check(c.FlushInterval >= 0, "history.flush_interval must be > 0, got %s", c.FlushInterval)
	check(c.MaxAge >= 0, "history.retention.max_age must be > 0, got %s", c.MaxAge)
	check(c.MaxEvents >= 0, "history.retention.max_events must be >= 1, got %d", c.MaxEvents)
	check(c.PruneInterval >= 0, "history.retention.prune_interval must be > 0, got %s", c.PruneInterval)
	check(c.MaxPayloadBytes >= 0, "history.max_payload_bytes must be >= 1, got %d", c.MaxPayloadBytes)
	return errors.Join(errs...)
}

// redact hides a URL's password.
func redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.User == nil {
		return raw
	}
	if _, ok := u.User.Password(); ok {
		u.User = url.UserPassword(u.User.Username(), "xxxxx")
	}
	return u.String()
}
