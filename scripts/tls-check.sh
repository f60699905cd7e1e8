#!/usr/bin/env bash
# Runs the quickstart over TLS (amqps://) against a private RabbitMQ node with a TLS listener,
# and checks that the password never shows in its output.
#
# It makes a throwaway certificate authority and a certificate for localhost with openssl,
# starts node `tls@localhost` (AMQP 5694, AMQPS 5695, its own data folder), runs the example
# with SSL_CERT_FILE pointing at the CA (the rustls verifier reads it), and stops the node.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v openssl >/dev/null 2>&1; then
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q openssl
fi
dir=${INQUBO_TLS_DIR:-/tmp/inqubo-tls}/tls
rm -rf "$(dirname "$dir")"
mkdir -p "$dir"
trap 'bash scripts/rabbitmq-node.sh stop tls "$dir" >/dev/null 2>&1 || true; rm -rf "$(dirname "$dir")"' EXIT

openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=inqubo test CA" \
    -keyout "$dir/ca.key" -out "$dir/ca.pem" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
    -keyout "$dir/server.key" -out "$dir/server.csr" 2>/dev/null
printf "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n" > "$dir/ext.cnf"
openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial \
    -days 2 -extfile "$dir/ext.cnf" -out "$dir/server.pem" 2>/dev/null
chmod 644 "$dir"/*.pem "$dir"/*.key
cat > "$dir/rabbitmq.conf" <<CONF
listeners.ssl.1 = 127.0.0.1:5695
ssl_options.cacertfile = $dir/ca.pem
ssl_options.certfile = $dir/server.pem
ssl_options.keyfile = $dir/server.key
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false
CONF
bash scripts/rabbitmq-node.sh start tls 5694 "$dir"

cargo build --locked -q --example quickstart
output=$(AMQP_URL="amqps://guest:guest@127.0.0.1:5695/%2f" SSL_CERT_FILE="$dir/ca.pem" \
    INQUBO_PREFIX=tls-check RUST_LOG=inqubo=debug ./target/debug/examples/quickstart 2>&1)
echo "$output" | grep -E "connected|run .* succeeded" | sed 's/\x1b\[[0-9;]*m//g' | cut -c1-160
if echo "$output" | grep -q "guest:guest"; then
    echo "TLS check FAILED: the password appears in the output" >&2
    exit 1
fi
echo "$output" | grep -q "succeeded" || { echo "TLS check FAILED: the run did not succeed" >&2; echo "$output" | tail -20 >&2; exit 1; }
echo "TLS check passed: the quickstart ran over amqps:// and no password was printed"
