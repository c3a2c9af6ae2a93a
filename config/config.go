// Package config holds eventpipe's configuration: defaults, loading from YAML
// with EVENTPIPE_* environment overrides, and validation listing every problem.
package config

import (
	"log/slog"
	"time"
)

// Broker kinds accepted in broker.kind and EVENTPIPE_BROKER.
const (
	BrokerEmbedded = "embedded"
	BrokerKafka    = "kafka"
	BrokerAMQP     = "amqp"
)

// BrokerKinds lists every accepted broker kind, for error messages.
var BrokerKinds = []string{BrokerEmbedded, BrokerKafka, BrokerAMQP}

// SASL mechanisms accepted in broker.kafka.sasl.mechanism.
const (
	SASLPlain       = "PLAIN"
	SASLSCRAMSHA256 = "SCRAM-SHA-256"
	SASLSCRAMSHA512 = "SCRAM-SHA-512"
)

// Config is the whole eventpipe configuration. Start from Default() (Load
// does): decoding YAML over the defaults keeps an explicit 0 or false from the
// file, which a zero-value Config cannot express.
type Config struct {
	Broker    Broker    `yaml:"broker"`
	Topics    Topics    `yaml:"topics"`
	HTTP      HTTP      `yaml:"http"`
	Rules     Rules     `yaml:"rules"`
	Event     Event     `yaml:"event"`
	Trigger   Trigger   `yaml:"trigger"`
	Executor  Executor  `yaml:"executor"`
	Retry     Retry     `yaml:"retry"`
	Dedup     Dedup     `yaml:"dedup"`
	Executors Executors `yaml:"executors"`
	Log       Log       `yaml:"log"`
	Metrics   Metrics   `yaml:"metrics"`
	History   History   `yaml:"history"`
	// DataDir is where eventpipe keeps its files across restarts: the
	// SQLite history database and the marks of events being evaluated
	// (crash evidence). Default "data", relative to the working directory.
	// Env EVENTPIPE_DATA_DIR.
	DataDir string `yaml:"data_dir"`
	// ShutdownTimeout bounds a graceful shutdown. Default 30s.
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout"`
	// Readiness configures /readyz.
	Readiness Readiness `yaml:"readiness"`
}

// Readiness configures what /readyz checks beyond the router and broker.
type Readiness struct {
	// StallTimeout: a handler whose subscription has a backlog but has
	// made no progress for this long makes the process not ready. 0 means
	// the consumer package's default (2m).
	StallTimeout time.Duration `yaml:"stall_timeout"`
}

// Broker selects and configures the message broker.
type Broker struct {
	// Kind is embedded, kafka or amqp. Default embedded. Env EVENTPIPE_BROKER.
	Kind     string         `yaml:"kind"`
	Embedded EmbeddedBroker `yaml:"embedded"`
	Kafka    Kafka          `yaml:"kafka"`
	AMQP     AMQP           `yaml:"amqp"`
}

// EmbeddedBroker configures the in-process Watermill GoChannel broker.
type EmbeddedBroker struct {
	// BufferSize is each subscriber's output channel buffer. Default 1024; 0 is unbuffered.
	BufferSize int `yaml:"buffer_size"`
}

// Kafka configures the Kafka broker (franz-go).
type Kafka struct {
	// Brokers are host:port seed brokers. Required for kind kafka.
	// Env EVENTPIPE_KAFKA_BROKERS (comma-separated).
	Brokers []string `yaml:"brokers"`
	// ConsumerGroup is the prefix of the consumer groups: topic T is
	// consumed by group <consumer_group>.<T> (eventpipe.business-events,
	// eventpipe.schedule-tasks), so a rebalance of the tasks group, which
	// waits for running tasks, never pauses the events. Default "eventpipe".
	ConsumerGroup string `yaml:"consumer_group"`
	// ClientID identifies this client to the brokers. Default "eventpipe".
	ClientID string `yaml:"client_id"`
	// Partitions is the partition count per topic name, used when eventpipe
	// creates topics; renaming topics.events or topics.tasks needs the new
	// name here. Default business-events 12, schedule-tasks 6.
	Partitions map[string]int `yaml:"partitions"`
	// DefaultPartitions is the partition count of topics eventpipe creates
	// that Partitions does not list (results, poison topics). Default 1.
	DefaultPartitions int `yaml:"default_partitions"`
	// ReplicationFactor of topics eventpipe creates. Default 1.
	ReplicationFactor int `yaml:"replication_factor"`
	// PublishTimeout bounds how long a publish keeps retrying while the
	// cluster is unreachable (restart, leader election) before it fails and
	// the handler's retries and poison queue take over. Default 30s.
	PublishTimeout time.Duration `yaml:"publish_timeout"`
	TLS            TLS           `yaml:"tls"`
	SASL           SASL          `yaml:"sasl"`
}

