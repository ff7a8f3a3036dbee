"""cffi reads include/llep/client.h and lays its structs out itself (ABI mode): every size and
field offset must be the C compiler's, as tests/python/abi-probe.c prints them."""
from __future__ import annotations

import json
import os
import subprocess

import pytest

from llep._ffi import ffi, lib


def test_struct_layouts_match_the_compiler():
    probe = os.environ.get("LLEP_ABI_PROBE")
    if not probe:
        pytest.skip("LLEP_ABI_PROBE is not set (meson's test python sets it)")
    c = json.loads(subprocess.run([probe], check=True, stdout=subprocess.PIPE,
                                  text=True).stdout)
    assert set(c) == {"llep_layer_desc", "llep_io", "llep_model_info"}
    for struct, info in c.items():
        assert ffi.sizeof(struct) == info["sizeof"], struct
        for field, offset in info["fields"].items():
            assert ffi.offsetof(struct, field) == offset, f"{struct}.{field}"
    # and the fields the probe lists are all there are
    for struct, info in c.items():
        assert [name for name, _ in ffi.typeof(struct).fields] == list(info["fields"])


def test_declarations_are_the_headers():
    """The functions of the header, bound to the library's default symbol versions."""
    for name in ("llep_connect", "llep_layer_create", "llep_forward_ex", "llep_submit_ex",
                 "llep_model_get", "llep_model_layer", "llep_client_error"):
        assert callable(getattr(lib, name))
    assert ffi.typeof("llep_io").fields[-1][0] == "y_dtype"
