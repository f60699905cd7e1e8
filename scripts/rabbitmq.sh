# Sourced by the other scripts: makes sure a RabbitMQ answers on 127.0.0.1:5672.
#
# Installs Debian's rabbitmq-server when it is missing, starts it when it is not answering, and
# waits until the node is up. Set AMQP_ADDR / AMQP_URL to use a broker elsewhere instead.

amqp_port_open() {
    (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

ensure_rabbitmq() {
    if amqp_port_open; then
        return 0
    fi
    if ! command -v rabbitmq-server >/dev/null 2>&1 && [ ! -x /usr/sbin/rabbitmq-server ]; then
        echo "RabbitMQ is not installed; installing Debian's rabbitmq-server" >&2
        as_root apt-get update -q
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q rabbitmq-server
    fi
    if amqp_port_open; then
        return 0
    fi
    echo "starting RabbitMQ" >&2
    as_root rabbitmq-server -detached || true
    # `-detached` returns before the node is up, and await_startup can fail if called too early.
    for _ in $(seq 1 30); do
        if as_root rabbitmqctl await_startup >/dev/null 2>&1 && amqp_port_open; then
            echo "RabbitMQ is up" >&2
            return 0
        fi
        sleep 1
    done
    echo "RabbitMQ did not start; see /var/log/rabbitmq/" >&2
    return 1
}