// TLS configures a TLS client connection. Default off.
type TLS struct {
	Enabled bool `yaml:"enabled"`
	// CAFile is a PEM bundle of CAs to trust; "" uses the system pool.
	CAFile string `yaml:"ca_file"`
	// CertFile and KeyFile are a PEM client certificate and key; both or neither.
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// InsecureSkipVerify turns off server certificate checks; for tests only.
	InsecureSkipVerify bool `yaml:"insecure_skip_verify"`
}

// SASL configures Kafka SASL authentication. Default off (empty mechanism).
type SASL struct {
	// Mechanism is PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512; "" disables SASL.
	Mechanism string `yaml:"mechanism"`
	Username  string `yaml:"username"`
	Password  string `yaml:"password"`
}

// AMQP configures the RabbitMQ broker (amqp091-go).
type AMQP struct {
	// URL is amqp:// or amqps://. Default amqp://guest:guest@127.0.0.1:5672/.
	// Env EVENTPIPE_AMQP_URL.
	URL string `yaml:"url"`
	// Exchange is the topic exchange producers publish events to.
	// Default business.event.exchange.
	Exchange string `yaml:"exchange"`
	// BindingKeys bind the events queue to Exchange. Default ["#"] (every event type).
	BindingKeys []string `yaml:"binding_keys"`
	// Prefetch is the consumer prefetch count, and the number of messages
	// of a queue handled at once by this process (whatever the handler
	// concurrency). Default 256.
	Prefetch int `yaml:"prefetch"`
	// ChannelPoolSize is the number of publishing channels (each with many
	// messages awaiting their confirm). Default 4.
	ChannelPoolSize int `yaml:"channel_pool_size"`
	// ResultsMaxLength bounds the results queue; RabbitMQ drops the oldest
	// beyond it (counted in queue_dropped_total). Default 100000; < 0 no limit.
	ResultsMaxLength int `yaml:"results_max_length"`
	// ResultsMaxAge drops results older than this. Default 168h; < 0 no limit.
	ResultsMaxAge time.Duration `yaml:"results_max_age"`
	// PoisonMaxLength bounds each poison queue. Default 1000000; < 0 no limit.
	PoisonMaxLength int `yaml:"poison_max_length"`
	// PoisonMaxAge drops poison messages older than this. Default -1 (no limit).
	PoisonMaxAge time.Duration `yaml:"poison_max_age"`
	// SingleActiveConsumer declares the tasks queue with
	// x-single-active-consumer, so per-key order holds across replicas
	// (one consumes, the others stand by). Default false.
	SingleActiveConsumer bool `yaml:"single_active_consumer"`
	// PublishTimeout bounds how long a publish keeps retrying while
	// RabbitMQ is unreachable before it fails. Default 30s.
	PublishTimeout time.Duration `yaml:"publish_timeout"`
	TLS            TLS           `yaml:"tls"`
}

// Topics names the topics eventpipe reads and writes.
type Topics struct {
	// Events carries business events. Default business-events.
	Events string `yaml:"events"`
	// Tasks carries tasks made by rules. Default schedule-tasks.
	Tasks string `yaml:"tasks"`
	// Results carries task results. Default task-results.
	Results string `yaml:"results"`
	// PoisonSuffix makes a topic's poison topic name. Default ".dlq".
	PoisonSuffix string `yaml:"poison_suffix"`
}

// Poison returns the poison (dead-letter) topic of topic, e.g. business-events.dlq.
func (t Topics) Poison(topic string) string { return topic + t.PoisonSuffix }

