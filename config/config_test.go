package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func writeFile(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "eventpipe.yaml")
	require.NoError(t, os.WriteFile(path, []byte(content), 0o600))
	return path
}

func noEnv(string) string { return "" }

func TestDefault_is_valid(t *testing.T) {
	t.Parallel()
	require.NoError(t, Default().Validate())
}

func TestLoad_without_file_gives_defaults(t *testing.T) {
	t.Parallel()
	cfg, err := load("", noEnv)
	require.NoError(t, err)
	assert.Equal(t, Default(), cfg)
}

func TestLoad_empty_file_gives_defaults(t *testing.T) {
	t.Parallel()
	cfg, err := load(writeFile(t, "# nothing here\n"), noEnv)
	require.NoError(t, err)
	assert.Equal(t, Default(), cfg)
}

func TestLoad_reads_yaml_over_defaults(t *testing.T) {
	t.Parallel()
	path := writeFile(t, `
broker:
  kind: kafka
  kafka:
    brokers: ["k1:9092", "k2:9092"]
    partitions: {orders: 3}
http:
  addr: 127.0.0.1:9999
retry:
  max_retries: 0
  randomization_factor: 0
  initial_interval: 250ms
metrics:
  enabled: false
shutdown_timeout: 1m
`)
	cfg, err := load(path, noEnv)
	require.NoError(t, err)

	assert.Equal(t, BrokerKafka, cfg.Broker.Kind)
	assert.Equal(t, []string{"k1:9092", "k2:9092"}, cfg.Broker.Kafka.Brokers)
	// Maps merge over the defaults.
	assert.Equal(t, map[string]int{"business-events": 12, "schedule-tasks": 6, "orders": 3}, cfg.Broker.Kafka.Partitions)
	assert.Equal(t, "127.0.0.1:9999", cfg.HTTP.Addr)
	// Explicit zeros and false are kept, not replaced by defaults.
	assert.Equal(t, 0, cfg.Retry.MaxRetries)
	assert.Zero(t, cfg.Retry.RandomizationFactor)
	assert.False(t, cfg.Metrics.Enabled)
	assert.Equal(t, 250*time.Millisecond, cfg.Retry.InitialInterval)
	assert.Equal(t, time.Minute, cfg.ShutdownTimeout)
	// Untouched settings keep their defaults.
	assert.Equal(t, "eventpipe", cfg.Broker.Kafka.ConsumerGroup)
	assert.Equal(t, 5*time.Second, cfg.Retry.MaxInterval)
}

func TestLoad_rejects_unknown_key_naming_key_and_line(t *testing.T) {
	t.Parallel()
	path := writeFile(t, "http:\n  addr: 127.0.0.1:8080\n  tokne: secret\n")
	_, err := load(path, noEnv)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "tokne")
	assert.Contains(t, err.Error(), "line 3")
	assert.Contains(t, err.Error(), path)
}

func TestLoad_rejects_bad_yaml_values(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		yaml    string
		wantErr string
	}{
		{name: "duration without unit", yaml: "trigger:\n  timeout: 30\n", wantErr: "line 2"},
		{name: "malformed duration", yaml: "trigger:\n  timeout: soon\n", wantErr: "soon"},
		{name: "string for int", yaml: "retry:\n  max_retries: many\n", wantErr: "many"},
		{name: "not yaml", yaml: "broker: [unclosed\n", wantErr: "parse config"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := load(writeFile(t, tt.yaml), noEnv)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.wantErr)
		})
	}
}

func TestLoad_missing_file_is_an_error(t *testing.T) {
	t.Parallel()
	_, err := load(filepath.Join(t.TempDir(), "absent.yaml"), noEnv)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "absent.yaml")
}

