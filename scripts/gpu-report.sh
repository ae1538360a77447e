#!/bin/sh
# Runs on a machine with a GPU what docs/benchmarks.md reports for it: the
# GPU tests (test_vk_ops and the engine tests), the golden conformance
# cases, the GEMM kernel timings, a profiled 4-layer bench (with the first
# and the second versions of the GEMM kernels, and recorded in order as
# before the pass scheduler) and the whole bench. Nothing
# is built here: run `make tests` first, or `make gpu-bundle` (the same
# binaries linked --as-needed, for a machine with little more than a Vulkan
# driver) and set BUILD=gpu-bundle BIN=gpu-bundle/bin.
#
#   scripts/gpu-report.sh OUTDIR [tests] [conformance] [gemm] [profile] [bench]
#
# With no step named, all of them, in that order; `gemm`, `profile` and
# `bench` run V4-Flash sizes (GPUs only), `bench` alone for up to 10
# minutes. Each step's whole output goes to OUTDIR/<name>.log; one line per
# run (exit status, seconds) to stdout and OUTDIR/summary.txt. Exit status 1
# when any run failed, 2 on a usage error.
set -u
[ $# -ge 1 ] || { echo "usage: scripts/gpu-report.sh OUTDIR [tests] [conformance] [gemm] [profile] [bench]" >&2; exit 2; }
out=$1
shift
steps=${*:-tests conformance gemm profile bench}
BUILD=${BUILD:-build}
BIN=${BIN:-bin}
mkdir -p "$out" || exit 2
failed=0

# step NAME SECONDS COMMAND...: runs it with a time limit, logs, one summary line
step() {
    name=$1 limit=$2
    shift 2
    t0=$(date +%s)
    timeout "$limit" "$@" > "$out/$name.log" 2>&1
    rc=$?
    [ $rc -eq 0 ] || failed=1
    echo "$name: exit $rc, $(( $(date +%s) - t0 )) s" | tee -a "$out/summary.txt"
}

for s in $steps; do
    case $s in
    tests)
        step vk_ops 300 "$BUILD/tests/test_vk_ops"
        # tests that compare passes of different sizes bit for bit need the
        # index-order kernels on GPUs (docs/testing.md)
        step engine_state 300 env DSV4_EXACT=1 "$BUILD/tests/test_engine_state"
        step engine_golden 300 env DSV4_EXACT=1 "$BUILD/tests/test_engine_golden"
        step engine_fork 300 env DSV4_EXACT=1 "$BUILD/tests/test_engine_fork"
        step engine_chunks 300 env DSV4_EXACT=1 "$BUILD/tests/test_engine_chunks"
        step engine_split 300 "$BUILD/tests/test_engine_split"
        ;;
    conformance)
        for c in a b c; do
            step "conformance_$c" 120 "$BIN/dsv4-bench" conformance --model tests/golden/tiny \
                --golden "tests/golden/tiny/case_$c.safetensors"
        done
        ;;
    gemm)
        step gemm_bench 300 "$BUILD/tools/gemm_bench"
        step gemm_sweep 300 "$BUILD/tools/gemm_bench" sweep
        ;;
    profile)
        p="--layers 4 --contexts 8192 --decode-contexts 8192 --batches 1,16 --steps 4"
        # shellcheck disable=SC2086
        step bench4 300 "$BIN/dsv4-bench" bench $p
        # shellcheck disable=SC2086
        step bench4_profile 300 "$BIN/dsv4-bench" bench $p --profile
        # shellcheck disable=SC2086
        step bench4_gemm2 300 env DSV4_GEMM_CM=2 DSV4_GEMM_SMALL=2 "$BIN/dsv4-bench" bench $p
        # recorded in order into one command buffer, as before the pass
        # scheduler (docs/engine.md)
        # shellcheck disable=SC2086
        step bench4_inorder 300 env DSV4_SCHEDULE=0 DSV4_PART_OPS=1000000 "$BIN/dsv4-bench" bench $p
        ;;
    bench)
        step bench 600 "$BIN/dsv4-bench" bench --layers 8 --contexts 8192,65536,262144 \
            --decode-contexts 8192,65536 --batches 1,16,64 --steps 4 --time-limit 300
        ;;
    *)
        echo "scripts/gpu-report.sh: unknown step '$s' (tests, conformance, gemm, profile, bench)" >&2
        exit 2
        ;;
    esac
done
exit $failed
