package config

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Validate reports every problem in c, joined with errors.Join. Each names
// the field path and the bad value, e.g. "retry.max_retries must be >= 0, got -1".
// Broker sections other than the selected kind are not checked.
func (c *Config) Validate() error {
	var v validator

	v.check(slices.Contains(BrokerKinds, c.Broker.Kind), "broker.kind must be one of %s, got %q",
		strings.Join(BrokerKinds, ", "), c.Broker.Kind)
	v.min("broker.embedded.buffer_size", c.Broker.Embedded.BufferSize, 0)
	switch c.Broker.Kind {
	case BrokerKafka:
		c.Broker.Kafka.validate(&v)
	case BrokerAMQP:
		c.Broker.AMQP.validate(&v)
	}

	c.Topics.validate(&v)
	c.HTTP.validate(&v)

	v.min("event.max_bytes", c.Event.MaxBytes, 1)
	v.min("trigger.concurrency", c.Trigger.Concurrency, 1)
	v.positive("trigger.timeout", c.Trigger.Timeout)
	v.min("executor.concurrency", c.Executor.Concurrency, 1)
	v.positive("executor.timeout", c.Executor.Timeout)

	r := c.Retry
	v.min("retry.max_retries", r.MaxRetries, 0)
	v.positive("retry.initial_interval", r.InitialInterval)
	v.positive("retry.max_interval", r.MaxInterval)
	v.check(r.MaxInterval >= r.InitialInterval, "retry.max_interval must be >= retry.initial_interval (%s), got %s",
		r.InitialInterval, r.MaxInterval)
	v.check(r.Multiplier >= 1, "retry.multiplier must be >= 1, got %g", r.Multiplier)
	v.check(r.RandomizationFactor >= 0 && r.RandomizationFactor <= 1,
		"retry.randomization_factor must be between 0 and 1, got %g", r.RandomizationFactor)

	v.min("dedup.max_entries", c.Dedup.MaxEntries, 1)
	v.positive("dedup.ttl", c.Dedup.TTL)
	v.oneOf("dedup.store", c.Dedup.Store, DedupMemory, DedupRedis)
	if c.Dedup.Store == DedupRedis {
		u, err := url.Parse(c.Dedup.RedisURL)
		v.check(err == nil && (u.Scheme == "redis" || u.Scheme == "rediss") && u.Host != "",
			"dedup.redis_url must be redis://host:port/db or rediss://..., got %q", redactURL(c.Dedup.RedisURL))
	}

	sh := c.Executors.Shell
	for i, cmd := range sh.AllowedCommands {
		// A bare name would be looked up in PATH at run time: what runs would
		// depend on the environment, not on the allowlist.
		v.check(filepath.IsAbs(cmd), "executors.shell.allowed_commands[%d] must be an absolute path, got %q", i, cmd)
	}
	v.min("executors.shell.max_output_bytes", sh.MaxOutputBytes, 1)
	v.positive("executors.shell.default_timeout", sh.DefaultTimeout)
	hx := c.Executors.HTTP
	for i, h := range hx.AllowedHosts {
		v.check(h != "" && !strings.ContainsAny(h, "/:@ "),
			"executors.http.allowed_hosts[%d] must be a bare host name (no scheme, port or path), got %q", i, h)
	}
	v.positive("executors.http.default_timeout", hx.DefaultTimeout)
	v.check(hx.MaxResponseBytes >= 1, "executors.http.max_response_bytes must be >= 1, got %d", hx.MaxResponseBytes)

	v.oneOf("log.level", c.Log.Level, "debug", "info", "warn", "error")
	v.oneOf("log.format", c.Log.Format, "text", "json")
	v.positive("shutdown_timeout", c.ShutdownTimeout)

	return errors.Join(v.errs...)
}

func (k Kafka) validate(v *validator) {
	v.check(len(k.Brokers) > 0, "broker.kafka.brokers must list at least one host:port for broker.kind kafka (EVENTPIPE_KAFKA_BROKERS)")
	for i, b := range k.Brokers {
		v.hostPort(fmt.Sprintf("broker.kafka.brokers[%d]", i), b)
	}
	v.check(k.ConsumerGroup != "", "broker.kafka.consumer_group must not be empty")
	for _, topic := range slices.Sorted(maps.Keys(k.Partitions)) {
		v.check(topic != "", "broker.kafka.partitions has an empty topic name")
		v.check(k.Partitions[topic] >= 1, "broker.kafka.partitions[%s] must be >= 1, got %d", topic, k.Partitions[topic])
	}
	v.min("broker.kafka.replication_factor", k.ReplicationFactor, 1)
	v.min("broker.kafka.default_partitions", k.DefaultPartitions, 1)
	v.positive("broker.kafka.publish_timeout", k.PublishTimeout)
	k.TLS.validate(v, "broker.kafka.tls")
	switch k.SASL.Mechanism {
	case "":
	case SASLPlain, SASLSCRAMSHA256, SASLSCRAMSHA512:
		v.check(k.SASL.Username != "", "broker.kafka.sasl.username must be set when broker.kafka.sasl.mechanism is %s", k.SASL.Mechanism)
	default:
		v.check(false, "broker.kafka.sasl.mechanism must be one of %s, %s, %s or empty, got %q",
			SASLPlain, SASLSCRAMSHA256, SASLSCRAMSHA512, k.SASL.Mechanism)
	}
}

