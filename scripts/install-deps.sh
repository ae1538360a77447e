#!/bin/sh
# Installs every build, run and test dependency of dsv4-batch with apt-get
# (Debian 12 package names). Idempotent: when everything is present it only
# checks with dpkg-query and returns within a second.
set -eu

PKGS="build-essential pkg-config clang llvm lld libclang-rt-14-dev
      libarchive-dev libpoppler-glib-dev libxml2-dev libsqlite3-dev
      libvulkan-dev libzstd-dev libyaml-dev libpcre2-dev libcairo2-dev
      libjansson-dev libssl-dev
      glslc mesa-vulkan-drivers vulkan-tools
      poppler-utils libarchive-tools p7zip-full zstd lz4 xz-utils bzip2 cpio
      zip unzip ghostscript groff-base sqlite3 git binutils qpdf"

missing=""
for p in $PKGS; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done
[ -z "$missing" ] && exit 0

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
echo "install-deps: installing:$missing"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing
