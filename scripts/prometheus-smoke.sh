#!/usr/bin/env bash
# prometheus-smoke.sh: runs eventpipe (embedded broker) and a real Prometheus
# (Debian's package) scraping it every second with deploy/prometheus/*.yml
# loaded, sends events for LOAD_SECONDS, then asserts through Prometheus's
# HTTP API that:
#   - the eventpipe target is up;
#   - every alert and recording rule loaded and evaluates with health "ok";
#   - rate(message_processed_total[15s]) > 0 and message_processed_total rises
#     between two queries taken during the load;
#   - task_trigger_success_rate (recording rule) has a value in [0, 1];
#   - every query of deploy/grafana/dashboard.json evaluates without error;
#   - queue_backlog is present. The pipeline has no backlog source yet, so a
#     missing queue_backlog is reported as WARN and fails the run only with
#     STRICT_BACKLOG=1.
# Both processes are stopped on exit. Run from anywhere; on a fresh Debian
# machine it installs prometheus, curl and jq with apt-get when missing.
#
# Environment: LOAD_SECONDS (default 20), BATCH_SIZE (events per POST,
# default 50), STRICT_BACKLOG=1, KEEP_TMP=1 (keep the temp dir and logs).
set -euo pipefail

LOAD_SECONDS=${LOAD_SECONDS:-20}
BATCH_SIZE=${BATCH_SIZE:-50}
STRICT_BACKLOG=${STRICT_BACKLOG:-0}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

log() { printf '%s smoke: %s\n' "$(date +%H:%M:%S)" "$*"; }
failures=0
pass() { log "ok    $*"; }
fail() { log "FAIL  $*"; failures=$((failures + 1)); }
warn() { log "WARN  $*"; }
die() { log "FAIL  $*"; exit 1; }

