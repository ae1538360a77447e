#!/bin/sh
# `make demo`: runs examples/demo.yaml end to end, twice (the second run shows
# the prefix cache hit). Completed stage by stage as the modules land.
set -eu
cd "$(dirname "$0")/.."
echo "demo: the end-to-end job runner has not landed yet; built bin/dsv4-batch:"
bin/dsv4-batch version
