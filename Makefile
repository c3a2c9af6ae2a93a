# eventpipe — see README.md. `make run` and `make test` are the two commands that matter.
GO       ?= go
BIN      ?= bin/eventpipe
CONFIG   ?= config/eventpipe.yaml
FUZZTIME ?= 30s
PKGS      = ./...

PROMTOOL ?= promtool

# The integration suite finds RabbitMQ here (scripts/test-deps.sh starts it).
export EVENTPIPE_TEST_AMQP_URL ?= amqp://guest:guest@127.0.0.1:5672/

.PHONY: bench-amqp bench-kafka build run test test-unit test-integration test-race bench fuzz lint fmt tidy examples rules-check smoke-prometheus docker-build test-faults test-deps

build:
	$(GO) build -trimpath -o $(BIN) ./cmd/eventpipe

run: build
	./$(BIN) run --config $(CONFIG)

# test is what CI runs (.ci/run): vet, every test package, the examples must
# build, the Prometheus rules pass promtool, and a real Prometheus scrapes a
# running pipeline under load.
test: test-deps lint examples rules-check test-unit test-integration smoke-prometheus test-faults

# test-deps installs (as root, with apt-get) and starts what the tests need.
test-deps:
	scripts/test-deps.sh

test-unit:
	$(GO) test -count=1 $$($(GO) list ./... | grep -v /integration)

test-integration:
	$(GO) test -count=1 -timeout 20m ./integration/...

test-race:
	$(GO) test -race -count=1 $(PKGS)

examples:
	$(GO) build -o /dev/null ./examples/...

# bench prints the benchmarks that carry the performance goals, with allocations.
bench:
	$(GO) test -run '^$$' -bench 'BenchmarkEngineMatch|BenchmarkCondition' -benchmem ./rules/
	$(GO) test -run '^$$' -bench 'BenchmarkParse' -benchmem ./event/
	$(GO) test -run '^$$' -bench 'BenchmarkStoreWrite' -benchmem -benchtime 20000x ./history/
	$(GO) test -run '^$$' -bench 'BenchmarkStore_update_one_rule' -benchmem -benchtime 40x ./rulestore/
	$(GO) test -run '^$$' -bench 'BenchmarkEndToEnd$$' -benchmem -benchtime 20000x ./pipeline/ | tee /tmp/eventpipe-bench.txt
	@awk '/BenchmarkEndToEnd\/embedded\/pipeline-/ {p=$$3} /BenchmarkEndToEnd\/embedded\/pipeline_metrics_off/ {o=$$3} \
	  /BenchmarkEndToEnd\/embedded\/raw_router/ {r=$$3} \
	  /BenchmarkEndToEnd\/embedded\/pipeline_history_off-/ {f=$$3} /BenchmarkEndToEnd\/embedded\/pipeline_history-/ {h=$$3} \
	  /BenchmarkEndToEnd\/embedded\/pipeline_history_written-/ {w=$$3} \
	  END { if (p && r) printf "embedded pipeline/raw_router time ratio: %.2fx (pipeline %s ns/op, raw %s ns/op)\n", p/r, p, r; \
	        if (p && o) printf "embedded metrics off/on speed ratio: %.2f\n", o/p; \
	        if (f && h) printf "embedded history on/off speed ratio: %.2f (written in the background), %.2f (until written)\n", f/h, f/w }' /tmp/eventpipe-bench.txt
	$(GO) test -run '^$$' -bench 'BenchmarkEndToEndTracing' -benchmem -benchtime 20000x -count 3 ./pipeline/ | tee /tmp/eventpipe-bench-tracing.txt
	@awk 'function m(u) { for (i = 1; i < NF; i++) if ($$(i+1) == u) return $$i } \
	  /tracing_off-/ {off += m("cpu-µs/event"); offn++; offa = m("allocs/op")} /tracing_on-/ {on += m("cpu-µs/event"); onn++; ona = m("allocs/op")} \
	  END { if (offn && onn) printf "embedded tracing on/off speed ratio (cpu per event): %.2f (off %.1f cpu-µs/event %d allocs, on %.1f cpu-µs/event %d allocs)\n", (off/offn)/(on/onn), off/offn, offa, on/onn, ona }' /tmp/eventpipe-bench-tracing.txt
	$(MAKE) bench-kafka
	$(MAKE) bench-amqp

