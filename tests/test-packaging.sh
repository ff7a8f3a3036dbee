#!/usr/bin/env bash
# test-packaging.sh FORWARD_CHECK_C [--worktree | TREE-ISH | DEB_DIR]
#
# Builds llep's .deb set with packaging/build-deb.sh (from the working tree, a commit, or
# takes the .deb files already in DEB_DIR), then checks what a Debian user gets:
#   - exactly the packages llepd, llep-tools, libllep-client0, libllep-client-dev and
#     python3-llep, with their files where they belong, the dependencies between them,
#     /etc/llep/llepd.conf a conffile, and maintainer scripts that create user llep, /run/llep
#     and enable llepd.socket;
#   - dpkg installs the set into a scratch root (dpkg --root, no chroot); where systemd is not
#     running here the maintainer scripts run too (chroot-less, with $DPKG_ROOT), otherwise
#     the packages are unpacked and the scripts' sysusers/tmpfiles steps are applied to the
#     scratch root by hand, so the host's systemd is never touched;
#   - systemd-analyze verifies the packaged units and rates the service's exposure <= 2.0;
#   - the packaged llepd, started from the scratch root with its packaged llepd.conf, serves
#     the packaged llepctl, llep-plan and llep-demo (--check: outputs match a float64
#     reference), and a program built against the -dev package's headers and llep-client.pc
#     (PKG_CONFIG_SYSROOT_DIR) runs a forward through it with the packaged library, and so does
#     the packaged Python package (with .venv's python3 for cffi and numpy, when there is one).
# Exit status 0 when all holds, 77 (skip) when not root or without dpkg-buildpackage/debhelper
# or git, 1 on failure. DEB_BUILD_OPTIONS is passed on (default "nocheck": the suites run in
# `meson test`).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/.." && pwd)
forward_src=$1
what=${2:---worktree}

fail() { echo "test-packaging: FAIL: $*" >&2; exit 1; }
note() { echo "test-packaging: $*"; }

tools=(dpkg dpkg-deb systemd-analyze systemd-sysusers systemd-tmpfiles pkg-config cc)
if [ ! -d "$what" ]; then tools+=(dpkg-buildpackage dh git); fi
for tool in "${tools[@]}"; do
    command -v "$tool" >/dev/null || { echo "test-packaging: SKIP: $tool not found"; exit 77; }
done
if [ "$(id -u)" -ne 0 ]; then
    echo "test-packaging: SKIP: installing into a scratch root with dpkg needs root"; exit 77
fi
if [ ! -d "$what" ] && ! git -C "$src" rev-parse --git-dir >/dev/null 2>&1; then
    echo "test-packaging: SKIP: $src is not a git checkout"; exit 77
fi

tmp=$(mktemp -d /tmp/test-packaging-XXXXXX)
llepd_pid=
cleanup() {
    if [ -n "$llepd_pid" ]; then kill -KILL "$llepd_pid" 2>/dev/null || true; fi
    rm -rf "$tmp"
}
trap cleanup EXIT

# ---- the .deb set -----------------------------------------------------------------------------
if [ -d "$what" ]; then
    debs=$(cd "$what" && pwd)
