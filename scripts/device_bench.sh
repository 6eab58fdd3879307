#!/usr/bin/env bash
# The GPU benchmark on a machine with Python 3.12, PyTorch and JAX but no TensorFlow, no
# Keras and no network (docs/speed.md, "GPU: the Keras backends against PyTorch").
#
#   scripts/device_bench.sh bundle [DIR]   here: wheels of rslad_tf, Keras and Keras'
#                                          dependencies into DIR (build/device_bundle)
#   scripts/device_bench.sh run            there: install what is missing from the bundle
#                                          into a temporary folder, then time the jax and
#                                          torch backends against the PyTorch reference;
#                                          results in $OUT (bench_gpu.json, .log, env.txt)
#
# Environment of `run`: BUNDLE (default build/device_bundle), OUT (required), PYTHON
# (default python3), BACKENDS (default "jax torch"), BENCH_TIMEOUT (seconds, default 420),
# BENCH_ARGS (extra arguments, e.g. "--steps 10 --repeats 3"), SMOKE=1 (tiny models on
# the CPU: checks the script here).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)

bundle() {
    local dir=${1:-build/device_bundle}
    local py=${PYTHON:-$root/.venv/bin/python}
    # DIR is emptied first: refuse a folder that holds anything a bundle does not (a typo
    # such as "bundle ." must not delete a checkout).
    if [ -d "$dir" ] && [ -n "$(find "$dir" -mindepth 1 -maxdepth 1 ! -name '*.whl' \
                                   ! -name SOURCE -print -quit)" ]; then
        echo "error: $dir holds files other than a bundle's; name an empty or new folder" >&2
        exit 2
    fi
    rm -rf "$dir"
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    # rslad_tf itself (setuptools is in the venv: no build isolation, no download), built
    # from a copy of the sources: an in-tree build would leave build/ and egg-info in the
    # checkout, and setuptools' build/lib keeps modules since deleted from the source.
    local src
    src=$(mktemp -d)
    cp "$root/pyproject.toml" "$root/README.md" "$src/"
    cp -r "$root/rslad_tf" "$src/rslad_tf"
    find "$src" -name __pycache__ -type d -prune -exec rm -rf {} +
    "$py" -m pip wheel --quiet --no-deps --no-build-isolation -w "$dir" "$src"
    rm -rf "$src"
    # Keras and its dependencies for CPython 3.12 on x86_64 and aarch64 machines.
    local arch
    for arch in x86_64 aarch64; do
        "$py" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
            --platform "manylinux_2_17_$arch" --platform "manylinux2014_$arch" \
            --platform "manylinux_2_28_$arch" \
            -r "$root/scripts/device_requirements.txt" -d "$dir"
    done
    (cd "$root" && git describe --always --dirty) > "$dir/SOURCE"
    local bytes
    bytes=$(du -sb "$dir" | cut -f1)
    echo "bundle $dir: $(ls "$dir" | grep -c '\.whl$') wheels, $((bytes / 1024 / 1024)) MiB," \
         "source $(cat "$dir/SOURCE")"
    if [ "$bytes" -ge $((64 * 1024 * 1024)) ]; then
        echo "error: the bundle is over 64 MiB, more than the device tool carries" >&2
        exit 1
    fi
}

run() {
    local dir=${BUNDLE:-build/device_bundle}
    local py=${PYTHON:-python3}
    : "${OUT:?set OUT to the folder for the results}"
    [ -d "$dir" ] || { echo "error: no bundle at $dir: run '$0 bundle' first" >&2; exit 2; }
    dir=$(cd "$dir" && pwd)
    mkdir -p "$OUT"
    local out
    out=$(cd "$OUT" && pwd)
    local site
    site=$(mktemp -d)/site
    {
        echo "bundle source: $(cat "$dir/SOURCE" 2>/dev/null || echo unknown)"
        "$py" -c 'import sys; print("python", sys.version.split()[0])'
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
            2>/dev/null || echo "no nvidia-smi"
    } | tee "$out/env.txt"
    "$py" "$root/scripts/install_bundle.py" "$dir" "$site" | tee -a "$out/env.txt"
    # Run from an empty folder so that the installed wheel, not a source tree, is imported.
    local work
    work=$(mktemp -d)
    cd "$work"
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
    "$py" - <<'EOF' | tee -a "$out/env.txt"
import importlib.metadata as md
for name in ("rslad_tf", "keras", "torch", "jax", "jaxlib", "numpy"):
    try:
        print(name, md.version(name))
    except md.PackageNotFoundError:
        print(name, "absent")
EOF
    local device=(--device gpu)
    [ "${SMOKE:-0}" = 1 ] && device=(--device cpu --smoke)
    local rc statuses
    # The benchmark's own status (124 when the timeout stopped it), not tee's: read
    # PIPESTATUS straight after the pipeline, with errexit off for it.
    set +e
    # shellcheck disable=SC2086  # BACKENDS and BENCH_ARGS are word lists
    timeout "${BENCH_TIMEOUT:-420}" "$py" -m rslad_tf.bench "${device[@]}" \
        --backend ${BACKENDS:-jax torch} --json "$out/bench_gpu.json" ${BENCH_ARGS:-} \
        2>&1 | tee "$out/bench_gpu.log"
    statuses=("${PIPESTATUS[@]}")
    set -e
    rc=${statuses[0]}
    echo "benchmark exit status $rc" | tee -a "$out/env.txt"
    return "$rc"
}

case "${1:-}" in
    bundle) shift; bundle "$@" ;;
    run) run ;;
    *) echo "usage: $0 bundle [DIR] | run" >&2; exit 2 ;;
esac
