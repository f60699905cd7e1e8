#!/usr/bin/env bash
# Runs every test of the workspace against a real RabbitMQ, starting (or installing) it first.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/rabbitmq.sh
if [ -z "${AMQP_ADDR:-}" ]; then
    ensure_rabbitmq
fi
if ! cargo nextest --version >/dev/null 2>&1; then
    echo "installing cargo-nextest" >&2
    cargo install --locked cargo-nextest
fi
cargo nextest run --workspace --locked --no-fail-fast
# nextest does not run doc tests.
cargo test --doc --workspace --locked