func TestLoad_env_overrides_file(t *testing.T) {
	t.Parallel()
	path := writeFile(t, "broker:\n  kind: embedded\nlog:\n  level: debug\n")
	tests := []struct {
		name  string
		env   map[string]string
		check func(t *testing.T, c *Config)
	}{
		{
			name: "EVENTPIPE_BROKER",
			env:  map[string]string{"EVENTPIPE_BROKER": "amqp"},
			check: func(t *testing.T, c *Config) {
				assert.Equal(t, BrokerAMQP, c.Broker.Kind)
			},
		},
		{
			name: "EVENTPIPE_KAFKA_BROKERS comma list with spaces",
			env:  map[string]string{"EVENTPIPE_BROKER": "kafka", "EVENTPIPE_KAFKA_BROKERS": " a:9092, b:9093 ,,"},
			check: func(t *testing.T, c *Config) {
				assert.Equal(t, []string{"a:9092", "b:9093"}, c.Broker.Kafka.Brokers)
			},
		},
		{
			name: "EVENTPIPE_AMQP_URL",
			env:  map[string]string{"EVENTPIPE_AMQP_URL": "amqps://u:p@mq:5671/vh"},
			check: func(t *testing.T, c *Config) {
				assert.Equal(t, "amqps://u:p@mq:5671/vh", c.Broker.AMQP.URL)
			},
		},
		{
			name: "EVENTPIPE_HTTP_ADDR and EVENTPIPE_API_TOKEN",
			env:  map[string]string{"EVENTPIPE_HTTP_ADDR": "0.0.0.0:80", "EVENTPIPE_API_TOKEN": "s3cret"},
			check: func(t *testing.T, c *Config) {
				assert.Equal(t, "0.0.0.0:80", c.HTTP.Addr)
				assert.Equal(t, "s3cret", c.HTTP.Token)
			},
		},
		{
			name: "EVENTPIPE_RULES_FILE",
			env:  map[string]string{"EVENTPIPE_RULES_FILE": "/etc/eventpipe/rules.yaml"},
			check: func(t *testing.T, c *Config) {
				assert.Equal(t, "/etc/eventpipe/rules.yaml", c.Rules.File)
			},
		},
		{
			name: "EVENTPIPE_LOG_LEVEL and EVENTPIPE_LOG_FORMAT",
			env:  map[string]string{"EVENTPIPE_LOG_LEVEL": "warn", "EVENTPIPE_LOG_FORMAT": "json"},
			check: func(t *testing.T, c *Config) {
				assert.Equal(t, "warn", c.Log.Level)
				assert.Equal(t, "json", c.Log.Format)
			},
		},
		{
			name: "empty variable counts as unset",
			env:  map[string]string{"EVENTPIPE_LOG_LEVEL": "", "EVENTPIPE_BROKER": ""},
			check: func(t *testing.T, c *Config) {
				assert.Equal(t, "debug", c.Log.Level)
				assert.Equal(t, BrokerEmbedded, c.Broker.Kind)
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg, err := load(path, func(k string) string { return tt.env[k] })
			require.NoError(t, err)
			tt.check(t, cfg)
		})
	}
}

func TestLoad_reads_process_environment(t *testing.T) {
	// t.Setenv: not parallel.
	t.Setenv("EVENTPIPE_LOG_FORMAT", "json")
	cfg, err := Load("")
	require.NoError(t, err)
	assert.Equal(t, "json", cfg.Log.Format)
}

func TestLoad_env_value_is_validated(t *testing.T) {
	t.Parallel()
	_, err := load("", func(k string) string {
		return map[string]string{"EVENTPIPE_BROKER": "nats"}[k]
	})
	require.Error(t, err)
	assert.Contains(t, err.Error(), `broker.kind must be one of embedded, kafka, amqp, got "nats"`)
}

func TestValidate_names_each_invalid_value(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		mutate  func(c *Config)
		wantErr string
	}{
		{"unknown broker kind", func(c *Config) { c.Broker.Kind = "nats" }, `broker.kind must be one of embedded, kafka, amqp, got "nats"`},
		{"negative buffer", func(c *Config) { c.Broker.Embedded.BufferSize = -1 }, "broker.embedded.buffer_size must be >= 0, got -1"},
		{"kafka without brokers", func(c *Config) { c.Broker.Kind = BrokerKafka }, "broker.kafka.brokers must list at least one host:port"},
		{"kafka broker without port", func(c *Config) {
			c.Broker.Kind = BrokerKafka
			c.Broker.Kafka.Brokers = []string{"k1"}
		}, `broker.kafka.brokers[0] must be host:port, got "k1"`},
		{"kafka zero partitions", func(c *Config) {
			c.Broker.Kind = BrokerKafka
			c.Broker.Kafka.Brokers = []string{"k:9092"}
			c.Broker.Kafka.Partitions = map[string]int{"orders": 0}
		}, "broker.kafka.partitions[orders] must be >= 1, got 0"},
		{"kafka sasl mechanism", func(c *Config) {
			c.Broker.Kind = BrokerKafka
			c.Broker.Kafka.Brokers = []string{"k:9092"}
			c.Broker.Kafka.SASL.Mechanism = "GSSAPI"
		}, `broker.kafka.sasl.mechanism must be one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or empty, got "GSSAPI"`},
		{"kafka sasl without user", func(c *Config) {
			c.Broker.Kind = BrokerKafka
			c.Broker.Kafka.Brokers = []string{"k:9092"}
			c.Broker.Kafka.SASL.Mechanism = SASLPlain
		}, "broker.kafka.sasl.username must be set when broker.kafka.sasl.mechanism is PLAIN"},
		{"kafka cert without key", func(c *Config) {
			c.Broker.Kind = BrokerKafka
			c.Broker.Kafka.Brokers = []string{"k:9092"}
			c.Broker.Kafka.TLS.CertFile = "c.pem"
		}, "broker.kafka.tls.cert_file and broker.kafka.tls.key_file must be set together"},
		{"amqp bad scheme hides password", func(c *Config) {
			c.Broker.Kind = BrokerAMQP
			c.Broker.AMQP.URL = "http://u:hunter2@mq/"
		}, `broker.amqp.url must start with amqp:// or amqps://, got "http://u:xxxxx@mq/"`},
		{"amqp unparsable url hides password", func(c *Config) {
			c.Broker.Kind = BrokerAMQP
			c.Broker.AMQP.URL = "amqp://app:Xy7%zQ-S3cret@mq:5672/"
		}, "broker.amqp.url is not a valid URL (not shown: it may hold a password)"},
		{"amqp zero prefetch", func(c *Config) {
			c.Broker.Kind = BrokerAMQP
			c.Broker.AMQP.Prefetch = 0
		}, "broker.amqp.prefetch must be >= 1, got 0"},
		{"amqp prefetch over AMQP's limit", func(c *Config) {
			c.Broker.Kind = BrokerAMQP
			c.Broker.AMQP.Prefetch = 70000
		}, "broker.amqp.prefetch must be <= 65535 (AMQP's limit), got 70000"},
		{"empty topic", func(c *Config) { c.Topics.Results = "" }, "topics.results must not be empty"},
		{"same topic twice", func(c *Config) { c.Topics.Results = c.Topics.Tasks }, `topics.tasks must differ from topics.results, got "schedule-tasks"`},
		{"empty poison suffix", func(c *Config) { c.Topics.PoisonSuffix = "" }, "topics.poison_suffix must not be empty"},
		{"http addr without port", func(c *Config) { c.HTTP.Addr = "localhost" }, `http.addr must be host:port, got "localhost"`},
		{"public addr without token", func(c *Config) { c.HTTP.Addr = "0.0.0.0:8080" }, `http.addr "0.0.0.0:8080" listens beyond loopback, so http.token (EVENTPIPE_API_TOKEN) must be set`},
		{"all interfaces without token", func(c *Config) { c.HTTP.Addr = ":8080" }, `http.addr ":8080" listens beyond loopback`},
		{"zero body limit", func(c *Config) { c.HTTP.MaxBodyBytes = 0 }, "http.max_body_bytes must be >= 1, got 0"},
		{"zero event size", func(c *Config) { c.Event.MaxBytes = 0 }, "event.max_bytes must be >= 1, got 0"},
		{"zero trigger concurrency", func(c *Config) { c.Trigger.Concurrency = 0 }, "trigger.concurrency must be >= 1, got 0"},
		{"negative executor timeout", func(c *Config) { c.Executor.Timeout = -time.Second }, "executor.timeout must be > 0, got -1s"},
		{"negative max retries", func(c *Config) { c.Retry.MaxRetries = -1 }, "retry.max_retries must be >= 0, got -1"},
		{"max interval below initial", func(c *Config) { c.Retry.MaxInterval = time.Millisecond }, "retry.max_interval must be >= retry.initial_interval (100ms), got 1ms"},
		{"multiplier below one", func(c *Config) { c.Retry.Multiplier = 0.5 }, "retry.multiplier must be >= 1, got 0.5"},
		{"randomization above one", func(c *Config) { c.Retry.RandomizationFactor = 1.5 }, "retry.randomization_factor must be between 0 and 1, got 1.5"},
		{"zero dedup entries", func(c *Config) { c.Dedup.MaxEntries = 0 }, "dedup.max_entries must be >= 1, got 0"},
		{"relative shell command", func(c *Config) { c.Executors.Shell.AllowedCommands = []string{"/bin/echo", "rm"} }, `executors.shell.allowed_commands[1] must be an absolute path, got "rm"`},
		{"http host with scheme", func(c *Config) { c.Executors.HTTP.AllowedHosts = []string{"https://a.example"} }, `executors.http.allowed_hosts[0] must be a bare host name (no scheme, port or path), got "https://a.example"`},
		{"zero response limit", func(c *Config) { c.Executors.HTTP.MaxResponseBytes = 0 }, "executors.http.max_response_bytes must be >= 1, got 0"},
		{"bad log level", func(c *Config) { c.Log.Level = "verbose" }, `log.level must be one of debug, info, warn, error, got "verbose"`},
		{"bad log format", func(c *Config) { c.Log.Format = "xml" }, `log.format must be one of text, json, got "xml"`},
		{"zero shutdown timeout", func(c *Config) { c.ShutdownTimeout = 0 }, "shutdown_timeout must be > 0, got 0s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg := Default()
			tt.mutate(cfg)
			err := cfg.Validate()
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.wantErr)
			assert.NotContains(t, err.Error(), "S3cret")
			assert.NotContains(t, err.Error(), "hunter2")
		})
	}
}

