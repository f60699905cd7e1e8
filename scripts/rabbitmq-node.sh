#!/usr/bin/env bash
# Starts or stops a private RabbitMQ node beside the default one, for restart, chaos and
# cluster tests. It never touches the default node on 5672.
#
#   scripts/rabbitmq-node.sh start NAME PORT [DIR]   # e.g. start chaos 5690
#   scripts/rabbitmq-node.sh stop  NAME [DIR]
#   scripts/rabbitmq-node.sh ctl   NAME [DIR] -- rabbitmqctl args...
#
# Each node gets its own node name (NAME@localhost), AMQP port, Erlang distribution port
# (PORT + 20000), data, logs and config under DIR (default /tmp/inqubo-nodes/NAME), no plugins,
# and a private Erlang cookie shared by all nodes under the same parent folder.
set -euo pipefail

bin=/usr/lib/rabbitmq/bin
command=${1:?start|stop|ctl}
name=${2:?node name}

node_env() {
    local dir=$1 port=$2
    local parent
    parent=$(dirname "$dir")
    mkdir -p "$dir/mnesia" "$dir/log" "$parent/home"
    if [ ! -f "$parent/home/.erlang.cookie" ]; then
        head -c 20 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$parent/home/.erlang.cookie"
        chmod 400 "$parent/home/.erlang.cookie"
    fi
    [ -f "$dir/enabled_plugins" ] || echo '[].' > "$dir/enabled_plugins"
    [ -f "$dir/rabbitmq.conf" ] || : > "$dir/rabbitmq.conf"
    # At-least-once dead-lettering (the retry delay tiers) re-sends a message whose forward was
    # not confirmed after this long; RabbitMQ's default is 180 s. After a restart or a leader
    # change a forward can go unconfirmed, and the retry waits this long: see
    # docs/reliability.md, "Retries stranded by a restart".
    [ -f "$dir/advanced.config" ] || echo "[{rabbit, [{dead_letter_worker_publisher_confirm_timeout, ${INQUBO_DLX_CONFIRM_TIMEOUT_MS:-10000}}]}]." > "$dir/advanced.config"
    export RABBITMQ_ADVANCED_CONFIG_FILE="$dir/advanced.config"
    export HOME="$parent/home"
    export RABBITMQ_NODENAME="$name@localhost"
    export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
    if [ -n "$port" ]; then
        export RABBITMQ_NODE_PORT=$port
        export RABBITMQ_DIST_PORT=$((port + 20000))
    fi
    export RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf"
    export RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins"
    export RABBITMQ_MNESIA_BASE="$dir/mnesia"
    export RABBITMQ_LOG_BASE="$dir/log"
    export RABBITMQ_PID_FILE="$dir/pid"
    export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
}

case "$command" in
start)
    port=${3:?AMQP port}
    dir=${4:-/tmp/inqubo-nodes/$name}
    node_env "$dir" "$port"
    "$bin/rabbitmq-server" -detached >/dev/null 2>&1 || true
    for _ in $(seq 1 60); do
        if "$bin/rabbitmqctl" -n "$RABBITMQ_NODENAME" await_startup >/dev/null 2>&1; then
            echo "node $RABBITMQ_NODENAME up on 127.0.0.1:$port" >&2
            exit 0
        fi
        sleep 1
    done
    echo "node $RABBITMQ_NODENAME did not start; see $dir/log" >&2
    exit 1
    ;;
stop)
    dir=${3:-/tmp/inqubo-nodes/$name}
    node_env "$dir" ""
    "$bin/rabbitmqctl" -n "$RABBITMQ_NODENAME" stop >/dev/null 2>&1 || true
    echo "node $RABBITMQ_NODENAME stopped" >&2
    ;;
ctl)
    dir=${3:-/tmp/inqubo-nodes/$name}
    shift 3
    [ "${1:-}" = "--" ] && shift
    node_env "$dir" ""
    exec "$bin/rabbitmqctl" -n "$RABBITMQ_NODENAME" "$@"
    ;;
*)
    echo "usage: $0 start NAME PORT [DIR] | stop NAME [DIR] | ctl NAME DIR -- ARGS" >&2
    exit 2
    ;;
esac
