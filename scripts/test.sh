#!/usr/bin/env bash
# Runs every test of the workspace against a real RabbitMQ, starting (or installing) it first.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/rabbitmq.sh
if [ -z "${AMQP_ADDR:-}" ]; then
    ensure_rabbitmq
fi
# The run-history tests need a PostgreSQL server they may create databases on.
if [ -z "${INQUBO_TEST_POSTGRES:-}" ] && ! (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; then
    echo "PostgreSQL is not answering on 127.0.0.1:5432; installing and starting Debian's" >&2
    as_root apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql
    version=$(ls /etc/postgresql | sort -V | tail -1)
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    as_root su postgres -c "psql -q -c \"ALTER USER postgres PASSWORD 'postgres'\""
    export INQUBO_TEST_POSTGRES="postgres://postgres:postgres@127.0.0.1:5432/postgres"
fi
# The dashboard test drives a headless Chromium.
if [ -z "${CHROMIUM:-}" ] && ! command -v chromium >/dev/null 2>&1; then
    echo "Chromium is missing; installing Debian's (the dashboard test drives it headless)" >&2
    as_root apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium
fi
if ! cargo nextest --version >/dev/null 2>&1; then
    echo "installing cargo-nextest" >&2
    cargo install --locked cargo-nextest
fi
cargo nextest run --workspace --locked --no-fail-fast
# nextest does not run doc tests.
cargo test --doc --workspace --locked
# The README's snippets (one of them uses inqubo::testing, behind the test-util feature).
cargo test --doc -p inqubo --features test-util --locked
