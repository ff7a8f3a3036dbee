#!/bin/sh
# meson install script: install-config.sh SOURCE DEST installs SOURCE as DEST (under
# $DESTDIR) with mode 0644, unless DEST exists: an administrator's settings are never
# overwritten by a reinstall.
set -eu
src=$1
dest=${DESTDIR:+$DESTDIR/}$2
dest=$(printf '%s' "$dest" | sed 's|//*|/|g')
if [ -e "$dest" ]; then
    echo "Keeping $dest (the new default is $src)"
    exit 0
fi
mkdir -p "$(dirname "$dest")"
install -m 0644 "$src" "$dest"
echo "Installing $src to $dest"
