"""numpy arrays and torch CPU tensors as the pointers and element types libllep-client takes.

A contiguous array is passed as it is (its data pointer; the library copies it into its arena);
one that is not contiguous is copied once into a contiguous one first. bfloat16 comes as
``torch.bfloat16`` or as numpy's ``ml_dtypes.bfloat16``. torch and ml_dtypes are imported only
when such an object shows up.
"""
from __future__ import annotations

import math
import sys
import warnings
from typing import Any, Optional, Tuple

import numpy as np

from ._errors import invalid

# Element types by the names the C side uses.
F32, BF16, I32, I64 = "f32", "bf16", "i32", "i64"
FLOATS = (F32, BF16)
INTS = (I32, I64)


def _ml_bfloat16() -> Optional[np.dtype]:
    try:
        import ml_dtypes
    except ImportError:
        return None
    return np.dtype(ml_dtypes.bfloat16)


def is_torch(obj: Any) -> bool:
    """Whether obj is a torch.Tensor (without importing torch when it is not loaded)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.Tensor)


def numpy_dtype(kind: str) -> np.dtype:
    if kind == BF16:
        dt = _ml_bfloat16()
        if dt is None:
            raise invalid("bfloat16 numpy arrays need the ml_dtypes package")
        return dt
    return np.dtype({F32: np.float32, I32: np.int32, I64: np.int64}[kind])


def torch_dtype(kind: str):
    import torch

    return {F32: torch.float32, BF16: torch.bfloat16, I32: torch.int32, I64: torch.int64}[kind]


def _kind_of_numpy(dt: np.dtype) -> Optional[str]:
    if dt == np.float32:
        return F32
    if dt == np.int32:
        return I32
    if dt == np.int64:
        return I64
    bf = _ml_bfloat16()
    if bf is not None and dt == bf:
        return BF16
    return None


def _kind_of_torch(dt) -> Optional[str]:
    import torch

    return {torch.float32: F32, torch.bfloat16: BF16, torch.int32: I32,
            torch.int64: I64}.get(dt)


NAMES = {F32: "float32", BF16: "bfloat16", I32: "int32", I64: "int64"}


class Buffer:
    """A contiguous array or tensor, its element type and its data pointer; holds a reference
    to what owns the memory for as long as the library may read or write it."""

    __slots__ = ("obj", "kind", "shape", "ptr", "torch")

    def __init__(self, obj: Any, kind: str, shape: Tuple[int, ...], ptr: int, torch: bool):
        self.obj = obj
        self.kind = kind
        self.shape = shape
        self.ptr = ptr
        self.torch = torch

    @property
    def rows(self) -> int:
        return math.prod(self.shape[:-1])


def is_cuda(obj: Any) -> bool:
    return is_torch(obj) and obj.device.type == "cuda"


def in_space(obj: Any, space: Any) -> bool:
    """Whether a contiguous torch tensor lies wholly in the client's space (a Space or None)."""
    return (space is not None and is_torch(obj) and obj.is_contiguous() and
            obj.device.type == ("cuda" if space.kind == "cuda" else "cpu") and
            space.contains(obj.data_ptr(), obj.numel() * obj.element_size()))


_warned = set()


def warn_host_path(what: str, why: str) -> None:
    """Says once per tensor role that a CUDA tensor goes through host memory."""
    if what in _warned:
        return
    _warned.add(what)
    warnings.warn(f"llep: {what} is {why}: it goes through host memory (device -> host -> "
                  f"llepd and back). Allocate x and out with client.space(...).tensor(...) to "
                  f"keep them on the GPU.", RuntimeWarning, stacklevel=4)


def host_unless_in(obj: Any, what: str, space: Any, routing: bool = False) -> Any:
    """A CUDA tensor outside the space as a CPU copy (the host path; the routing always goes
    through the arena, as llepd copies it out anyway); anything else as it is."""
    if not is_cuda(obj) or in_space(obj, space):
        return obj
    if not routing:
        warn_host_path(what, "a CUDA tensor not allocated from the client's space")
    return obj.cpu()


def _adapt(obj: Any, what: str, allowed: Tuple[str, ...], *, writable: bool,
           space: Any = None) -> Buffer:
    if is_torch(obj):
        if obj.device.type != "cpu" and not in_space(obj, space):
            raise invalid(f"{what}: llep takes CPU tensors, or CUDA tensors allocated from "
                          f"the client's space, not other {obj.device.type} ones")
        kind = _kind_of_torch(obj.dtype)
        if kind not in allowed:
            raise invalid(f"{what}: dtype {obj.dtype} is not one of "
                             f"{', '.join(NAMES[k] for k in allowed)}")
        if not obj.is_contiguous():
            if writable:
                raise invalid(f"{what}: the output tensor must be contiguous")
            obj = obj.contiguous()
        return Buffer(obj, kind, tuple(obj.shape), obj.data_ptr(), True)
    if not isinstance(obj, np.ndarray):
        if writable:
            raise TypeError(f"{what}: a numpy array or torch tensor, not {type(obj).__name__}")
        obj = np.asarray(obj)
    kind = _kind_of_numpy(obj.dtype)
    if kind not in allowed:
        raise invalid(f"{what}: dtype {obj.dtype} is not one of "
                         f"{', '.join(NAMES[k] for k in allowed)}")
    if writable:
        if not obj.flags.c_contiguous or not obj.flags.writeable:
            raise invalid(f"{what}: the output array must be C-contiguous and writable")
    elif not obj.flags.c_contiguous or not obj.flags.aligned or not obj.dtype.isnative:
        obj = np.ascontiguousarray(obj, dtype=obj.dtype.newbyteorder("="))
    return Buffer(obj, kind, tuple(obj.shape), obj.ctypes.data, False)


def adapt_in(obj: Any, what: str, allowed: Tuple[str, ...], space: Any = None) -> Buffer:
    """An input: passed as it is when contiguous, else copied into a contiguous one."""
    return _adapt(obj, what, allowed, writable=False, space=space)


def adapt_out(obj: Any, what: str, allowed: Tuple[str, ...], space: Any = None) -> Buffer:
    """An output the library writes into: it must be contiguous and writable as it is."""
    return _adapt(obj, what, allowed, writable=True, space=space)


def empty_like(like: Buffer, shape: Tuple[int, ...], kind: str) -> Any:
    """A new array of the same kind (numpy or torch) as ``like``."""
    if like.torch:
        import torch

        return torch.empty(shape, dtype=torch_dtype(kind))
    return np.empty(shape, dtype=numpy_dtype(kind))


def dims(obj: Any) -> Tuple[int, ...]:
    """The shape of an array or tensor."""
    return tuple(obj.shape)
