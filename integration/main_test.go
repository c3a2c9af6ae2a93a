package integration_test

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/testcontainers/testcontainers-go"
	tckafka "github.com/testcontainers/testcontainers-go/modules/kafka"
	tcrabbitmq "github.com/testcontainers/testcontainers-go/modules/rabbitmq"
	"github.com/twmb/franz-go/pkg/kfake"
)

// Environment variables that point the tests at brokers of your own.
const (
	envKafkaBrokers = "EVENTPIPE_TEST_KAFKA_BROKERS"
	envAMQPURL      = "EVENTPIPE_TEST_AMQP_URL"
)

// Container images for the testcontainers provider.
const (
	kafkaImage    = "confluentinc/confluent-local:7.5.0"
	rabbitmqImage = "rabbitmq:3.12.11-management-alpine"
)

// provider is one broker the tests share (TestMain), or why there is none.
type provider struct {
	kind   string // "kafka" or "amqp"
	source string // where the broker comes from, for logs
	// kafkaBrokers or amqpURL, by kind.
	kafkaBrokers []string
	amqpURL      string
	// skip says why there is no broker and how to get one; "" = available.
	skip string
	// external is true when the broker outlives the test run (env or
	// container): tests delete what they create.
	external bool
	// restart stops and starts the broker (AMQP), nil when not possible.
	restart     func(ctx context.Context) error
	restartSkip string
	close       func()
}

var kafkaProvider, amqpProvider *provider

func TestMain(m *testing.M) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	kafkaProvider = newKafkaProvider(ctx)
	amqpProvider = newAMQPProvider(ctx)
	cancel()
	fmt.Fprintf(os.Stderr, "integration: kafka from %s, amqp from %s\n", kafkaProvider.describe(), amqpProvider.describe())
	code := m.Run()
	for _, p := range []*provider{kafkaProvider, amqpProvider} {
		if p.close != nil {
			p.close()
		}
	}
	os.Exit(code)
}

func (p *provider) describe() string {
	if p.skip != "" {
		return "nowhere (" + p.skip + ")"
	}
	return p.source
}

// require returns p's broker or skips t saying how to provide one; under
// CI=true a missing broker fails t instead, so CI never passes by skipping.
func (p *provider) require(t testing.TB) *provider {
	t.Helper()
	if p.skip != "" {
		skipOrFail(t, "%s broker unavailable: %s", p.kind, p.skip)
	}
	return p
}

// skipOrFail skips t, or fails it under CI=true.
func skipOrFail(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("CI=true forbids skipping: "+format, args...)
	}
	t.Skipf(format, args...)
}

func newKafkaProvider(ctx context.Context) *provider {
	p := &provider{kind: "kafka"}
	if env := os.Getenv(envKafkaBrokers); env != "" {
		p.source, p.kafkaBrokers, p.external = envKafkaBrokers, strings.Split(env, ","), true
		return p
	}
	if dockerHealthy(ctx) {
		c, err := tckafka.Run(ctx, kafkaImage, tckafka.WithClusterID("eventpipe-test"))
		if err == nil {
			brokers, berr := c.Brokers(ctx)
			if berr == nil {
				p.source, p.kafkaBrokers, p.external = "testcontainers "+kafkaImage, brokers, true
				p.close = func() { _ = testcontainers.TerminateContainer(c) }
				return p
			}
			err = berr
			_ = testcontainers.TerminateContainer(c)
		}
		fmt.Fprintf(os.Stderr, "integration: kafka container failed, using kfake: %v\n", err)
	}
	c, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		p.skip = fmt.Sprintf("in-process kfake did not start: %v; set %s=host:port", err, envKafkaBrokers)
		return p
	}
	p.source, p.kafkaBrokers, p.close = "in-process kfake", c.ListenAddrs(), c.Close
	return p
}

func newAMQPProvider(ctx context.Context) *provider {
	p := &provider{kind: "amqp"}
	if env := os.Getenv(envAMQPURL); env != "" {
		p.source, p.amqpURL, p.external = envAMQPURL, env, true
		p.restart, p.restartSkip = localRabbitRestart(env)
		return p
	}
	if dockerHealthy(ctx) {
		c, err := tcrabbitmq.Run(ctx, rabbitmqImage)
		if err == nil {
			u, uerr := c.AmqpURL(ctx)
			if uerr == nil {
				p.source, p.amqpURL, p.external = "testcontainers "+rabbitmqImage, u, true
				p.close = func() { _ = testcontainers.TerminateContainer(c) }
				p.restart = func(ctx context.Context) error {
					for _, cmd := range []string{"stop_app", "start_app"} {
						if code, _, err := c.Exec(ctx, []string{"rabbitmqctl", cmd}); err != nil || code != 0 {
							return fmt.Errorf("rabbitmqctl %s in container: exit %d, %v", cmd, code, err)
						}
					}
					return nil
				}
				return p
			}
			err = uerr
			_ = testcontainers.TerminateContainer(c)
		}
		p.skip = fmt.Sprintf("RabbitMQ container failed (%v); set %s", err, envAMQPURL)
		return p
	}
	p.skip = fmt.Sprintf("set %s=amqp://guest:guest@127.0.0.1:5672/ (a local RabbitMQ: `rabbitmq-server -detached`), or run Docker for testcontainers",
		envAMQPURL)
	return p
}

// dockerHealthy is testcontainers.SkipIfProviderIsNotHealthy without a
// *testing.T: testcontainers panics when there is no Docker at all.
func dockerHealthy(ctx context.Context) (ok bool) {
	defer func() {
		if recover() != nil {
			ok = false
		}
	}()
	p, err := testcontainers.ProviderDocker.GetProvider()
	if err != nil {
		return false
	}
	defer p.Close()
	return p.Health(ctx) == nil
}

// localRabbitRestart restarts a RabbitMQ on this host with rabbitmqctl
// stop_app / start_app, when the URL is a loopback one and rabbitmqctl
// reaches the node.
func localRabbitRestart(rawURL string) (func(context.Context) error, string) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, "cannot parse " + envAMQPURL
	}
	ip := net.ParseIP(u.Hostname())
	if u.Hostname() != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return nil, "the restart test runs `rabbitmqctl stop_app/start_app` and needs RabbitMQ on this host (loopback URL)"
	}
	if _, err := exec.LookPath("rabbitmqctl"); err != nil {
		return nil, "rabbitmqctl not found: install rabbitmq-server (apt-get install -y rabbitmq-server)"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "rabbitmqctl", "-q", "status").CombinedOutput(); err != nil {
		return nil, fmt.Sprintf("rabbitmqctl cannot reach the node (run as root or the rabbitmq user): %v: %s", err, firstLine(out))
	}
	return func(ctx context.Context) error {
		for _, cmd := range []string{"stop_app", "start_app"} {
			if out, err := exec.CommandContext(ctx, "rabbitmqctl", "-q", cmd).CombinedOutput(); err != nil {
				return fmt.Errorf("rabbitmqctl %s: %w: %s", cmd, err, out)
			}
		}
		return nil
	}, ""
}

func firstLine(b []byte) string {
	s, _, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
	return s
}
