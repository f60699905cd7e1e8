#!/usr/bin/env bash
# Runs the quickstart example, starting (or installing) RabbitMQ first if needed.
# Arguments are passed to the example: `scripts/quickstart.sh --serve`, `--fail-times 2`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/rabbitmq.sh
if [ -z "${AMQP_URL:-}" ]; then
    ensure_rabbitmq
fi
exec cargo run --locked --example quickstart -- "$@"