// HTTP configures the HTTP server (rules API, event ingest, metrics, health).
type HTTP struct {
	// Addr is the listen address. Default 127.0.0.1:8080. Env EVENTPIPE_HTTP_ADDR.
	// A non-loopback address requires Token.
	Addr string `yaml:"addr"`
	// Token is the bearer token mutating endpoints require; "" means none
	// (loopback only). Env EVENTPIPE_API_TOKEN.
	Token string `yaml:"token"`
	// Tokens are further bearer tokens by client name; the name is the
	// actor of the rule changes that client makes (audit log). Token counts
	// as the client "default". Default none.
	Tokens map[string]string `yaml:"tokens"`
	// MaxBodyBytes limits rules API request bodies. Default 1 MiB.
	MaxBodyBytes int64 `yaml:"max_body_bytes"`
	// MaxBatchBytes limits a POST /api/v1/events body (one event or an
	// array) and a POST /api/v1/task-trigger-rules/test body. Default 8 MiB.
	MaxBatchBytes int64 `yaml:"max_batch_bytes"`
	// ReadTimeout bounds reading a whole request. Default 10s.
	ReadTimeout time.Duration `yaml:"read_timeout"`
	// WriteTimeout bounds writing a response. Default 30s.
	WriteTimeout time.Duration `yaml:"write_timeout"`
	// IdleTimeout bounds idle keep-alive connections. Default 60s.
	IdleTimeout time.Duration `yaml:"idle_timeout"`
}

// Rules configures where trigger rules come from.
type Rules struct {
	// File is the seed-format rules YAML. Default "" (no rules).
	// Env EVENTPIPE_RULES_FILE.
	File string `yaml:"file"`
	// MaxFileBytes bounds the rules file; a larger one is refused at load.
	// 0 means the rule store's default (16 MiB).
	MaxFileBytes int64 `yaml:"max_file_bytes"`
	// Budget bounds what rules may cost. Zero fields take the rules
	// package's defaults; it checks them.
	Budget RulesBudget `yaml:"budget"`
}

// RulesBudget is the YAML of rules.Budget: what one condition, one event
// and one rule set may cost.
type RulesBudget struct {
	// ConditionMemory bounds the bytes one condition may allocate on an
	// event of event.max_bytes, by the estimate at load. Default 64 MiB.
	ConditionMemory int64 `yaml:"condition_memory"`
	// ConditionTime bounds one condition's estimated time on an event of
	// event.max_bytes. Default 1s.
	ConditionTime time.Duration `yaml:"condition_time"`
	// EventTime bounds the time all conditions of one event may take
	// (estimate before, measured during); an event over it is poisoned.
	// Default 5s.
	EventTime time.Duration `yaml:"event_time"`
	// MaxRegexpProgram bounds a matches pattern's RE2 program. Default 1000.
	MaxRegexpProgram int `yaml:"max_regexp_program"`
	// MaxRules bounds the rule count. Default 20000.
	MaxRules int `yaml:"max_rules"`
	// ConcurrentEvaluations bounds the events evaluated at once, dry runs
	// included. Default GOMAXPROCS.
	ConcurrentEvaluations int `yaml:"concurrent_evaluations"`
}

// Event configures event parsing.
type Event struct {
	// MaxBytes is the largest accepted event; larger ones are poisoned. Default 1 MiB.
	MaxBytes int `yaml:"max_bytes"`
}

// Trigger configures the trigger handler (event -> tasks).
type Trigger struct {
	// Concurrency is the number of events handled at once (handlers
	// subscribed to the events topic, one event in flight each; on Kafka
	// independent of the partition count; on RabbitMQ broker.amqp.prefetch
	// bounds what is in flight instead). Each waits mostly on publishing its
	// tasks, so it pays to keep many in flight. Default 64.
	Concurrency int `yaml:"concurrency"`
	// Timeout bounds one attempt at handling an event. Default 30s.
	Timeout time.Duration `yaml:"timeout"`
}

// Executor configures the executor handler (task -> result).
type Executor struct {
	// Concurrency is the number of tasks run at once (on Kafka independent
	// of the partition count; tasks with one partition key still run one
	// after another; on RabbitMQ broker.amqp.prefetch bounds it). Default 64.
	Concurrency int `yaml:"concurrency"`
	// Timeout bounds one attempt at a task that sets no timeout of its own
	// (parameters.timeout, which wins when set; the executors' own
	// default_timeout may be shorter). Default 5m.
	Timeout time.Duration `yaml:"timeout"`
}

