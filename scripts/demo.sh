#!/usr/bin/env bash
# The demo: `roomcast demo`. Three WebSocket room servers (the server of `roomcast serve`,
# with its chat page), each on its own roomcast instance, share rooms through one
# Redis; simulated WebSocket clients on every server join rooms and chat (and reconnect now
# and then). A live view shows messages/s per instance, cross-instance latency percentiles,
# rooms live and reconnects; it stops by itself and prints a summary.
#
# Redis: REDIS_URL when set; otherwise the command starts a private redis-server from PATH on
# a free loopback port and stops it at the end. When redis-server is missing this script
# installs it with apt-get where it can; failing that the demo runs standalone (no Redis).
#
# Usage: bash scripts/demo.sh [seconds] [rooms] [roomcast demo options]
#   e.g. bash scripts/demo.sh 20 8 --clients 60 --rate 50   (see: roomcast demo --help)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v cargo >/dev/null 2>&1; then
    echo "error: cargo is missing; install Rust (https://rustup.rs) first" >&2
    exit 1
fi

if [ -z "${REDIS_URL:-}" ] && ! command -v redis-server >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo"
    if command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" -eq 0 ] || [ -n "$SUDO" ]; }; then
        echo "==> redis-server missing: installing it with apt-get"
        if ! { $SUDO apt-get update -qq &&
            $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools; }; then
            echo "==> could not install redis-server; the demo runs standalone" >&2
        fi
    fi
fi

# The old positional form: [seconds] [rooms].
args=()
if [[ "${1:-}" =~ ^[0-9]+([.][0-9]+)?$ ]]; then
    args+=(--duration "$1")
    shift
    if [[ "${1:-}" =~ ^[0-9]+$ ]]; then
        args+=(--rooms "$1")
        shift
    fi
fi

echo "==> building the roomcast command (release)"
cargo build --release -q -p roomcast --features cli --bin roomcast
exec cargo run --release -q -p roomcast --features cli --bin roomcast -- demo ${args[@]+"${args[@]}"} "$@"