# ---- tools -----------------------------------------------------------------
need_apt=()
command -v prometheus >/dev/null 2>&1 || need_apt+=(prometheus)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
command -v jq >/dev/null 2>&1 || need_apt+=(jq)
if ((${#need_apt[@]})); then
  log "installing ${need_apt[*]} with apt-get"
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || die "need root or sudo to install ${need_apt[*]}"
    sudo=sudo
  fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
# Debian installs the server as /usr/bin/prometheus.
PROMETHEUS_BIN=$(command -v prometheus)
if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
  export PATH="/usr/local/go/bin:$PATH"
fi
command -v go >/dev/null 2>&1 || die "Go is not installed"

# ---- processes and cleanup -------------------------------------------------
TMP=$(mktemp -d "${TMPDIR:-/tmp}/eventpipe-smoke.XXXXXX")
pids=()
cleanup() {
  local rc=$?
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    for _ in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [ "$rc" -ne 0 ]; then
    # The load's refused tasks log one warning and one poison line each:
    # expected, so left out here (KEEP_TMP=1 keeps the whole log).
    for f in eventpipe.log prometheus.log; do
      [ -s "$TMP/$f" ] && {
        echo "---- last lines of $f (per-task failures of the load left out)"
        grep -vE 'msg="(task failed|message poisoned)"' "$TMP/$f" | tail -n 30
      }
    done
  fi
  if [ "${KEEP_TMP:-0}" = 1 ]; then log "kept $TMP"; else rm -rf "$TMP"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# free_port prints a TCP port on 127.0.0.1 that nothing listens on, below
# the kernel's ephemeral range: a port inside it can become the local port
# of any outgoing connection (eventpipe's broker clients, the load) between
# this check and the bind, which then fails with "address already in use".
free_port() {
  local port low
  low=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
  [ "$low" -gt 11000 ] || low=32768
  for _ in $(seq 1 100); do
    port=$((10000 + (RANDOM * 32768 + RANDOM) % (low - 10000)))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return 0
    fi
  done
  return 1
}

# wait_http URL SECONDS PID waits until URL answers 2xx; fails early if PID died.
wait_http() {
  local url=$1 seconds=$2 pid=$3
  for _ in $(seq 1 $((seconds * 10))); do
    curl -fsS -o /dev/null "$url" 2>/dev/null && return 0
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

# ---- eventpipe ---------------------------------------------------------------
log "building bin/eventpipe"
go build -trimpath -o bin/eventpipe ./cmd/eventpipe

EP_PORT=$(free_port) || die "no free port"
cat >"$TMP/eventpipe.yaml" <<EOF
broker:
  kind: embedded
http:
  addr: 127.0.0.1:$EP_PORT
rules:
  file: $ROOT/examples/rules.yaml
executors:
  shell:
    allowed_commands: [/bin/echo]
log:
  level: warn
EOF
./bin/eventpipe run --config "$TMP/eventpipe.yaml" >"$TMP/eventpipe.log" 2>&1 &
EP_PID=$!
pids+=("$EP_PID")
wait_http "http://127.0.0.1:$EP_PORT/readyz" 30 "$EP_PID" || die "eventpipe not ready on 127.0.0.1:$EP_PORT"
log "eventpipe ready on 127.0.0.1:$EP_PORT (pid $EP_PID)"

# ---- prometheus --------------------------------------------------------------
PROM_PORT=$(free_port) || die "no free port"
while [ "$PROM_PORT" = "$EP_PORT" ]; do PROM_PORT=$(free_port); done
PROM="http://127.0.0.1:$PROM_PORT"
cat >"$TMP/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - $ROOT/deploy/prometheus/alerts.yml
  - $ROOT/deploy/prometheus/recording.yml
scrape_configs:
  - job_name: eventpipe
    static_configs:
      - targets: ["127.0.0.1:$EP_PORT"]
EOF
"$PROMETHEUS_BIN" --config.file="$TMP/prometheus.yml" --storage.tsdb.path="$TMP/data" \
  --web.listen-address="127.0.0.1:$PROM_PORT" --log.level=warn >"$TMP/prometheus.log" 2>&1 &
PROM_PID=$!
pids+=("$PROM_PID")
wait_http "$PROM/-/ready" 60 "$PROM_PID" || die "prometheus not ready on 127.0.0.1:$PROM_PORT"
log "prometheus $("$PROMETHEUS_BIN" --version 2>&1 | head -n1 | awk '{print $3}') ready on 127.0.0.1:$PROM_PORT (pid $PROM_PID)"

# query EXPR prints the API's JSON answer for an instant query.
query() {
  curl -fsS --get "$PROM/api/v1/query" --data-urlencode "query=$1"
}
# scalar EXPR prints the first sample's value, or "" when the result is empty.
scalar() {
  query "$1" | jq -r '.data.result[0].value[1] // empty'
}

# The first scrape comes within a few seconds (Prometheus spreads targets
# over the interval); start the load once the target is seen.
up=""
for _ in $(seq 1 100); do
  up=$(scalar 'up{job="eventpipe"}')
  [ "$up" = 1 ] && break
  sleep 0.2
done
if [ "$up" = 1 ]; then pass "target up{job=\"eventpipe\"} = 1"; else fail "target up{job=\"eventpipe\"} = '${up:-absent}'"; fi

# ---- load --------------------------------------------------------------------
# Each batch has unique message ids (so tasks are not de-duplicated away):
# mostly small orders (log task), every 10th a high-value order (shell
# /bin/echo task, plus the seed's script rule, refused: not on the allowlist),
# and one payment per batch (http task to a host not allowed: poisoned).
make_batch() {
  local n=$1 i amount
  printf '['
  for ((i = 0; i < BATCH_SIZE; i++)); do
    ((i > 0)) && printf ','
    if ((i == BATCH_SIZE - 1)); then
      printf '{"messageId":"smoke-%d-%d","eventType":"payment.completed","source":"smoke","payload":{"orderId":"o-%d-%d","status":"SUCCESS"}}' "$n" "$i" "$n" "$i"
    else
      amount=$((i % 10 == 0 ? 2500 : 100 + i))
      printf '{"messageId":"smoke-%d-%d","eventType":"order.created","source":"smoke","priority":"LOW","payload":{"orderId":"o-%d-%d","customerId":"c-%d","amount":%d},"metadata":{"traceId":"smoke-trace-%d"}}' "$n" "$i" "$n" "$i" "$((i % 7))" "$amount" "$n"
    fi
  done
  printf ']'
}
load() {
  local n=0 end=$((SECONDS + LOAD_SECONDS)) code
  while ((SECONDS < end)); do
    make_batch "$n" >"$TMP/batch.json"
    code=$(curl -sS -o "$TMP/post.out" -w '%{http_code}' -H 'Content-Type: application/json' \
      --data-binary "@$TMP/batch.json" "http://127.0.0.1:$EP_PORT/api/v1/events") || code=000
    if [ "$code" != 202 ]; then
      echo "POST /api/v1/events: HTTP $code $(head -c 300 "$TMP/post.out")" >>"$TMP/load.errors"
    fi
    n=$((n + 1))
    sleep 0.05
  done
  echo "$n" >"$TMP/load.batches"
}
log "sending batches of $BATCH_SIZE events for ${LOAD_SECONDS}s"
load &
LOAD_PID=$!
pids+=("$LOAD_PID")

# ---- assertions during the load ---------------------------------------------
sleep $((LOAD_SECONDS / 3 > 2 ? LOAD_SECONDS / 3 : 2))
first=$(scalar 'sum(message_processed_total)')
sleep $((LOAD_SECONDS / 3 > 2 ? LOAD_SECONDS / 3 : 2))
second=$(scalar 'sum(message_processed_total)')
if [ -n "$first" ] && [ -n "$second" ] && awk -v a="$first" -v b="$second" 'BEGIN { exit !(b > a) }'; then
  pass "message_processed_total rising: $first -> $second"
else
  fail "message_processed_total not rising: '${first:-absent}' -> '${second:-absent}'"
fi

rate=$(scalar 'sum(rate(message_processed_total[15s]))')
if [ -n "$rate" ] && awk -v r="$rate" 'BEGIN { exit !(r > 0) }'; then
  pass "sum(rate(message_processed_total[15s])) = $rate/s"
else
  fail "sum(rate(message_processed_total[15s])) = '${rate:-absent}'"
fi

wait "$LOAD_PID" || true
batches=$(cat "$TMP/load.batches" 2>/dev/null || echo "?")
if [ -s "$TMP/load.errors" ]; then
  fail "$(wc -l <"$TMP/load.errors") of $batches POSTs were not accepted; first: $(head -n1 "$TMP/load.errors")"
else
  pass "$batches POST /api/v1/events batches accepted ($((batches * BATCH_SIZE)) events)"
fi

# ---- rules -------------------------------------------------------------------
# Every rule in our files, loaded and evaluated at least once with health ok
# (health is "unknown" until the first evaluation).
want_rules=$(cat deploy/prometheus/alerts.yml deploy/prometheus/recording.yml | grep -cE '^\s*- (alert|record):')
for _ in $(seq 1 50); do
  curl -fsS "$PROM/api/v1/rules" >"$TMP/rules.json"
  ok=$(jq '[.data.groups[].rules[] | select(.health == "ok")] | length' "$TMP/rules.json")
  [ "$ok" = "$want_rules" ] && break
  sleep 0.2
done
total=$(jq '[.data.groups[].rules[]] | length' "$TMP/rules.json")
bad=$(jq -r '.data.groups[].rules[] | select(.health != "ok") | "\(.name): \(.health) \(.lastError // "")"' "$TMP/rules.json")
if [ "$total" = "$want_rules" ] && [ -z "$bad" ]; then
  pass "$total rules loaded (alerts + recording), all health ok"
else
  fail "rules: $total loaded of $want_rules expected; not ok: ${bad:-none}"
fi
firing=$(jq -r '[.data.groups[].rules[] | select(.type == "alerting" and .state != "inactive") | "\(.name)=\(.state)"] | join(", ")' "$TMP/rules.json")
log "info  alerts pending/firing (informational, for:-durations exceed this run): ${firing:-none}"

success=$(scalar 'task_trigger_success_rate')
if [ -n "$success" ] && awk -v v="$success" 'BEGIN { exit !(v >= 0 && v <= 1) }'; then
  pass "task_trigger_success_rate = $success"
else
  fail "task_trigger_success_rate = '${success:-absent}' (want a value in [0, 1])"
fi

# ---- dashboard queries ---------------------------------------------------------
# $__rate_interval is Grafana's; 15s covers several 1s scrapes.
dash_total=0
dash_bad=0
while IFS= read -r expr; do
  dash_total=$((dash_total + 1))
  q=${expr//\$__rate_interval/15s}
  status=$(curl -sS --get "$PROM/api/v1/query" --data-urlencode "query=$q" | jq -r '.status + " " + (.error // "")')
  if [ "${status%% *}" != success ]; then
    dash_bad=$((dash_bad + 1))
    fail "dashboard query failed: $expr: $status"
  fi
done < <(jq -r '.. | objects | select(has("expr")) | .expr' deploy/grafana/dashboard.json)
if ((dash_total > 0 && dash_bad == 0)); then
  pass "all $dash_total dashboard queries evaluate"
elif ((dash_total == 0)); then
  fail "no queries found in deploy/grafana/dashboard.json"
fi

# ---- backlog -------------------------------------------------------------------
backlog=$(query 'queue_backlog' | jq -r '.data.result | length')
if [ "${backlog:-0}" -gt 0 ]; then
  pass "queue_backlog present ($backlog series)"
elif [ "$STRICT_BACKLOG" = 1 ]; then
  fail "queue_backlog absent: the pipeline exports no backlog yet (STRICT_BACKLOG=1)"
else
  warn "queue_backlog absent: the pipeline exports no backlog yet (set STRICT_BACKLOG=1 to fail on this)"
fi

if ((failures > 0)); then
  log "$failures check(s) failed"
  exit 1
fi
log "all checks passed"
