#!/bin/sh
# Builds the demo's binary inputs from the text sources in examples/sources/
# with real tools, so anyone can see and redo how they were made:
#   inputs/contracts/*.pdf   groff (a few ms-like macros in sources/contracts/macros.tr) -> PostScript -> ps2pdf (ghostscript)
#   inputs/vendor-agreements.zip   zip of the plain-text and HTML agreements
# inputs/billing-service/ is a small source repository kept as plain files
# (with a .gitignore the repository walker honours). The outputs are
# committed; rerun this script after editing a source.
set -eu
cd "$(dirname "$0")"
mkdir -p inputs/contracts
for src in sources/contracts/*.ms; do
    base=$(basename "$src" .ms)
    cat sources/contracts/macros.tr "$src" | groff -Tps > "/tmp/$base.ps"
    # Fixed dates so the PDF bytes do not change from run to run.
    SOURCE_DATE_EPOCH=1735689600 ps2pdf -dPDFSETTINGS=/prepress "/tmp/$base.ps" "inputs/contracts/$base.pdf"
    rm -f "/tmp/$base.ps"
done
rm -f inputs/vendor-agreements.zip
(cd sources && TZ=UTC zip -X -q -r ../inputs/vendor-agreements.zip vendor-agreements)
echo "made: $(ls inputs/contracts/*.pdf inputs/vendor-agreements.zip | tr '\n' ' ')"
