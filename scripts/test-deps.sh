#!/usr/bin/env bash
# test-deps.sh installs and starts what `make test` needs on a fresh Debian
# machine: promtool and Prometheus (rule checks, smoke test), RabbitMQ and
# the outside clients kcat / amqp-publish (integration and fault suites),
# Redis (redis de-duplication store). Installing needs root (apt-get); on a
# machine that has everything it only checks, and starts what is stopped.
set -euo pipefail

need=""
have() { command -v "$1" >/dev/null 2>&1; }
have promtool || need="$need prometheus"
have jq || need="$need jq"
have curl || need="$need curl"
have rabbitmq-server || need="$need rabbitmq-server"
have kcat || need="$need kcat"
have amqp-publish || need="$need amqp-tools"
have redis-server || need="$need redis-server"
have pg_ctlcluster || need="$need postgresql"
have chromium || need="$need chromium"
if [ -n "$need" ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "test-deps: missing:$need — install them (apt-get install -y$need) or run as root" >&2
    exit 1
  fi
  echo "test-deps: installing$need"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need >/dev/null
fi

if ! rabbitmqctl -q status >/dev/null 2>&1; then
  echo "test-deps: starting RabbitMQ"
  rabbitmq-server -detached
fi
timeout 120 rabbitmqctl -q await_startup || { echo "test-deps: RabbitMQ did not start" >&2; exit 1; }

if ! redis-cli -h 127.0.0.1 ping >/dev/null 2>&1; then
  echo "test-deps: starting Redis"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
fi
timeout 30 sh -c 'until redis-cli -h 127.0.0.1 ping >/dev/null 2>&1; do sleep 1; done' \
  || { echo "test-deps: Redis did not start" >&2; exit 1; }
# PostgreSQL (history store tests): started, with the role and database they use, created once.
if ! pg_isready -q -h 127.0.0.1 -p 5432; then
  echo "test-deps: starting PostgreSQL"
  pg_lsclusters -h | while read -r ver name _; do pg_ctlcluster "$ver" "$name" start || true; done
fi
timeout 60 sh -c 'until pg_isready -q -h 127.0.0.1 -p 5432; do sleep 1; done' \
  || { echo "test-deps: PostgreSQL did not start" >&2; exit 1; }
if [ "$(id -u)" = 0 ]; then
  runuser -u postgres -- psql -q -v ON_ERROR_STOP=1 -d postgres <<'SQL'
SELECT 'CREATE ROLE eventpipe LOGIN PASSWORD ''eventpipe''' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'eventpipe')\gexec
SELECT 'CREATE DATABASE eventpipe_test OWNER eventpipe' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'eventpipe_test')\gexec
SQL
fi
echo "test-deps: promtool, RabbitMQ, Redis, PostgreSQL, kcat and amqp-publish ready"
