#!/bin/sh
# Tokenizer benchmark (not a test: it measures, it never fails on a timing).
#   1. the ~20 MiB mixed corpus of shared/tokenizer/make-bench-corpus.sh:
#      MB/s and tokens/s on 1 thread (1 MiB pieces, line by line, one call)
#      and on N threads, plus MB per CPU-second (the single-thread figure
#      when other work shares the machine);
#   2. worst cases: 10,000,000 x 'a' and 1,000,000 random letters, one call;
#   3. peak RSS of `dsv4-batch tokenize` streaming a 100 MB file.
# Usage: scripts/bench-tokenizer.sh [THREADS]   (work files in a temp dir)
# The Hugging Face baseline on this machine is in shared/tokenizer/README.md.
set -eu
cd "$(dirname "$0")/.."
THREADS=${1:-2}
CORPUS_SCRIPT=${BENCH_CORPUS_SCRIPT:-../shared/tokenizer/make-bench-corpus.sh}
make -s -j2 bin/dsv4-batch
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT

echo "== corpus"
"$CORPUS_SCRIPT" "$TMP/bench.txt"
bin/dsv4-batch tokenize --bench "$TMP/bench.txt" --threads "$THREADS"

echo "== worst case: 10,000,000 x 'a'"
head -c 10000000 /dev/zero | tr '\0' a > "$TMP/aaaa.txt"
bin/dsv4-batch tokenize --bench "$TMP/aaaa.txt" --threads 1 | grep -E "mode|one call"

echo "== worst case: 1,000,000 random letters, no spaces"
python3 -c '
import sys
x, out = 12345, []
for _ in range(1000000):
    x = (x * 1103515245 + 12345) & 0x7fffffff
    out.append(chr(97 + (x >> 16) % 26))
sys.stdout.write("".join(out))' > "$TMP/letters.txt"
bin/dsv4-batch tokenize --bench "$TMP/letters.txt" --threads 1 | grep -E "mode|one call"

echo "== peak RSS, streaming a 100 MB file through 'dsv4-batch tokenize'"
for i in 1 2 3 4 5; do cat "$TMP/bench.txt"; done | head -c 100000000 > "$TMP/big.txt"
/usr/bin/time -f "max RSS %M KiB, %e s wall, %U s user" bin/dsv4-batch tokenize < "$TMP/big.txt" > "$TMP/big.ids"
echo "ids written: $(tr ' ' '\n' < "$TMP/big.ids" | wc -l)"
