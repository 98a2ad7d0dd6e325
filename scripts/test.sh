#!/usr/bin/env bash
# Everything CI checks, in the order CI checks it: formatting, lints, tests, the core's
# dependency rule, and the fuzz targets' build. Installs redis-server (and openssl, for the
# TLS tests' certificates, and chromium, for the browser test of `roomcast serve`) with apt
# when missing; the integration tests start private servers of their own on free loopback
# ports.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
start=$(date +%s)

step() { printf '\n==> %s  (+%ss)\n' "$*" "$(( $(date +%s) - start ))"; }

# Installs Debian packages (one apt-get update for all), as root or through sudo.
apt_install() {
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1; then
            sudo="sudo"
        else
            echo "error: $* missing and this is not root; install with: apt-get install -y $*" >&2
            exit 1
        fi
    fi
    $sudo apt-get update
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y "$@"
}

step "system packages"
missing=()
if command -v redis-server >/dev/null 2>&1; then
    echo "redis-server present: skipping apt for it"
else
    echo "redis-server missing: will install redis-server and redis-tools"
    missing+=(redis-server redis-tools)
fi
# The TLS tests make their certificates with the openssl command line.
if command -v openssl >/dev/null 2>&1; then
    echo "openssl present"
else
    echo "openssl missing: will install it"
    missing+=(openssl)
fi
# The fuzz targets link libFuzzer, which cargo builds from C++ sources.
if command -v g++ >/dev/null 2>&1; then
    echo "g++ present"
else
    echo "g++ missing: will install it (the fuzz targets' libFuzzer is C++)"
    missing+=(g++)
fi
# The browser test of `roomcast serve` drives headless Chromium (adapters/tests/browser.rs).
if command -v chromium >/dev/null 2>&1 || [ -n "${ROOMCAST_CHROMIUM:-}" ]; then
    echo "chromium present"
else
    echo "chromium missing: will install it (the browser test of roomcast serve)"
    missing+=(chromium)
fi
if [ "${#missing[@]}" -gt 0 ]; then
    apt_install "${missing[@]}"
fi
# The tests start their own servers; nothing here may point them at a shared one.
unset REDIS_URL REDIS_CHANNEL_PREFIX REDIS_POOL_SIZE

step "tool versions"
rustc --version
cargo --version
cargo fmt --version
cargo clippy --version
redis-server --version
"${ROOMCAST_CHROMIUM:-chromium}" --version

step "cargo fmt --all -- --check"
cargo fmt --all -- --check

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo test --workspace"
cargo test --workspace

step "cargo doc (warnings are errors: no broken links in the public docs)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps

step "roomcast-core depends on no runtime"
tree=$(cargo tree -p roomcast-core -e normal --prefix none)
forbidden=$(printf '%s\n' "$tree" | awk '{print $1}' \
    | grep -xE 'tokio|async-std|async-io|mio|smol|async-net' | sort -u || true)
if [ -n "$forbidden" ]; then
    echo "error: roomcast-core must stay sans-IO, but its normal dependencies include:" >&2
    printf '  %s\n' $forbidden >&2
    echo "Find the path with: cargo tree -p roomcast-core -e normal -i <crate>" >&2
    exit 1
fi
echo "ok: no tokio, async-std, async-io, mio, smol or async-net under roomcast-core"

step "fuzz targets"
if [ -f fuzz/Cargo.toml ]; then
    cargo build --manifest-path fuzz/Cargo.toml
else
    echo "skipped: no fuzz/Cargo.toml yet"
fi

step "all checks passed in $(( $(date +%s) - start ))s"
