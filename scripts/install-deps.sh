#!/bin/sh
# Installs every build, run and test dependency of dsv4-batch with apt-get
# (Debian 12 package names), then the newer shader compiler the tensor-core
# shaders need (below). Idempotent: when everything is present it only checks
# with dpkg-query and a file test and returns within a second.
#
# `scripts/install-deps.sh coopmat-glslc` provides only that compiler (the
# Makefile calls it when build/tools/trixie/glslc is missing).
#
# Why a second compiler: Debian 12's glslc (shaderc 2023.2) cannot compile
# GL_KHR_cooperative_matrix; Debian 13's (2025.2) can, and its binaries run on
# Debian 12 with Debian 13's own loader and libraries unpacked into a private
# folder (build/tools/trixie/root). Nothing is installed system-wide and
# nothing of it reaches the built program: it only writes SPIR-V at build
# time (docs/dependencies.md).
set -eu

root=$(cd "$(dirname "$0")/.." && pwd)
only=${1:-}

PKGS="build-essential pkg-config clang llvm lld libclang-rt-14-dev
      libarchive-dev libpoppler-glib-dev libxml2-dev libsqlite3-dev
      libvulkan-dev libzstd-dev libyaml-dev libpcre2-dev libcairo2-dev
      libjansson-dev libssl-dev
      glslc mesa-vulkan-drivers vulkan-tools
      poppler-utils libarchive-tools p7zip-full zstd lz4 xz-utils bzip2 cpio
      zip unzip ghostscript groff-base sqlite3 git binutils qpdf"

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"

if [ "$only" != coopmat-glslc ]; then
    missing=""
    for p in $PKGS; do
        if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
            missing="$missing $p"
        fi
    done
    if [ -n "$missing" ]; then
        echo "install-deps: installing:$missing"
        export DEBIAN_FRONTEND=noninteractive
        $SUDO apt-get update -qq
        # shellcheck disable=SC2086
        $SUDO apt-get install -y -qq --no-install-recommends $missing
    fi
fi

# ---- Debian 13's glslc for the cooperative-matrix shaders ----
d=$root/build/tools/trixie
[ -x "$d/glslc" ] && "$d/glslc" --version >/dev/null 2>&1 && exit 0
fail() { echo "install-deps: cannot provide Debian 13's glslc for the cooperative-matrix shaders: $*" >&2; exit 1; }
rm -rf "$d" && mkdir -p "$d/lists/partial" "$d/cache/archives/partial" "$d/deb"
# The Debian mirror this machine already uses: the first URIs: line of its
# deb822 sources, else the first deb line of sources.list.
uri=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '/^URIs:/{print $2; exit}')
[ -n "$uri" ] || uri=$(awk '$1 == "deb" {for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit}}' \
                      /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | head -n 1)
[ -n "$uri" ] || fail "no Debian mirror found in /etc/apt/sources.list*"
case "$uri" in *security*) fail "the first apt source ($uri) is a security mirror, not a Debian archive" ;; esac
echo "deb $uri trixie main" > "$d/sources.list"
A="-o Dir::Etc::sourcelist=$d/sources.list -o Dir::Etc::sourceparts=- -o Dir::State::Lists=$d/lists
   -o Dir::Cache=$d/cache -o APT::Sandbox::User=root -o Debug::NoLocking=1"
echo "install-deps: fetching Debian 13's glslc from $uri into $d"
# shellcheck disable=SC2086
apt-get -qq $A update >"$d/apt.log" 2>&1 || { cat "$d/apt.log" >&2; fail "apt-get update of trixie from $uri failed"; }
# shellcheck disable=SC2086
(cd "$d/deb" && apt-get -qq $A download glslc libshaderc1 glslang-tools spirv-tools libc6 libstdc++6 libgcc-s1) \
    >>"$d/apt.log" 2>&1 || { cat "$d/apt.log" >&2; fail "apt-get download from $uri failed"; }
for f in "$d"/deb/*.deb; do dpkg-deb -x "$f" "$d/root" || fail "cannot unpack $f"; done
L=$d/root/usr/lib/x86_64-linux-gnu
[ -x "$L/ld-linux-x86-64.so.2" ] && [ -x "$d/root/usr/bin/glslc" ] || fail "the unpacked packages lack glslc or the loader"
cat > "$d/glslc.tmp" <<W
#!/bin/sh
# Debian 13's glslc run with its own loader and libraries (scripts/install-deps.sh).
exec "$L/ld-linux-x86-64.so.2" --library-path "$L" "$d/root/usr/bin/glslc" "\$@"
W
chmod +x "$d/glslc.tmp"
"$d/glslc.tmp" --version >/dev/null 2>&1 || fail "the unpacked glslc does not run"
rm -rf "$d/deb" "$d/cache" "$d/lists"
mv "$d/glslc.tmp" "$d/glslc"
echo "install-deps: $("$d/glslc" --version | head -n 1) at $d/glslc"