func TestValidate_reports_every_problem(t *testing.T) {
	t.Parallel()
	cfg := Default()
	cfg.Retry.MaxRetries = -1
	cfg.Log.Level = "loud"
	cfg.Trigger.Concurrency = 0
	err := cfg.Validate()
	require.Error(t, err)
	lines := strings.Split(err.Error(), "\n")
	assert.Len(t, lines, 3)
}

func TestValidate_accepts_loopback_and_token(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, addr, token string
	}{
		{name: "ipv4 loopback", addr: "127.0.0.1:8080"},
		{name: "ipv6 loopback", addr: "[::1]:8080"},
		{name: "localhost", addr: "localhost:8080"},
		{name: "public with token", addr: "0.0.0.0:8080", token: "t"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cfg := Default()
			cfg.HTTP.Addr, cfg.HTTP.Token = tt.addr, tt.token
			assert.NoError(t, cfg.Validate())
		})
	}
}

func TestValidate_skips_unselected_broker_sections(t *testing.T) {
	t.Parallel()
	cfg := Default()
	cfg.Broker.AMQP.URL = "not a url"
	cfg.Broker.Kafka.Brokers = nil
	assert.NoError(t, cfg.Validate())
}

func TestSetDefaults_fills_zero_config(t *testing.T) {
	t.Parallel()
	var cfg Config
	cfg.setDefaults()
	require.NoError(t, cfg.Validate())
	assert.Equal(t, Default().HTTP, cfg.HTTP)
	assert.Equal(t, Default().Topics, cfg.Topics)
	// Zero is a real choice for these: setDefaults leaves them.
	assert.Equal(t, 0, cfg.Retry.MaxRetries)
	assert.False(t, cfg.Metrics.Enabled)
}

func TestTopics_Poison_appends_suffix(t *testing.T) {
	t.Parallel()
	assert.Equal(t, "schedule-tasks.dlq", Default().Topics.Poison("schedule-tasks"))
}

func TestLog_SlogLevel(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, level string
		want        string
	}{
		{"debug", "debug", "DEBUG"},
		{"info", "info", "INFO"},
		{"warn", "warn", "WARN"},
		{"error", "error", "ERROR"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			assert.Equal(t, tt.want, Log{Level: tt.level}.SlogLevel().String())
		})
	}
}

func TestShippedConfig_loads_and_validates(t *testing.T) {
	t.Parallel()
	cfg, err := load("eventpipe.yaml", noEnv)
	require.NoError(t, err)
	assert.Equal(t, BrokerEmbedded, cfg.Broker.Kind)
	assert.Equal(t, "examples/rules.yaml", cfg.Rules.File)
	assert.Equal(t, []string{"/bin/echo"}, cfg.Executors.Shell.AllowedCommands)
	assert.Equal(t, []string{"inventory.example.com"}, cfg.Executors.HTTP.AllowedHosts)
}

func TestIsLoopbackHost(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		host string
		want bool
	}{
		{name: "localhost", host: "localhost", want: true},
		{name: "localhost_any_case", host: "LocalHost", want: true},
		{name: "ipv4_loopback_range", host: "127.8.9.10", want: true},
		{name: "ipv6_loopback", host: "::1", want: true},
		{name: "ipv4_mapped_loopback", host: "::ffff:127.0.0.1", want: true},
		{name: "all_interfaces", host: "0.0.0.0"},
		{name: "empty_is_all_interfaces", host: ""},
		{name: "lan_address", host: "192.168.1.10"},
		{name: "name", host: "eventpipe.internal"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			assert.Equal(t, tt.want, IsLoopbackHost(tt.host))
		})
	}
}