# bench-kafka: eventpipe on Kafka (a kfake process) against a bare franz-go
# client in the same run, then 10 ms tasks at executor concurrency 8/64/256.
bench-kafka:
	$(GO) test -run '^$$' -bench 'BenchmarkKafka$$' -benchmem -benchtime 50000x ./integration/ | tee /tmp/eventpipe-bench-kafka.txt
	@awk 'function m(u) { for (i = 1; i < NF; i++) if ($$(i+1) == u) return $$i } \
	  /BenchmarkKafka\/raw/ {r = m("events/s"); rc = m("cpu-µs/event")} \
	  /BenchmarkKafka\/eventpipe/ {p = m("events/s"); pc = m("cpu-µs/event"); pa = m("allocs/op")} \
	  END { if (r && p) printf "kafka eventpipe/raw throughput ratio: %.2f (eventpipe %.0f events/s at %.1f cpu-µs/event, %d allocs/event; raw %.0f events/s at %.1f cpu-µs/event)\n", p/r, p, pc, pa, r, rc }' /tmp/eventpipe-bench-kafka.txt
	$(GO) test -run '^$$' -bench 'BenchmarkKafkaSlowTasks' -benchmem -benchtime 10000x ./integration/ | tee /tmp/eventpipe-bench-kafka-slow.txt
	@awk 'function m(u) { for (i = 1; i < NF; i++) if ($$(i+1) == u) return $$i } \
	  /BenchmarkKafkaSlowTasks\// { printf "%s: %.0f tasks/s = %.2f of concurrency / 10 ms\n", $$1, m("events/s"), m("events/s") / m("ideal-tasks/s") }' /tmp/eventpipe-bench-kafka-slow.txt

# bench-amqp runs, on the local RabbitMQ, a raw amqp091-go pipelined baseline
# and eventpipe with the shipped defaults, and prints their summary lines.
bench-amqp:
	EVENTPIPE_TEST_AMQP_URL=$${EVENTPIPE_TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/} \
	  $(GO) test -run '^$$' -bench 'BenchmarkAMQPEndToEnd' -benchmem -benchtime 20000x ./integration/ | tee /tmp/eventpipe-bench-amqp.txt
	@grep '^bench-amqp ' /tmp/eventpipe-bench-amqp.txt

# fuzz runs every fuzz target for FUZZTIME each. Minimizing a new
# interesting input may otherwise take 60 s (the default), counted in
# FUZZTIME but not in execs: bound it so a short run keeps fuzzing.
FUZZFLAGS ?= -fuzzminimizetime 200x
fuzz:
	$(GO) test ./event/ -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) $(FUZZFLAGS)
	$(GO) test ./rules/ -run '^$$' -fuzz '^FuzzRender$$' -fuzztime $(FUZZTIME) $(FUZZFLAGS)
	$(GO) test ./rules/ -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) $(FUZZFLAGS)
	$(GO) test ./rules/ -run '^$$' -fuzz '^FuzzConditionBudget$$' -fuzztime $(FUZZTIME) $(FUZZFLAGS)
	$(GO) test ./executor/ -run '^$$' -fuzz '^FuzzTaskParameters$$' -fuzztime $(FUZZTIME) $(FUZZFLAGS)
	$(GO) test ./api/ -run '^$$' -fuzz '^FuzzEvents$$' -fuzztime $(FUZZTIME) $(FUZZFLAGS)
	$(GO) test ./api/ -run '^$$' -fuzz '^FuzzRulesTest$$' -fuzztime $(FUZZTIME) $(FUZZFLAGS)
	$(GO) test ./api/ -run '^$$' -fuzz '^FuzzRulesCreate$$' -fuzztime $(FUZZTIME) $(FUZZFLAGS)

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }
	$(GO) vet $(PKGS)
	$(GO) vet -tags faults ./faults/

fmt:
	gofmt -w $$(git ls-files '*.go')

tidy:
	$(GO) mod tidy

# rules-check validates the Prometheus alert/recording rules and runs their promtool unit tests.
rules-check:
	$(PROMTOOL) check rules deploy/prometheus/alerts.yml deploy/prometheus/recording.yml
	$(PROMTOOL) test rules deploy/prometheus/tests.yml

# smoke-prometheus runs a real Prometheus against eventpipe under load and
# requires queue_backlog to be exported.
smoke-prometheus:
	STRICT_BACKLOG=1 scripts/prometheus-smoke.sh

# docker-build builds the container image (needs a Docker engine; not available on the project's machines).
docker-build:
	docker build -f deploy/Dockerfile -t eventpipe:dev .

# test-faults drives the real eventpipe binary as child processes through
# crashes, broker restarts, refused publishes, poison inputs and SIGTERM, on
# Kafka (kfake processes) and RabbitMQ, and prints the scenario table. It needs
# RabbitMQ on 127.0.0.1:5672 with rabbitmqctl (run as root) and Redis on
# 127.0.0.1:6379, and restarts RabbitMQ: run it alone. FAULTS_SEED=N repeats a
# run's random choices (its seed is printed).
FAULTS_REPORT ?= $(CURDIR)/bin/faults-report.md
test-faults:
	@mkdir -p $(dir $(FAULTS_REPORT))
	FAULTS_REPORT=$(FAULTS_REPORT) $(GO) test -tags faults -count=1 -timeout 15m ./faults/; \
	  status=$$?; cat $(FAULTS_REPORT) 2>/dev/null; exit $$status
