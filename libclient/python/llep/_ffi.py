"""cffi's view of libllep-client: the declarations of include/llep/client.h, and the library.

ABI mode: nothing is compiled at install, the library is opened with dlopen. Where the
declarations come from, first found:

1. ``$LLEP_CLIENT_CDEF``, a file written by ``_cdef.py`` (the build directory's, for tests);
2. ``llep-client.h`` beside this file, which ``meson install`` puts there;
3. the source tree's include/llep/client.h, preprocessed now (a package used in place).

The library: ``$LLEP_CLIENT_LIB`` (a path), else the one in the libdir the package was installed
with, else ``libllep-client.so.0`` wherever the dynamic linker finds it. dlsym gives the default
version of each symbol, so the calls bound here are those of the header read above.
"""
from __future__ import annotations

import os

from cffi import FFI

_HERE = os.path.dirname(os.path.abspath(__file__))
_SONAME = "libllep-client.so.0"


def _declarations() -> str:
    path = os.environ.get("LLEP_CLIENT_CDEF")
    if path:
        with open(path) as f:
            return f.read()
    installed = os.path.join(_HERE, "llep-client.h")
    if os.path.exists(installed):
        with open(installed) as f:
            return f.read()
    header = os.path.join(_HERE, "..", "..", "..", "include", "llep", "client.h")
    if os.path.exists(header):
        from . import _cdef

        return _cdef.preprocess(header)
    raise ImportError("llep: the declarations of libllep-client are missing (no llep-client.h "
                      "beside the package, no include/llep/client.h of a source tree, "
                      "$LLEP_CLIENT_CDEF unset)")


def _library_candidates() -> list[str]:
    if os.environ.get("LLEP_CLIENT_LIB"):
        return [os.environ["LLEP_CLIENT_LIB"]]
    found = []
    try:
        from . import _paths  # written by meson install

        found.append(os.path.join(_paths.LIBDIR, _SONAME))
    except ImportError:
        pass
    return found + [_SONAME]


def _open(ffi: FFI):
    errors = []
    for path in _library_candidates():
        try:
            return ffi.dlopen(path)
        except OSError as e:
            errors.append(f"{path}: {e}")
    raise ImportError("llep: cannot open libllep-client (set LLEP_CLIENT_LIB to its path): " +
                      "; ".join(errors))


ffi = FFI()
ffi.cdef(_declarations())
lib = _open(ffi)
try:
    lib.llep_forward_ex
except AttributeError as e:
    raise ImportError("llep: the libllep-client found is older than 0.3.0 (no llep_forward_ex)") from e