// Retry configures in-process retries of transient errors (exponential
// backoff with jitter). Retries block the partition or queue while waiting,
// so keep them short.
type Retry struct {
	// MaxRetries is the number of retries after the first attempt; 0 disables retrying. Default 3.
	MaxRetries int `yaml:"max_retries"`
	// InitialInterval is the first wait. Default 100ms.
	InitialInterval time.Duration `yaml:"initial_interval"`
	// MaxInterval caps each wait. Default 5s.
	MaxInterval time.Duration `yaml:"max_interval"`
	// Multiplier grows the wait after each retry. Default 2.
	Multiplier float64 `yaml:"multiplier"`
	// RandomizationFactor spreads each wait over [w*(1-f), w*(1+f)]; 0 disables jitter. Default 0.5.
	RandomizationFactor float64 `yaml:"randomization_factor"`
}

// Dedup configures task de-duplication by task id.
type Dedup struct {
	// MaxEntries bounds the remembered task ids; the oldest are evicted. Default 100000.
	MaxEntries int `yaml:"max_entries"`
	// TTL is how long a task id is remembered. Default 24h.
	TTL time.Duration `yaml:"ttl"`
	// Store is memory (default: per process, forgotten on restart) or redis
	// (shared by every process and kept across restarts).
	Store string `yaml:"store"`
	// RedisURL is the Redis server of the redis store, e.g.
	// redis://127.0.0.1:6379/0. Default redis://127.0.0.1:6379/0.
	RedisURL string `yaml:"redis_url"`
}

// Dedup stores accepted in dedup.store.
const (
	DedupMemory = "memory"
	DedupRedis  = "redis"
)

// Executors configures the built-in executors.
type Executors struct {
	Shell ShellExecutor `yaml:"shell"`
	HTTP  HTTPExecutor  `yaml:"http"`
}

// ShellExecutor configures the shell executor.
type ShellExecutor struct {
	// AllowedCommands are absolute paths of the only programs shell tasks may
	// run. Default none (every shell task fails permanently).
	AllowedCommands []string `yaml:"allowed_commands"`
	// AllowShell permits a shell or interpreter (sh, bash, python, env, ...)
	// in AllowedCommands, which is refused by default. Default false.
	AllowShell bool `yaml:"allow_shell"`
	// MaxOutputBytes bounds captured output. Default 64 KiB.
	MaxOutputBytes int `yaml:"max_output_bytes"`
	// DefaultTimeout applies when a task sets no timeout. Default 1m.
	DefaultTimeout time.Duration `yaml:"default_timeout"`
}

// HTTPExecutor configures the http executor.
type HTTPExecutor struct {
	// AllowedHosts are the only host names http tasks may call. Default none.
	AllowedHosts []string `yaml:"allowed_hosts"`
	// AllowPrivateNetworks permits private, loopback and link-local
	// destinations. Default false.
	AllowPrivateNetworks bool `yaml:"allow_private_networks"`
	// DefaultTimeout applies when a task sets no timeout. Default 30s.
	DefaultTimeout time.Duration `yaml:"default_timeout"`
	// MaxResponseBytes bounds the response body read. Default 1 MiB.
	MaxResponseBytes int64 `yaml:"max_response_bytes"`
}

// Log configures logging.
type Log struct {
	// Level is debug, info, warn or error. Default info. Env EVENTPIPE_LOG_LEVEL.
	Level string `yaml:"level"`
	// Format is text or json. Default text. Env EVENTPIPE_LOG_FORMAT.
	Format string `yaml:"format"`
}

// SlogLevel returns Level as a slog.Level; an invalid level (which Validate
// rejects) gives slog.LevelInfo.
func (l Log) SlogLevel() slog.Level {
	switch l.Level {
	case "debug":
		return slog.LevelDebug
	case "warn":
		return slog.LevelWarn
	case "error":
		return slog.LevelError
	default:
		return slog.LevelInfo
	}
}

// Metrics configures Prometheus metrics.
type Metrics struct {
	// Enabled exposes /metrics and records metrics. Default true.
	Enabled bool `yaml:"enabled"`
}

