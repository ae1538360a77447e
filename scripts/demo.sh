#!/bin/sh
# `make demo`: runs examples/demo.yaml end to end on the embedded demo model,
# twice. The first run ingests the example PDFs, zip and repository,
# prefills the shared context and stores it in the prefix cache; the second
# run of the same job restores that prefix from the cache, so its prefill
# shrinks to the questions. State lives in out/demo-home (or $DSV4_HOME).
set -eu
cd "$(dirname "$0")/.."
export DSV4_HOME="${DSV4_HOME:-$PWD/out/demo-home}"
bin=bin/dsv4-batch

say() { printf '\n== %s\n' "$*"; }

say "demo home: $DSV4_HOME (jobs.db, cache/, models/)"
for run in 1 2; do
    say "run $run: dsv4-batch submit examples/demo.yaml"
    id=$($bin submit examples/demo.yaml)
    echo "job $id queued"
    say "run $run: dsv4-batch run --until-idle"
    $bin run --until-idle
    say "run $run: dsv4-batch status $id"
    $bin status "$id"
    eval "job_$run=$id"
done

say "results of the second run: dsv4-batch results $job_2 --format md"
$bin results "$job_2" --format md

say "where things are"
echo "  results:      $bin results <job> --format md|jsonl   (jobs $job_1 and $job_2)"
echo "  output.jsonl: examples/out/ (the job's output.jsonl setting)"
echo "  job store:    $DSV4_HOME/jobs.db"
echo "  prefix cache: $DSV4_HOME/cache  ($bin cache stats)"
echo
echo "The demo model has random weights: the answers above are noise. Every stage is real;"
echo "set model: in a job to a DeepSeek-V4 checkpoint directory for real answers."
