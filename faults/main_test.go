//go:build faults

package faults_test

import (
	"context"
	"fmt"
	"hash/fnv"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
	"github.com/redis/go-redis/v9"
)

// What the suite runs against; the environment variables point it elsewhere.
var (
	amqpURL  = envOr("FAULTS_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
	redisURL = envOr("FAULTS_REDIS_URL", "redis://127.0.0.1:6379/0")
)

// Set by TestMain.
var (
	eventpipeBin string // the eventpipe binary under test
	kfakeBin     string // cmd/kfake
	ledgerScript string // absolute path of testdata/ledger.sh
	seed         uint64 // of every random choice; FAULTS_SEED repeats a run
	// Why a dependency is missing ("" = present).
	amqpMissing, redisMissing, rabbitctlMissing string
	results                                     = &table{}
)

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "eventpipe-faults-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "faults:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	eventpipeBin, kfakeBin = filepath.Join(dir, "eventpipe"), filepath.Join(dir, "kfake")
	for bin, pkg := range map[string]string{eventpipeBin: "../cmd/eventpipe", kfakeBin: "./cmd/kfake"} {
		if out, err := exec.Command(goTool(), "build", "-o", bin, pkg).CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "faults: go build %s: %v\n%s", pkg, err, out)
			return 1
		}
	}
	if ledgerScript, err = filepath.Abs("testdata/ledger.sh"); err != nil {
		fmt.Fprintln(os.Stderr, "faults:", err)
		return 1
	}
	seed = uint64(time.Now().UnixNano())
	if s := os.Getenv("FAULTS_SEED"); s != "" {
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			fmt.Fprintf(os.Stderr, "faults: FAULTS_SEED must be an unsigned integer, got %q\n", s)
			return 1
		}
	}
	amqpMissing, redisMissing, rabbitctlMissing = probeAMQP(), probeRedis(), probeRabbitctl()
	fmt.Fprintf(os.Stderr, "faults: seed %d (FAULTS_SEED=%d repeats the random choices); RabbitMQ %s; Redis %s; rabbitmqctl %s\n",
		seed, seed, orOK(amqpMissing), orOK(redisMissing), orOK(rabbitctlMissing))

	code := m.Run()
	results.write(os.Stdout)
	if path := os.Getenv("FAULTS_REPORT"); path != "" {
		f, err := os.Create(path)
		if err == nil {
			results.write(f)
			err = f.Close()
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "faults: report:", err)
		}
	}
	return code
}

func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return filepath.Join(runtime.GOROOT(), "bin", "go")
}

func orOK(missing string) string {
	if missing == "" {
		return "ok"
	}
	return "missing: " + missing
}

func probeAMQP() string {
	conn, err := amqp091.DialConfig(amqpURL, amqp091.Config{Dial: amqp091.DefaultDial(5 * time.Second)})
	if err != nil {
		return fmt.Sprintf("%s: %v (start it with `rabbitmq-server -detached`, or set FAULTS_AMQP_URL)", redact(amqpURL), err)
	}
	_ = conn.Close()
	return ""
}

func probeRedis() string {
	opts, err := redis.ParseURL(redisURL)
	if err != nil {
		return fmt.Sprintf("FAULTS_REDIS_URL: %v", err)
	}
	c := redis.NewClient(opts)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Ping(ctx).Err(); err != nil {
		return fmt.Sprintf("%s: %v (start it with `redis-server --daemonize yes`, or set FAULTS_REDIS_URL)", opts.Addr, err)
	}
	return ""
}

// probeRabbitctl checks that rabbitmqctl reaches the RabbitMQ the suite
// uses: the broker restart and publish failure scenarios drive it.
func probeRabbitctl() string {
	if !strings.Contains(amqpURL, "@127.0.0.1:") && !strings.Contains(amqpURL, "@localhost:") {
		return "FAULTS_AMQP_URL is not a RabbitMQ on this host, which rabbitmqctl needs"
	}
	if _, err := exec.LookPath("rabbitmqctl"); err != nil {
		return "rabbitmqctl not on PATH (apt-get install -y rabbitmq-server)"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "rabbitmqctl", "-q", "status").CombinedOutput(); err != nil {
		return fmt.Sprintf("rabbitmqctl cannot reach the node (run as root): %v: %s", err, firstLine(out))
	}
	return ""
}

func firstLine(b []byte) string {
	s, _, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
	return s
}

func redact(rawURL string) string {
	if at := strings.LastIndex(rawURL, "@"); at > 0 {
		if scheme := strings.Index(rawURL, "://"); scheme >= 0 && scheme < at {
			return rawURL[:scheme+3] + "…" + rawURL[at:]
		}
	}
	return rawURL
}

// need skips t when a dependency is missing, or fails it under CI=true:
// CI never passes by skipping.
func need(t *testing.T, what, missing string) {
	t.Helper()
	if missing == "" {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("CI=true forbids skipping: %s unavailable: %s", what, missing)
	}
	t.Skipf("%s unavailable: %s", what, missing)
}

// rng returns the random source of one test: the run's seed mixed with
// the test's name, so parallel tests draw the same numbers in every run
// with that seed.
func rng(t *testing.T) *rand.Rand {
	h := fnv.New64a()
	_, _ = h.Write([]byte(t.Name()))
	return rand.New(rand.NewPCG(seed, h.Sum64()))
}

// row is one scenario run in the report.
type row struct {
	order      int // scenario order in the table
	Scenario   string
	Broker     string
	Sent       int // messages sent to the pipeline (events, plus raw tasks where a scenario sends some)
	Expected   int // task executions expected (distinct task ids)
	Executed   int // distinct expected task ids executed
	Runs       int // executions of expected task ids (ledger lines)
	Duplicates int // Runs - Executed
	Poisoned   int // messages on the .dlq topics at the end
	Lost       int // Expected - Executed
	Seconds    float64
	Notes      string
}

// table collects the rows of a run.
type table struct {
	mu   sync.Mutex
	rows []row
}

func (tb *table) add(r row) {
	tb.mu.Lock()
	defer tb.mu.Unlock()
	tb.rows = append(tb.rows, r)
}

// write prints the rows as a Markdown table, in scenario order.
func (tb *table) write(w io.Writer) {
	tb.mu.Lock()
	rows := slices.Clone(tb.rows)
	tb.mu.Unlock()
	if len(rows) == 0 {
		return
	}
	slices.SortStableFunc(rows, func(a, b row) int {
		if a.order != b.order {
			return a.order - b.order
		}
		return strings.Compare(a.Broker, b.Broker)
	})
	fmt.Fprintf(w, "\nfault suite results (seed %d)\n\n", seed)
	fmt.Fprintln(w, "| scenario | broker | sent | expected tasks | executed | executions | duplicate executions | poisoned | lost | seconds | notes |")
	fmt.Fprintln(w, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
	for _, r := range rows {
		fmt.Fprintf(w, "| %s | %s | %d | %d | %d | %d | %d | %d | %d | %.0f | %s |\n", r.Scenario, r.Broker, r.Sent, r.Expected,
			r.Executed, r.Runs, r.Duplicates, r.Poisoned, r.Lost, r.Seconds, r.Notes)
	}
}