// History configures the lineage store: what happened to each event and
// task, the rule history and, on the embedded broker, the poison messages.
// The history package owns the defaults (zero values take them) and checks.
type History struct {
	// Store is none, sqlite (<data_dir>/history.db) or postgres (several
	// replicas share it). Default none; config/eventpipe.yaml uses sqlite.
	Store string `yaml:"store"`
	// PostgresURL is postgres://user:pass@host:5432/db for store postgres.
	PostgresURL string `yaml:"postgres_url"`
	// QueueSize bounds the records waiting to be written; past it records
	// are dropped (history_records_dropped_total), the pipeline never waits. Default 16384.
	QueueSize int `yaml:"queue_size"`
	// BatchSize is the most records per write transaction. Default 2048.
	BatchSize int `yaml:"batch_size"`
	// FlushInterval is the longest a record waits to be written. Default 200ms.
	FlushInterval time.Duration `yaml:"flush_interval"`
	// MaxPayloadBytes is how much of each event is kept. Default 8 KiB.
	MaxPayloadBytes int              `yaml:"max_payload_bytes"`
	Retention       HistoryRetention `yaml:"retention"`
}

// HistoryRetention bounds the history by age and size, pruned in the background.
type HistoryRetention struct {
	// MaxAge is how long events and tasks are kept. Default 168h (7 days).
	MaxAge time.Duration `yaml:"max_age"`
	// MaxEvents is how many events (with their tasks) are kept. Default 1000000.
	MaxEvents int `yaml:"max_events"`
	// PruneInterval is how often retention runs. Default 1m.
	PruneInterval time.Duration `yaml:"prune_interval"`
}

// Default returns the built-in defaults: embedded broker, HTTP on
// 127.0.0.1:8080, no rules, no shell commands or HTTP hosts allowed.
func Default() *Config {
	return &Config{
		Broker: Broker{
			Kind:     BrokerEmbedded,
			Embedded: EmbeddedBroker{BufferSize: 1024},
			Kafka: Kafka{
				ConsumerGroup:     "eventpipe",
				ClientID:          "eventpipe",
				Partitions:        map[string]int{"business-events": 12, "schedule-tasks": 6},
				ReplicationFactor: 1,
				DefaultPartitions: 1,
				PublishTimeout:    30 * time.Second,
			},
			AMQP: AMQP{
				URL:              "amqp://guest:guest@127.0.0.1:5672/",
				Exchange:         "business.event.exchange",
				BindingKeys:      []string{"#"},
				Prefetch:         256,
				ChannelPoolSize:  4,
				PublishTimeout:   30 * time.Second,
				ResultsMaxLength: 100_000,
				ResultsMaxAge:    7 * 24 * time.Hour,
				PoisonMaxLength:  1_000_000,
				PoisonMaxAge:     -1,
			},
		},
		Topics: Topics{
			Events:       "business-events",
			Tasks:        "schedule-tasks",
			Results:      "task-results",
			PoisonSuffix: ".dlq",
		},
		HTTP: HTTP{
			Addr:          "127.0.0.1:8080",
			MaxBodyBytes:  1 << 20,
			MaxBatchBytes: 8 << 20,
			ReadTimeout:   10 * time.Second,
			WriteTimeout:  30 * time.Second,
			IdleTimeout:   60 * time.Second,
		},
		Event:    Event{MaxBytes: 1 << 20},
		Trigger:  Trigger{Concurrency: 64, Timeout: 30 * time.Second},
		Executor: Executor{Concurrency: 64, Timeout: 5 * time.Minute},
		Retry: Retry{
			MaxRetries:          3,
			InitialInterval:     100 * time.Millisecond,
			MaxInterval:         5 * time.Second,
			Multiplier:          2,
			RandomizationFactor: 0.5,
		},
		Dedup: Dedup{MaxEntries: 100_000, TTL: 24 * time.Hour, Store: DedupMemory, RedisURL: "redis://127.0.0.1:6379/0"},
		Executors: Executors{
			Shell: ShellExecutor{MaxOutputBytes: 64 << 10, DefaultTimeout: time.Minute},
			HTTP:  HTTPExecutor{DefaultTimeout: 30 * time.Second, MaxResponseBytes: 1 << 20},
		},
		Log:             Log{Level: "info", Format: "text"},
		Metrics:         Metrics{Enabled: true},
		DataDir:         "data",
		ShutdownTimeout: 30 * time.Second,
	}
}