else
    debs=$tmp/debs
    start=$(date +%s)
    DEB_BUILD_OPTIONS=${DEB_BUILD_OPTIONS:-nocheck} "$src/packaging/build-deb.sh" "$debs" "$what" \
        >"$tmp/build-deb.log" 2>&1 || { cat "$tmp/build-deb.log" >&2; fail "build-deb.sh"; }
    built=("$debs"/*.deb)
    note "built in $(($(date +%s) - start)) s: ${#built[@]} .deb files"
fi
arch=$(dpkg --print-architecture)
multiarch=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || gcc -print-multiarch)
deb() {
    local f
    for f in "$debs/$1"_*_"$2".deb; do
        [ -e "$f" ] && { printf '%s' "$f"; return; }
    done
    fail "no $1 package in $debs"
}
llepd_deb=$(deb llepd "$arch")
tools_deb=$(deb llep-tools "$arch")
lib_deb=$(deb libllep-client0 "$arch")
dev_deb=$(deb libllep-client-dev "$arch")
py_deb=$(deb python3-llep "$arch")
for f in "$debs"/*.deb; do
    case "$f" in "$llepd_deb" | "$tools_deb" | "$lib_deb" | "$dev_deb" | "$py_deb" | *-dbgsym_*) ;;
        *) fail "unexpected package $f" ;; esac
done

# Key files of each package.
contents() { dpkg-deb --fsys-tarfile "$1" | tar -t | sed 's|^\./|/|'; }
has() {
    local deb=$1
    shift
    local list
    list=$(contents "$deb")
    for f in "$@"; do
        grep -qx -- "$f" <<<"$list" || fail "$(basename "$deb") lacks $f"
    done
}
has "$llepd_deb" /usr/sbin/llepd /lib/systemd/system/llepd.service /lib/systemd/system/llepd.socket \
    /usr/lib/sysusers.d/llep.conf /usr/lib/tmpfiles.d/llep.conf /etc/llep/llepd.conf \
    /usr/share/man/man8/llepd.8.gz /usr/share/man/man5/llepd.conf.5.gz
has "$tools_deb" /usr/bin/llepctl /usr/bin/llep-plan /usr/bin/llep-bench /usr/bin/llep-demo \
    /usr/share/man/man1/llepctl.1.gz /usr/share/man/man1/llep-plan.1.gz \
    /usr/share/man/man1/llep-bench.1.gz /usr/share/man/man1/llep-demo.1.gz
has "$lib_deb" "/usr/lib/$multiarch/libllep-client.so.0"
has "$dev_deb" /usr/include/llep/client.h /usr/include/llep/types.h /usr/include/llep/bf16.h \
    "/usr/lib/$multiarch/libllep-client.so" "/usr/lib/$multiarch/pkgconfig/llep-client.pc" \
    /usr/share/man/man3/llep-client.3.gz /usr/share/man/man3/llep_forward.3.gz
pydir=/usr/lib/python3/dist-packages/llep
has "$py_deb" "$pydir/__init__.py" "$pydir/client.py" "$pydir/torch.py" "$pydir/_ffi.py" \
    "$pydir/llep-client.h" "$pydir/_paths.py"

version=$(dpkg-deb -f "$llepd_deb" Version)
case "$(dpkg-deb -f "$tools_deb" Depends)" in *libllep-client0*) ;; *)
    fail "llep-tools does not depend on libllep-client0" ;; esac
case "$(dpkg-deb -f "$dev_deb" Depends)" in *"libllep-client0 (= $version)"*) ;; *)
    fail "libllep-client-dev does not depend on libllep-client0 (= $version)" ;; esac
case "$(dpkg-deb -f "$py_deb" Depends)" in
    *"libllep-client0 (= $version)"*python3-cffi*python3-numpy*) ;;
    *) fail "python3-llep does not depend on libllep-client0 (= $version), cffi and numpy" ;;
esac
dpkg-deb -e "$llepd_deb" "$tmp/llepd.control"
grep -qx /etc/llep/llepd.conf "$tmp/llepd.control/conffiles" || fail "llepd.conf is not a conffile"
for snippet in "systemd-sysusers" "systemd-tmpfiles" "deb-systemd-helper enable 'llepd.socket'" \
               "deb-systemd-helper enable 'llepd.service'"; do
    grep -qF "$snippet" "$tmp/llepd.control/postinst" || fail "llepd's postinst lacks $snippet"
done
# Users come before the directory that belongs to them.
[ "$(grep -n systemd-sysusers "$tmp/llepd.control/postinst" | head -n 1 | cut -d: -f1)" -lt \
  "$(grep -n systemd-tmpfiles "$tmp/llepd.control/postinst" | head -n 1 | cut -d: -f1)" ] ||
    fail "postinst runs systemd-tmpfiles before systemd-sysusers"
note "packages $version: llepd, llep-tools, libllep-client0, libllep-client-dev, python3-llep, as expected"

# ---- install into a scratch root ----------------------------------------------------------------
root=$tmp/root
mkdir -p "$root/var/lib/dpkg/info" "$root/var/lib/dpkg/updates" "$root/var/lib/dpkg/triggers" \
         "$root/etc"
touch "$root/var/lib/dpkg/status"
dpkg_root=(dpkg "--root=$root" --log=/dev/null --force-depends --force-script-chrootless
           --no-triggers)
"${dpkg_root[@]}" --unpack "$llepd_deb" "$tools_deb" "$lib_deb" "$dev_deb" "$py_deb" \
    >"$tmp/dpkg.log" 2>&1 || { cat "$tmp/dpkg.log" >&2; fail "dpkg --unpack into the scratch root"; }
if [ -d /run/systemd/system ]; then
    # The configure step would ask the host's systemd to reload: do its work by hand.
    mv "$root/etc/llep/llepd.conf.dpkg-new" "$root/etc/llep/llepd.conf"
    systemd-sysusers --root="$root" llep.conf >/dev/null 2>&1 || fail "systemd-sysusers"
    systemd-tmpfiles --root="$root" --create llep.conf >/dev/null 2>&1 || fail "systemd-tmpfiles"
    how="unpacked (systemd runs here: postinst steps applied by hand)"
else
    "${dpkg_root[@]}" --configure -a >>"$tmp/dpkg.log" 2>&1 ||
        { cat "$tmp/dpkg.log" >&2; fail "dpkg --configure in the scratch root"; }
    for link in sockets.target.wants/llepd.socket multi-user.target.wants/llepd.service; do
        [ -L "$root/etc/systemd/system/$link" ] || fail "postinst did not enable $link"
    done
    how="installed with maintainer scripts (units enabled)"
fi
status=$(dpkg-query "--admindir=$root/var/lib/dpkg" -W -f '${db:Status-Abbrev}${Package} ' \
         llepd llep-tools libllep-client0 libllep-client-dev python3-llep)
uid=$(awk -F: '$1 == "llep" { print $3 }' "$root/etc/passwd")
gid=$(awk -F: '$1 == "llep" { print $3 }' "$root/etc/group")
if [ -z "$uid" ] || [ -z "$gid" ]; then fail "no user or group llep in the scratch root"; fi
[ "$(stat -c '%a %u %g' "$root/run/llep")" = "750 $uid $gid" ] || fail "/run/llep is wrong"
[ -f "$root/etc/llep/llepd.conf" ] || fail "no /etc/llep/llepd.conf"
note "$how: $status; user llep $uid, /run/llep 0750"

# ---- the packaged units -----------------------------------------------------------------------
mkdir "$tmp/units"
sed "s|=/usr/sbin/llepd|=$root/usr/sbin/llepd|" "$root/lib/systemd/system/llepd.service" \
    >"$tmp/units/llepd.service"
cp "$root/lib/systemd/system/llepd.socket" "$tmp/units/"
MANPATH=$root/usr/share/man systemd-analyze verify --man=yes "$tmp/units/llepd.service" \
    "$tmp/units/llepd.socket" >"$tmp/verify.log" 2>&1 || { cat "$tmp/verify.log" >&2; fail "verify"; }
[ ! -s "$tmp/verify.log" ] || { cat "$tmp/verify.log" >&2; fail "systemd-analyze verify warned"; }
systemd-analyze security --offline=true --threshold=20 --no-pager "$tmp/units/llepd.service" \
    >"$tmp/security.log" 2>&1 || { cat "$tmp/security.log" >&2; fail "exposure above 2.0"; }
note "units verified; $(grep -o 'Overall exposure level.*' "$tmp/security.log")"

# ---- run the packaged programs from the scratch root ----------------------------------------------
lib=$root/usr/lib/$multiarch
export LD_LIBRARY_PATH=$lib
sock=$tmp/llepd.sock
"$root/usr/sbin/llepd" --config "$root/etc/llep/llepd.conf" --socket "$sock" 2>"$tmp/llepd.log" &
llepd_pid=$!
for _ in $(seq 500); do
    [ -S "$sock" ] && break
    sleep 0.02
done
[ -S "$sock" ] || { cat "$tmp/llepd.log" >&2; fail "the packaged llepd did not listen"; }

"$root/usr/bin/llepctl" --socket "$sock" status >"$tmp/status.txt" || fail "llepctl status"
grep -q "$(dpkg-deb -f "$llepd_deb" Version | sed 's/-.*//')" "$tmp/status.txt" ||
    fail "llepctl status does not show the packaged version: $(cat "$tmp/status.txt")"
"$root/usr/bin/llep-plan" --devices 2 --min-tokens 1 90 10 10 10 >/dev/null || fail "llep-plan"
"$root/usr/bin/llep-demo" --socket "$sock" --clients 2 --forwards 3 --tokens 64 --experts 8 \
    --top-k 2 --hidden 32 --inter 32 --check >"$tmp/demo.log" 2>&1 ||
    { cat "$tmp/demo.log" >&2; fail "llep-demo --check through the packaged llepd"; }

pc=$(PKG_CONFIG_PATH="$lib/pkgconfig" PKG_CONFIG_SYSROOT_DIR="$root" \
     pkg-config --cflags --libs llep-client) || fail "pkg-config llep-client from the -dev package"
# shellcheck disable=SC2086  # $pc is a list of flags
cc -std=c11 -Wall -Wextra -Werror -o "$tmp/forward-check" "$forward_src" $pc -lm ||
    fail "compiling against the -dev package"
deps=$(ldd "$tmp/forward-check")
case "$deps" in *"$lib/libllep-client.so.0"*) ;; *) fail "forward-check loads $deps" ;; esac
"$tmp/forward-check" "$sock" || fail "forward through the packaged llepd"

# The packaged Python package, with its own declarations (llep-client.h) and the packaged
# library; the interpreter is .venv's, which has cffi and numpy (python3-llep's dependencies,
# not installed in the scratch root).
if [ -x "$src/.venv/bin/python3" ]; then
    env -u LD_PRELOAD -u LLEP_CLIENT_CDEF PYTHONPATH="$root/usr/lib/python3/dist-packages" \
        PYTHONDONTWRITEBYTECODE=1 LLEP_CLIENT_LIB="$lib/libllep-client.so.0" \
        "$src/.venv/bin/python3" "$src/tests/python/installed-check.py" "$sock" "$root" \
        >"$tmp/python.log" 2>&1 ||
        { cat "$tmp/python.log" >&2; fail "a forward with the packaged Python package"; }
    note "$(cat "$tmp/python.log")"
else
    note "no .venv: the packaged Python package was not run"
fi

kill -TERM "$llepd_pid"
wait "$llepd_pid" || fail "the packaged llepd exited with status $?"
llepd_pid=
note "packaged llepd, llepctl, llep-plan, llep-demo --check and a -dev build ran from the scratch root"
