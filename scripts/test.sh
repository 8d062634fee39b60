#!/usr/bin/env bash
# The whole test suite: Rust unit and integration tests, the Python tests under every SIMD
# tier this CPU has, and mypy.stubtest on the stubs. Sets up .venv first if needed.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "maturin>=1.9.4,<2" numpy ml_dtypes pytest hypothesis mypy mpmath
.venv/bin/maturin develop --release -q

cargo test --quiet
# Exhaustive check of the f32 exp and log1p over their whole domain (release mode: seconds).
cargo test --quiet --release --lib -- --ignored exhaustive
# The NEON tier under emulation, where the cross toolchain is installed.
if rustup target list --installed 2>/dev/null | grep -q aarch64-unknown-linux-gnu \
    && command -v aarch64-linux-gnu-gcc >/dev/null && command -v qemu-aarch64 >/dev/null; then
  bash scripts/test-aarch64.sh
else
  echo "--- skipping the aarch64 (NEON) tests: no cross toolchain (see scripts/test-aarch64.sh)"
fi

.venv/bin/python -m pytest -q
# The numerical tests again with each lower SIMD tier forced (FASTXENT_SIMD caps the tier).
for tier in $(.venv/bin/python -c "import fastxent as f; print(*[t for t in f.simd_tiers() if t != f.simd_tier()])"); do
  echo "--- numerical tests under FASTXENT_SIMD=$tier"
  FASTXENT_SIMD=$tier .venv/bin/python -m pytest -q -m "not slow" tests/test_values.py tests/test_golden.py \
    tests/test_exactness.py tests/test_grad.py tests/test_accuracy.py tests/test_properties.py tests/test_layouts.py \
    tests/test_outputs.py
done

.venv/bin/python -m mypy.stubtest fastxent --mypy-config-file pyproject.toml
.venv/bin/python -m mypy
