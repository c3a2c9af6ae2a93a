package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"gopkg.in/yaml.v3"
)

// Load returns the configuration: Default(), then the YAML file at path
// (skipped when path is ""), then the EVENTPIPE_* environment overrides, then
// defaults for zero values, then Validate. Unknown YAML keys are errors naming
// the key and line. EVENTPIPE_CONFIG (the file path) is read by the CLI, not here.
func Load(path string) (*Config, error) {
	return load(path, os.Getenv)
}

// load is Load with the environment passed in, so tests can run in parallel.
func load(path string, getenv func(string) string) (*Config, error) {
	cfg := Default()
	if path != "" {
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("read config: %w", err)
		}
		if err := decode(data, cfg); err != nil {
			return nil, fmt.Errorf("parse config %s: %w", path, err)
		}
	}
	cfg.applyEnv(getenv)
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		if path == "" {
			return nil, fmt.Errorf("invalid config: %w", err)
		}
		return nil, fmt.Errorf("invalid config %s: %w", path, err)
	}
	return cfg, nil
}

// decode decodes YAML over cfg, rejecting unknown keys. An empty file changes nothing.
func decode(data []byte, cfg *Config) error {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(cfg); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	return nil
}

// applyEnv applies the EVENTPIPE_* overrides of DESIGN.md. An empty variable
// counts as unset, so compose files can pass "${VAR}" through harmlessly.
func (c *Config) applyEnv(getenv func(string) string) {
	set := func(name string, dst *string) {
		if v := getenv(name); v != "" {
			*dst = v
		}
	}
	set("EVENTPIPE_BROKER", &c.Broker.Kind)
	set("EVENTPIPE_AMQP_URL", &c.Broker.AMQP.URL)
	set("EVENTPIPE_HTTP_ADDR", &c.HTTP.Addr)
	set("EVENTPIPE_API_TOKEN", &c.HTTP.Token)
	set("EVENTPIPE_RULES_FILE", &c.Rules.File)
	set("EVENTPIPE_LOG_LEVEL", &c.Log.Level)
	set("EVENTPIPE_LOG_FORMAT", &c.Log.Format)
	set("EVENTPIPE_DATA_DIR", &c.DataDir)
	if v := getenv("EVENTPIPE_KAFKA_BROKERS"); v != "" {
		var brokers []string
		for b := range strings.SplitSeq(v, ",") {
			if b = strings.TrimSpace(b); b != "" {
				brokers = append(brokers, b)
			}
		}
		c.Broker.Kafka.Brokers = brokers
	}
}

// setDefaults fills zero values with the defaults, for settings where zero
// is never meaningful (names, sizes, durations, concurrency). Settings where
// zero or false is a real choice (retry.max_retries, retry.randomization_factor,
// broker.embedded.buffer_size, metrics.enabled, TLS flags) are left alone: they
// get their defaults only from Default().
func (c *Config) setDefaults() {
	d := Default()

	orDefault(&c.Broker.Kind, d.Broker.Kind)
	orDefault(&c.Broker.Kafka.ConsumerGroup, d.Broker.Kafka.ConsumerGroup)
	orDefault(&c.Broker.Kafka.ClientID, d.Broker.Kafka.ClientID)
	if c.Broker.Kafka.Partitions == nil {
		c.Broker.Kafka.Partitions = d.Broker.Kafka.Partitions
	}
	orDefault(&c.Broker.Kafka.ReplicationFactor, d.Broker.Kafka.ReplicationFactor)
	orDefault(&c.Broker.Kafka.DefaultPartitions, d.Broker.Kafka.DefaultPartitions)
	orDefault(&c.Broker.Kafka.PublishTimeout, d.Broker.Kafka.PublishTimeout)
	orDefault(&c.Broker.AMQP.PublishTimeout, d.Broker.AMQP.PublishTimeout)
	orDefault(&c.Broker.AMQP.URL, d.Broker.AMQP.URL)
	orDefault(&c.Broker.AMQP.Exchange, d.Broker.AMQP.Exchange)
	if len(c.Broker.AMQP.BindingKeys) == 0 {
		c.Broker.AMQP.BindingKeys = d.Broker.AMQP.BindingKeys
	}
	orDefault(&c.Broker.AMQP.Prefetch, d.Broker.AMQP.Prefetch)
	orDefault(&c.Broker.AMQP.ChannelPoolSize, d.Broker.AMQP.ChannelPoolSize)
	orDefault(&c.Broker.AMQP.ResultsMaxLength, d.Broker.AMQP.ResultsMaxLength)
	orDefault(&c.Broker.AMQP.ResultsMaxAge, d.Broker.AMQP.ResultsMaxAge)
	orDefault(&c.Broker.AMQP.PoisonMaxLength, d.Broker.AMQP.PoisonMaxLength)
	orDefault(&c.Broker.AMQP.PoisonMaxAge, d.Broker.AMQP.PoisonMaxAge)

	orDefault(&c.Topics.Events, d.Topics.Events)
	orDefault(&c.Topics.Tasks, d.Topics.Tasks)
	orDefault(&c.Topics.Results, d.Topics.Results)
	orDefault(&c.Topics.PoisonSuffix, d.Topics.PoisonSuffix)

	orDefault(&c.HTTP.Addr, d.HTTP.Addr)
	orDefault(&c.HTTP.MaxBodyBytes, d.HTTP.MaxBodyBytes)
	orDefault(&c.HTTP.MaxBatchBytes, d.HTTP.MaxBatchBytes)
	orDefault(&c.HTTP.ReadTimeout, d.HTTP.ReadTimeout)
	orDefault(&c.HTTP.WriteTimeout, d.HTTP.WriteTimeout)
	orDefault(&c.HTTP.IdleTimeout, d.HTTP.IdleTimeout)

	orDefault(&c.Event.MaxBytes, d.Event.MaxBytes)
	orDefault(&c.Trigger.Concurrency, d.Trigger.Concurrency)
	orDefault(&c.Trigger.Timeout, d.Trigger.Timeout)
	orDefault(&c.Executor.Concurrency, d.Executor.Concurrency)
	orDefault(&c.Executor.Timeout, d.Executor.Timeout)

	orDefault(&c.Retry.InitialInterval, d.Retry.InitialInterval)
	orDefault(&c.Retry.MaxInterval, d.Retry.MaxInterval)
	orDefault(&c.Retry.Multiplier, d.Retry.Multiplier)

	orDefault(&c.Dedup.MaxEntries, d.Dedup.MaxEntries)
	orDefault(&c.Dedup.TTL, d.Dedup.TTL)
	orDefault(&c.Dedup.Store, d.Dedup.Store)
	orDefault(&c.Dedup.RedisURL, d.Dedup.RedisURL)

	orDefault(&c.Executors.Shell.MaxOutputBytes, d.Executors.Shell.MaxOutputBytes)
	orDefault(&c.Executors.Shell.DefaultTimeout, d.Executors.Shell.DefaultTimeout)
	orDefault(&c.Executors.HTTP.DefaultTimeout, d.Executors.HTTP.DefaultTimeout)
	orDefault(&c.Executors.HTTP.MaxResponseBytes, d.Executors.HTTP.MaxResponseBytes)

	orDefault(&c.Log.Level, d.Log.Level)
	orDefault(&c.Log.Format, d.Log.Format)
	orDefault(&c.DataDir, d.DataDir)
	orDefault(&c.ShutdownTimeout, d.ShutdownTimeout)
}

// orDefault sets *dst to def when *dst is the zero value.
func orDefault[T comparable](dst *T, def T) {
	var zero T
	if *dst == zero {
		*dst = def
	}
}
