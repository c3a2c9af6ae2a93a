#!/usr/bin/env bash
# Deletes the queues and exchanges integration tests left behind on a local
# RabbitMQ (only a test killed before its cleanup leaves any). Test names
# start with it-<id>- (eventpipe's tests) or topic- (Watermill's universal
# suite). Needs rabbitmqctl, run as root or the rabbitmq user; vhost "/".
set -euo pipefail
rabbitmqctl -q list_queues name | { grep -E '^(it-|topic-)' || true; } | while read -r q; do
  rabbitmqctl -q delete_queue "$q" </dev/null >/dev/null && echo "deleted queue $q"
done
# rabbitmqctl has no delete_exchange; rabbit_exchange:delete/3 is the 3.x API.
rabbitmqctl -q list_exchanges name | { grep -E '^(it-|topic-)' || true; } | while read -r x; do
  rabbitmqctl -q eval "rabbit_exchange:delete(rabbit_misc:r(<<\"/\">>, exchange, <<\"$x\">>), false, <<\"cleanup\">>)." \
    </dev/null >/dev/null && echo "deleted exchange $x"
done
