#!/usr/bin/env bash
# The demo: three roomcast instances share rooms through one Redis, clients on every instance
# chat, and it prints delivered messages/s and publish→member latency, then a summary.
# Uses REDIS_URL when set; otherwise installs redis-server if missing (apt) and starts a
# private one on a free loopback port, stopped at the end.
# Usage: bash scripts/demo.sh [seconds=5] [rooms=4]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v cargo >/dev/null 2>&1; then
    echo "error: cargo is missing; install Rust (https://rustup.rs) first" >&2
    exit 1
fi

if [ -z "${REDIS_URL:-}" ]; then
    if ! command -v redis-server >/dev/null 2>&1; then
        echo "==> redis-server missing: installing it with apt-get"
        SUDO=""
        [ "$(id -u)" -ne 0 ] && SUDO="sudo"
        $SUDO apt-get update
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server redis-tools
    fi
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' 2>/dev/null || echo 16379)
    dir=$(mktemp -d)
    redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no --daemonize no \
        --dir "$dir" >"$dir/redis.log" 2>&1 &
    redis_pid=$!
    trap 'kill $redis_pid 2>/dev/null || true; rm -rf "$dir"' EXIT
    for _ in $(seq 1 100); do
        redis-cli -p "$port" ping >/dev/null 2>&1 && break
        sleep 0.1
    done
    export REDIS_URL="redis://127.0.0.1:$port"
    echo "==> private redis-server on $REDIS_URL"
fi

cargo run --release -q -p roomcast --example demo -- "${1:-5}" "${2:-4}"
