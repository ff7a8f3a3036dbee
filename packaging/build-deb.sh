#!/usr/bin/env bash
# Builds llep's Debian packages (llepd, llep-tools, libllep-client0, libllep-client-dev,
# python3-llep) with the standard tooling (dpkg-buildpackage, debhelper), binary only, into
# OUTDIR.
#
#   packaging/build-deb.sh OUTDIR [TREE-ISH]   sources of a commit or tree (default HEAD)
#   packaging/build-deb.sh OUTDIR --worktree   the working tree as it is (tracked files and
#                                              untracked ones git does not ignore)
#
# DEB_BUILD_OPTIONS=nocheck skips the package's own test run. The sources are exported to a
# scratch tree with packaging/debian as its debian/, so build directories and local state never
# reach the packages. Needs the Build-Depends of packaging/debian/control (scripts/
# install-deps.sh installs them). Prints the .deb files made and the build time.
set -euo pipefail

src=$(cd "$(dirname "$0")/.." && pwd)
out=${1:?usage: build-deb.sh OUTDIR [TREE-ISH | --worktree]}
rev=${2:-HEAD}
mkdir -p "$out"
out=$(cd "$out" && pwd)
start=$(date +%s)

work=$(mktemp -d /tmp/llep-deb-XXXXXX)
trap 'rm -rf "$work"' EXIT
tree=$work/llep
mkdir "$tree"
if [ "$rev" = --worktree ]; then
    (cd "$src" && git ls-files -z --cached --others --exclude-standard |
        while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done |
        tar --null -T - -cf -) | tar -xf - -C "$tree"
else
    git -C "$src" archive --format=tar "$rev" | tar -xf - -C "$tree"
fi
[ -d "$tree/packaging/debian" ] || { echo "build-deb: no packaging/debian in $rev" >&2; exit 1; }
version=$(dpkg-parsechangelog -l "$tree/packaging/debian/changelog" -S Version)
rm -rf "$tree/debian"
cp -a "$tree/packaging/debian" "$tree/debian"

cd "$tree"
dpkg-checkbuilddeps
jobs=$(nproc 2>/dev/null || echo 2)
dpkg-buildpackage -b -us -uc -j"$jobs" >"$work/build.log" 2>&1 || {
    tail -n 60 "$work/build.log" >&2
    echo "build-deb: dpkg-buildpackage failed (the end of its log is above)" >&2
    exit 1
}
arch=$(dpkg-architecture -qDEB_HOST_ARCH)
for p in llepd llep-tools libllep-client0 libllep-client-dev python3-llep; do
    mv "$work/${p}_${version}_${arch}.deb" "$out/"
done
# Debug symbols and the build record, when produced.
for f in "$work"/*.ddeb "$work"/*-dbgsym_*.deb "$work"/*.buildinfo "$work"/*.changes; do
    if [ -e "$f" ]; then mv "$f" "$out/"; fi
done
cp "$work/build.log" "$out/build.log"
made=()
for f in "$out"/*.deb; do made+=("$(basename "$f")"); done
echo "build-deb: ${made[*]} in $(($(date +%s) - start)) s"
