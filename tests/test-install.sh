#!/usr/bin/env bash
# test-install.sh BUILD_DIR FORWARD_CHECK_C SANITIZE
#
# `meson install` of BUILD_DIR into a scratch DESTDIR, then checks what a user of the install
# gets:
#   - every program, the library, headers, llep-client.pc, units, sysusers.d and tmpfiles.d
#     entries, llepd.conf and the man pages are where they belong;
#   - `systemd-analyze verify` accepts both units (binaries and man pages resolved in the
#     staged tree) and `systemd-analyze security --offline` rates the service's exposure at
#     most 2.0 (it is 1.6 as shipped);
#   - systemd-sysusers and systemd-tmpfiles apply the entries to a scratch root: user and group
#     llep, /run/llep 0750 llep:llep;
#   - llepd.conf documents every key of `llepd --help`, and the installed llepd starts with it;
#   - every man page renders without groff warnings;
#   - forward-check.c, compiled with nothing but the installed headers and
#     `pkg-config --cflags --libs llep-client` (and SANITIZE's -fsanitize flags, to match the
#     library), runs a forward through the installed llepd and matches a float64 reference;
#     the installed llepctl reports on that daemon;
#   - the installed Python package (its own llep-client.h, the installed library) runs a
#     forward through that daemon too, with .venv's python3 (cffi, numpy) when there is one.
# Exit status 0 when everything holds, 77 (skip) when systemd-analyze or a C compiler is
# missing, 1 otherwise with the reason on stderr.
set -euo pipefail

build=$(cd "$1" && pwd)
forward_src=$2
sanitize=${3:-none}

fail() { echo "test-install: FAIL: $*" >&2; exit 1; }
note() { echo "test-install: $*"; }

for tool in systemd-analyze systemd-sysusers systemd-tmpfiles pkg-config cc groff; do
    command -v "$tool" >/dev/null || { echo "test-install: SKIP: $tool not found"; exit 77; }
done

tmp=$(mktemp -d /tmp/test-install-XXXXXX)
llepd_pid=
cleanup() {
    if [ -n "$llepd_pid" ]; then kill -KILL "$llepd_pid" 2>/dev/null || true; fi
    rm -rf "$tmp"
}
trap cleanup EXIT

dest=$tmp/dest
meson install -C "$build" --destdir "$dest" --no-rebuild >"$tmp/install.log" 2>&1 ||
    { cat "$tmp/install.log" >&2; fail "meson install"; }

# The install directories, as the build was configured.
eval "$(meson introspect "$build" --buildoptions | python3 -c '
import json, sys
opts = {o["name"]: o["value"] for o in json.load(sys.stdin)}
prefix = opts["prefix"]
for name in ("bindir", "sbindir", "libdir", "includedir", "sysconfdir", "mandir"):
    v = opts[name]
    print("%s=%s" % (name, v if v.startswith("/") else prefix + "/" + v))
print("prefix=" + prefix)
')"
prefix=${prefix:?}
root() { printf '%s%s' "$dest" "$1"; }

# ---- files in place ---------------------------------------------------------------------
expect=("$sbindir/llepd" "$bindir/llepctl" "$bindir/llep-plan" "$bindir/llep-demo"
        "$bindir/llep-bench" "$libdir/libllep-client.so" "$libdir/libllep-client.so.0"
        "$includedir/llep/client.h" "$includedir/llep/types.h" "$includedir/llep/bf16.h"
        "$libdir/pkgconfig/llep-client.pc" "$sysconfdir/llep/llepd.conf"
        "$mandir/man8/llepd.8" "$mandir/man5/llepd.conf.5" "$mandir/man1/llepctl.1"
        "$mandir/man1/llep-plan.1" "$mandir/man1/llep-bench.1" "$mandir/man1/llep-demo.1"
        "$mandir/man3/llep-client.3" "$mandir/man3/llep_forward.3")
for f in "${expect[@]}"; do
    [ -e "$(root "$f")" ] || fail "$f is not installed"
done
for f in llepd.service llepd.socket; do
    n=$(find "$dest" -path "*/systemd/system/$f" | wc -l)
    [ "$n" -eq 1 ] || fail "$f installed $n times"
done
service=$(find "$dest" -path '*/systemd/system/llepd.service')
socket=$(find "$dest" -path '*/systemd/system/llepd.socket')
sysusers=$(find "$dest" -path '*/sysusers.d/llep.conf')
tmpfiles=$(find "$dest" -path '*/tmpfiles.d/llep.conf')
if [ -z "$sysusers" ] || [ -z "$tmpfiles" ]; then fail "sysusers.d or tmpfiles.d entry missing"; fi
grep -qx "ExecStart=$sbindir/llepd --config $sysconfdir/llep/llepd.conf" "$service" ||
    fail "ExecStart of llepd.service does not name $sbindir/llepd and $sysconfdir/llep/llepd.conf"
note "files in place under $prefix"

# ---- the units ----------------------------------------------------------------------------
# verify wants the programs a unit runs to exist: check copies that point into the stage.
mkdir "$tmp/units"
sed "s|=$sbindir/llepd|=$(root "$sbindir")/llepd|" "$service" >"$tmp/units/llepd.service"
cp "$socket" "$tmp/units/llepd.socket"
MANPATH=$(root "$mandir") systemd-analyze verify --man=yes "$tmp/units/llepd.service" \
    "$tmp/units/llepd.socket" >"$tmp/verify.log" 2>&1 ||
    { cat "$tmp/verify.log" >&2; fail "systemd-analyze verify"; }
[ ! -s "$tmp/verify.log" ] || { cat "$tmp/verify.log" >&2; fail "systemd-analyze verify warned"; }
systemd-analyze security --offline=true --threshold=20 --no-pager "$tmp/units/llepd.service" \
    >"$tmp/security.log" 2>&1 || { cat "$tmp/security.log" >&2; fail "exposure above 2.0"; }
note "units verified; $(grep -o 'Overall exposure level.*' "$tmp/security.log")"

# ---- sysusers.d and tmpfiles.d on a scratch root -------------------------------------------
sroot=$tmp/sysroot
mkdir -p "$sroot/etc"
systemd-sysusers --root="$sroot" "$sysusers" >/dev/null 2>&1 || fail "systemd-sysusers"
grep -q '^llep:x:[0-9]*:[0-9]*:.*:/usr/sbin/nologin$' "$sroot/etc/passwd" || fail "no user llep"
grep -q '^llep:x:' "$sroot/etc/group" || fail "no group llep"
uid=$(awk -F: '$1 == "llep" { print $3 }' "$sroot/etc/passwd")
gid=$(awk -F: '$1 == "llep" { print $3 }' "$sroot/etc/group")
if [ "$(id -u)" -eq 0 ]; then
    systemd-tmpfiles --root="$sroot" --create "$tmpfiles" >/dev/null 2>&1 || fail "systemd-tmpfiles"
    [ "$(stat -c '%a %u %g' "$sroot/run/llep")" = "750 $uid $gid" ] ||
        fail "/run/llep is $(stat -c '%a %u %g' "$sroot/run/llep"), not 750 $uid $gid"
    note "sysusers.d and tmpfiles.d: user llep ($uid), /run/llep 0750 llep:llep"
else
    note "sysusers.d: user llep ($uid); tmpfiles.d not applied (giving /run/llep to llep needs root)"
fi

# ---- llepd.conf documents every option ------------------------------------------------------
conf=$(root "$sysconfdir/llep/llepd.conf")
keys=$("$(root "$sbindir")/llepd" --help | sed -n 's/^  --\([a-z-]*\) .*/\1/p' | grep -v '^config$')
[ -n "$keys" ] || fail "no keys in llepd --help"
for k in $keys; do
    grep -q "^#$k = " "$conf" || fail "llepd.conf does not document '$k'"
done
note "llepd.conf documents $(echo "$keys" | wc -w) keys"

# ---- man pages ------------------------------------------------------------------------------
pages=0
while IFS= read -r -d '' page; do
    out=$(LC_ALL=C.UTF-8 groff -man -ww -z "$page" 2>&1) || fail "groff $page"
    [ -z "$out" ] || fail "groff warns on $page: $out"
    pages=$((pages + 1))