func (a AMQP) validate(v *validator) {
	v.positive("broker.amqp.publish_timeout", a.PublishTimeout)
	u, err := url.Parse(a.URL)
	switch {
	case err != nil:
		// Not err: url.Error quotes the URL, password included.
		v.check(false, "broker.amqp.url is not a valid URL (not shown: it may hold a password); "+
			"percent-encode special characters of the user and password")
	case u.Scheme != "amqp" && u.Scheme != "amqps":
		v.check(false, "broker.amqp.url must start with amqp:// or amqps://, got %q", u.Redacted())
	case u.Host == "":
		v.check(false, "broker.amqp.url must name a host, got %q", u.Redacted())
	}
	v.check(a.Exchange != "", "broker.amqp.exchange must not be empty")
	v.check(len(a.BindingKeys) > 0, "broker.amqp.binding_keys must list at least one key")
	for i, k := range a.BindingKeys {
		v.check(k != "", "broker.amqp.binding_keys[%d] must not be empty", i)
	}
	v.min("broker.amqp.prefetch", a.Prefetch, 1)
	v.check(a.Prefetch <= 65535, "broker.amqp.prefetch must be <= 65535 (AMQP's limit), got %d", a.Prefetch)
	v.min("broker.amqp.channel_pool_size", a.ChannelPoolSize, 1)
	a.TLS.validate(v, "broker.amqp.tls")
}

func (t TLS) validate(v *validator, path string) {
	v.check((t.CertFile == "") == (t.KeyFile == ""),
		"%s.cert_file and %s.key_file must be set together, got cert_file %q and key_file %q", path, path, t.CertFile, t.KeyFile)
}

func (t Topics) validate(v *validator) {
	names := map[string]string{"topics.events": t.Events, "topics.tasks": t.Tasks, "topics.results": t.Results}
	for _, field := range []string{"topics.events", "topics.tasks", "topics.results"} {
		v.check(names[field] != "", "%s must not be empty", field)
	}
	v.check(t.Events == "" || (t.Events != t.Tasks && t.Events != t.Results),
		"topics.events must differ from topics.tasks and topics.results, got %q", t.Events)
	v.check(t.Tasks == "" || t.Tasks != t.Results, "topics.tasks must differ from topics.results, got %q", t.Tasks)
	// An empty suffix would make a topic its own poison topic: a poisoned
	// message would be handled again, forever.
	v.check(t.PoisonSuffix != "", "topics.poison_suffix must not be empty")
}

func (h HTTP) validate(v *validator) {
	host, _, err := net.SplitHostPort(h.Addr)
	if err != nil {
		v.check(false, "http.addr must be host:port, got %q: %v", h.Addr, err)
	} else if h.Token == "" && len(h.Tokens) == 0 && !IsLoopbackHost(host) {
		v.check(false, "http.addr %q listens beyond loopback, so http.token (EVENTPIPE_API_TOKEN) must be set: "+
			"the rules API runs code and must not be open to the network unauthenticated", h.Addr)
	}
	for name, tok := range h.Tokens {
		v.check(name != "" && tok != "", "http.tokens: every entry needs a name and a token, got %q", name)
	}
	v.check(h.MaxBodyBytes >= 1, "http.max_body_bytes must be >= 1, got %d", h.MaxBodyBytes)
	v.check(h.MaxBatchBytes >= 1, "http.max_batch_bytes must be >= 1, got %d", h.MaxBatchBytes)
	v.positive("http.read_timeout", h.ReadTimeout)
	v.positive("http.write_timeout", h.WriteTimeout)
	v.positive("http.idle_timeout", h.IdleTimeout)
}

// IsLoopbackHost reports whether host (from host:port, without brackets)
// only accepts local connections: localhost (any case) or a loopback IP,
// IPv4-mapped included. "" and unspecified addresses listen on every
// interface. The API server uses it too, so both agree on what is local.
func IsLoopbackHost(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.Unmap().IsLoopback()
}

// validator collects problems instead of stopping at the first.
type validator struct{ errs []error }

func (v *validator) check(ok bool, format string, args ...any) {
	if !ok {
		v.errs = append(v.errs, fmt.Errorf(format, args...))
	}
}

func (v *validator) min(field string, got, minimum int) {
	v.check(got >= minimum, "%s must be >= %d, got %d", field, minimum, got)
}

func (v *validator) positive(field string, d time.Duration) {
	v.check(d > 0, "%s must be > 0, got %s", field, d)
}

func (v *validator) oneOf(field, got string, allowed ...string) {
	v.check(slices.Contains(allowed, got), "%s must be one of %s, got %q", field, strings.Join(allowed, ", "), got)
}

func (v *validator) hostPort(field, got string) {
	host, port, err := net.SplitHostPort(got)
	v.check(err == nil && host != "" && port != "", "%s must be host:port, got %q", field, got)
}

// redactURL hides a URL's password in error messages.
func redactURL(raw string) string {
	if u, err := url.Parse(raw); err == nil {
		return u.Redacted()
	}
	return "(unparsable url)"
}
