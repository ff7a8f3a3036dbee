"""The declarations of libllep-client for cffi, read from the real headers.

cffi's parser takes plain C declarations, without includes, conditionals or attributes; the C
preprocessor makes those of include/llep/client.h (which includes llep/types.h). The build runs
this module once to write the file installed beside the package (``python3 _cdef.py HEADER OUT
CC...``); a package imported from the source tree runs the preprocessor at import instead.
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from typing import Optional, Sequence

# The C library's headers the public ones include are given to the preprocessor as empty
# files: cffi has the types they define (uint32_t, size_t, ...) built in, and their real text
# is not the plain declarations cffi parses.
_EMPTY_LIBC_HEADERS = ("stdint.h", "stddef.h", "stdbool.h")


def _default_cc() -> list[str]:
    if os.environ.get("CC"):
        return shlex.split(os.environ["CC"])
    for cc in ("cc", "gcc", "clang", "cpp"):
        path = shutil.which(cc)
        if path:
            return [path]
    raise ImportError("llep: no C preprocessor (cc, gcc, clang or cpp) to read include/llep/*.h; "
                      "install the package built by meson, or set LLEP_CLIENT_CDEF")


def preprocess(header: str, cc: Optional[Sequence[str]] = None) -> str:
    """The declarations of ``header`` (include/llep/client.h) as plain C for ``ffi.cdef``."""
    include_root = os.path.dirname(os.path.dirname(os.path.abspath(header)))
    with tempfile.TemporaryDirectory(prefix="llep-cdef-") as libc_dir:
        for name in _EMPTY_LIBC_HEADERS:
            open(os.path.join(libc_dir, name), "w").close()
        cmd = list(cc or _default_cc()) + [
            "-E", "-P", "-nostdinc", "-I", libc_dir, "-I", include_root,
            # LLEP_EXTERN is a visibility attribute, which cffi does not parse.
            "-D__attribute__(x)=", "-x", "c", os.path.abspath(header)]
        done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise ImportError(f"llep: preprocessing {header} failed ({shlex.join(cmd)}): "
                          f"{done.stderr.strip()}")
    lines = [line.rstrip() for line in done.stdout.splitlines() if line.strip()]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str]) -> int:
    if len(argv) < 3:
        print("usage: _cdef.py HEADER OUTPUT [CC ARGS...]", file=sys.stderr)
        return 2
    text = preprocess(argv[1], argv[3:] or None)
    with open(argv[2], "w") as f:
        f.write("/* Generated from " + os.path.basename(argv[1]) + " by llep/_cdef.py. */\n")
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
