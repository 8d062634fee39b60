#!/usr/bin/env bash
# The Rust tests on aarch64 (the NEON tier), cross-compiled and run under qemu-user.
# Needs: rustup target add aarch64-unknown-linux-gnu; apt install gcc-aarch64-linux-gnu qemu-user.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
cargo test --quiet --release --target aarch64-unknown-linux-gnu "$@"
