#!/usr/bin/env bash
# A 3-node RabbitMQ cluster on loopback beside the default broker, for failover tests.
#
#   scripts/cluster.sh start   # nodes inq1..inq3@localhost on 127.0.0.1:5681..5683
#   scripts/cluster.sh test    # start, run the chaos harness and stop node inq1 mid-load, stop
#                              # (RUNS=1000, TIMEOUT=300 s; BACK_AFTER=20 restarts inq1 20 s later;
#                              # WATCHDOG=0 runs without scripts/dlx-watchdog.sh)
#   scripts/cluster.sh stop    # stop the nodes and delete their data
#
# Quorum queues declared on it are replicated on all three nodes. Runners are given all three
# addresses (comma-separated) and fail over between them.
set -euo pipefail
cd "$(dirname "$0")/.."
base=${INQUBO_CLUSTER_DIR:-/tmp/inqubo-cluster}
node() { bash scripts/rabbitmq-node.sh "$@"; }
urls="amqp://guest:guest@127.0.0.1:5681/%2f,amqp://guest:guest@127.0.0.1:5682/%2f,amqp://guest:guest@127.0.0.1:5683/%2f"

start() {
    for i in 1 2 3; do
        node start "inq$i" "568$i" "$base/inq$i" &
    done
    wait
    for i in 2 3; do
        node ctl "inq$i" "$base/inq$i" -- stop_app >/dev/null
        node ctl "inq$i" "$base/inq$i" -- join_cluster inq1@localhost >/dev/null
        node ctl "inq$i" "$base/inq$i" -- start_app >/dev/null
    done
    node ctl inq1 "$base/inq1" -- cluster_status | grep -A4 "Running Nodes" >&2
}

stop() {
    for i in 1 2 3; do
        node stop "inq$i" "$base/inq$i" &
    done
    wait
    rm -rf "$base"
}

case "${1:-}" in
start) start ;;
stop) stop ;;
test)
    trap stop EXIT
    start
    cargo build --locked -p inqubo-chaos
    # inq1 is stopped mid-load and stays down; with BACK_AFTER=N it comes back N seconds later.
    disrupt="bash scripts/rabbitmq-node.sh stop inq1 $base/inq1"
    if [ -n "${BACK_AFTER:-}" ]; then
        disrupt="$disrupt; sleep $BACK_AFTER; bash scripts/rabbitmq-node.sh start inq1 5681 $base/inq1"
    fi
    # RabbitMQ 3.10 needs the dead-letter watchdog once a node is gone (docs/reliability.md);
    # WATCHDOG=0 shows the broker without it.
    if [ "${WATCHDOG:-1}" != 0 ]; then
        INQUBO_RABBITMQCTL="env HOME=$base/home /usr/lib/rabbitmq/bin/rabbitmqctl" \
            bash scripts/dlx-watchdog.sh --every 5 inq1@localhost inq2@localhost inq3@localhost &
        watchdog=$!
        trap 'kill "$watchdog" 2>/dev/null || true; stop' EXIT
    fi
    ./target/debug/inqubo-chaos --url "$urls" --runners 2 --runs "${RUNS:-1000}" --rate 100 --kills 1 \
        --timeout "${TIMEOUT:-300}" --disrupt "$disrupt"
    ;;
*)
    echo "usage: $0 start|test|stop" >&2
    exit 2
    ;;
esac
