"""llep: Mixture-of-Experts layers served by llepd, from Python.

A thin binding over libllep-client (include/llep/client.h) through cffi: the library speaks to
llepd, this package converts numpy arrays and torch CPU tensors to its pointers and its error
codes to exceptions. ::

    import llep
    with llep.connect() as client:
        layer = client.create_layer("moe0", top_k=2, w_gate_up=gate_up, w_down=down,
                                    gate_up_layout="fused_t", down_layout="dh")
        y = layer.forward(x, topk_idx, topk_w)

``llep.torch`` computes the experts of transformers' MoE blocks in llepd
(``llep.torch.patch(model, client)``).
"""
from ._errors import (LlepBusyError, LlepConnectionError, LlepConnectionLostError, LlepError,
                      LlepExistsError, LlepMemoryError, LlepNotFoundError, LlepPermissionError,
                      LlepTimeoutError, LlepValueError)
from .client import (Activation, Client, DownLayout, DType, GateUpLayout, Layer, LayerDesc,
                     Model, Policy, Scope, Ticket, connect)
from .space import Space



def _version() -> str:
    try:
        from . import _paths  # written by meson install

        return _paths.VERSION
    except ImportError:
        pass
    import os
    import re

    try:   # a source tree: the project's version
        here = os.path.dirname(os.path.abspath(__file__))
        with open(os.path.join(here, "..", "..", "..", "meson.build")) as f:
            return re.search(r"version:\s*'([^']+)'", f.read()).group(1) + "+source"
    except (OSError, AttributeError):
        return "unknown"


__version__ = _version()

__all__ = [
    "Activation", "Client", "DType", "DownLayout", "GateUpLayout", "Layer", "LayerDesc",
    "LlepBusyError", "LlepConnectionError", "LlepConnectionLostError", "LlepError",
    "LlepExistsError", "LlepMemoryError", "LlepNotFoundError", "LlepPermissionError",
    "LlepTimeoutError", "LlepValueError", "Model", "Policy", "Scope", "Space", "Ticket",
    "connect",
]