done < <(find "$(root "$mandir")" -type f -name '*.[1-8]' -print0)
[ "$pages" -eq 7 ] || fail "$pages man pages installed, expected 7"
note "$pages man pages render without warnings"

# ---- a program built against the install, through the installed daemon -------------------------
lib=$(root "$libdir")
cflags=()
case "$sanitize" in none | "") ;; *) cflags+=("-fsanitize=$sanitize") ;; esac
pc=$(PKG_CONFIG_PATH="$lib/pkgconfig" PKG_CONFIG_SYSROOT_DIR="$dest" \
     pkg-config --cflags --libs llep-client) || fail "pkg-config llep-client"
case "$pc" in *"$build"*) fail "llep-client.pc points into the build tree: $pc" ;; esac
# shellcheck disable=SC2086  # $pc is a list of flags
cc -std=c11 -Wall -Wextra -Werror "${cflags[@]}" -o "$tmp/forward-check" "$forward_src" $pc -lm ||
    fail "compiling forward-check against the installed headers and llep-client.pc"
deps=$(LD_LIBRARY_PATH=$lib ldd "$tmp/forward-check")
case "$deps" in *"$lib/libllep-client.so.0"*) ;; *) fail "forward-check loads $deps" ;; esac

sock=$tmp/llepd.sock
LD_LIBRARY_PATH=$lib "$(root "$sbindir")/llepd" --config "$conf" --socket "$sock" \
    --backend cpu --devices 2 2>"$tmp/llepd.log" &
llepd_pid=$!
for _ in $(seq 500); do
    [ -S "$sock" ] && break
    sleep 0.02
done
[ -S "$sock" ] || { cat "$tmp/llepd.log" >&2; fail "installed llepd did not listen"; }
LD_LIBRARY_PATH=$lib "$tmp/forward-check" "$sock" || fail "forward through the installed llepd"
status=$(LD_LIBRARY_PATH=$lib "$(root "$bindir")/llepctl" --socket "$sock" --json status) ||
    fail "installed llepctl status"
case "$status" in *'"layers"'*) ;; *) fail "llepctl --json status: $status" ;; esac
note "forward through the installed llepd with a program built from llep-client.pc: ok"

# ---- the Python package ---------------------------------------------------------------------------
pyinit=$(find "$dest" -path '*-packages/llep/__init__.py' | head -n 1)
[ -n "$pyinit" ] || fail "the Python package llep is not installed"
pydir=$(dirname "$pyinit")
for f in client.py space.py torch.py _ffi.py _cdef.py _paths.py llep-client.h py.typed; do
    [ -e "$pydir/$f" ] || fail "llep/$f is not installed"
done
grep -qx "LIBDIR = \"$libdir\"" "$pydir/_paths.py" || fail "llep/_paths.py does not name $libdir"
venv=$(dirname "$forward_src")/../.venv/bin/python3
if [ -x "$venv" ]; then
    preload=
    case "$sanitize" in *address*) preload="$(cc -print-file-name=libasan.so)" ;; esac
    case "$sanitize" in *undefined*) preload="$preload $(cc -print-file-name=libubsan.so)" ;; esac
    env -u LLEP_CLIENT_CDEF LD_PRELOAD="$preload" ASAN_OPTIONS=detect_leaks=0 \
        PYTHONPATH="$(dirname "$pydir")" PYTHONDONTWRITEBYTECODE=1 \
        LLEP_CLIENT_LIB="$lib/libllep-client.so.0" \
        "$venv" "$(dirname "$forward_src")/python/installed-check.py" "$sock" "$dest" \
        >"$tmp/python.log" 2>&1 || { cat "$tmp/python.log" >&2; fail "the installed Python package"; }
    note "$(cat "$tmp/python.log")"
else
    note "no .venv: the installed Python package was not run"
fi

kill -TERM "$llepd_pid"
wait "$llepd_pid" || fail "installed llepd exit status $?"
llepd_pid=
