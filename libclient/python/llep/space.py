"""A client's device space (include/llep/space.h) from Python: memory beside the client's
arena that llepd reads x from and writes y into in place, and tensors allocated from it.

``client.space(nbytes, gpu)`` registers one; ``space.tensor(shape, dtype)`` hands out torch
tensors backed by it (CUDA tensors over the client's CUDA memory when the library has CUDA and
llepd runs the CUDA backend, else CPU tensors over the host memfd that stands in for it), and
``space.array`` numpy arrays of a host space. Layer.forward and submit pass tensors that lie in
the space by offset; a CUDA tensor from elsewhere goes through host memory instead, with a
warning the first time. ::

    with llep.connect() as client:
        space = client.space(64 << 20, gpu=0)
        x = space.tensor((tokens, hidden), torch.bfloat16)
        y = space.tensor((tokens, hidden), torch.bfloat16)
        x.copy_(hidden_states)          # or a kernel writes it
        layer.forward(x, topk_idx, topk_w, out=y)

Allocation is a bump pointer (``reset()`` starts again from the beginning); tensors handed out
must not be used after ``free()``.
"""
from __future__ import annotations

import math
from typing import Any, Tuple

import numpy as np

from ._errors import error_for, invalid
from ._ffi import ffi, lib

# Every tensor starts on this many bytes, as the library's arena blocks do.
ALIGN = 256


def _check(code: int, client_ptr: Any) -> None:
    if code < 0:
        raise error_for(code, ffi.string(lib.llep_strerror(code)).decode(),
                        ffi.string(lib.llep_client_error(client_ptr)).decode(errors="replace"))


class _CudaBlob:
    """A device pointer as __cuda_array_interface__, for torch.as_tensor (bfloat16 goes as
    int16 and is viewed back: the interface has no bfloat16 type string)."""

    def __init__(self, ptr: int, shape: Tuple[int, ...], typestr: str, owner: "Space"):
        self.__cuda_array_interface__ = {"data": (ptr, False), "shape": shape,
                                         "typestr": typestr, "version": 3}
        self._owner = owner


class Space:
    """A registered device space (llep_space). Close it with ``free()`` (or ``with``)."""

    def __init__(self, client: Any, ptr: Any):
        self._client = client
        self._ptr = ptr
        self.base = int(ffi.cast("uintptr_t", lib.llep_space_base(ptr)))
        self.size = int(lib.llep_space_size(ptr))
        self.kind = "cuda" if lib.llep_space_kind(ptr) == lib.LLEP_SPACE_CUDA else "host"
        self.gpu = int(lib.llep_space_gpu(ptr))
        self._next = 0

    def __repr__(self) -> str:
        state = "freed" if self._ptr is None else f"{self.size} bytes, {self._next} used"
        where = f"GPU {self.gpu}" if self.kind == "cuda" else "host"
        return f"<llep.Space {self.kind} on {where}: {state}>"

    def contains(self, ptr: int, nbytes: int) -> bool:
        """Whether [ptr, ptr + nbytes) lies wholly in the space."""
        return self._ptr is not None and self.base <= ptr and ptr + nbytes <= self.base + self.size

    def _take(self, nbytes: int) -> int:
        if self._ptr is None:
            raise invalid("the space is freed")
        start = (self._next + ALIGN - 1) // ALIGN * ALIGN
        if start + nbytes > self.size:
            raise invalid(f"{nbytes} bytes do not fit in the space: {self.size - start} of "
                          f"{self.size} left (reset() starts again)")
        self._next = start + nbytes
        return self.base + start

    def tensor(self, shape: Tuple[int, ...], dtype: Any = None) -> Any:
        """A torch tensor of ``shape`` and ``dtype`` (default float32) backed by the space:
        on the space's GPU for a CUDA space, on the CPU for the host stand-in. Its contents
        are whatever the memory holds."""
        import torch

        dtype = dtype or torch.float32
        if dtype not in (torch.float32, torch.bfloat16, torch.int32, torch.int64):
            raise invalid(f"dtype {dtype}: float32, bfloat16, int32 or int64")
        shape = tuple(int(s) for s in shape)
        esz = torch.empty((), dtype=dtype).element_size()
        nbytes = max(1, math.prod(shape)) * esz
        ptr = self._take(nbytes)
        if self.kind == "cuda":
            typestr = {torch.float32: "<f4", torch.bfloat16: "<i2", torch.int32: "<i4",
                       torch.int64: "<i8"}[dtype]
            t = torch.as_tensor(_CudaBlob(ptr, shape, typestr, self),
                                device=torch.device("cuda", self.gpu))
            return t.view(torch.bfloat16) if dtype == torch.bfloat16 else t
        buf = ffi.buffer(ffi.cast("char *", ptr), nbytes)
        flat = torch.frombuffer(buf, dtype=dtype, count=math.prod(shape))
        return flat.view(shape)

    def array(self, shape: Tuple[int, ...], dtype: Any = np.float32) -> np.ndarray:
        """A numpy array backed by a host space."""
        if self.kind != "host":
            raise invalid("numpy arrays live in host memory: this space is on a GPU")
        dt = np.dtype(dtype)
        shape = tuple(int(s) for s in shape)
        nbytes = max(1, math.prod(shape)) * dt.itemsize
        ptr = self._take(nbytes)
        buf = ffi.buffer(ffi.cast("char *", ptr), nbytes)
        return np.frombuffer(buf, dtype=dt, count=math.prod(shape)).reshape(shape)

    def reset(self) -> None:
        """Hands out the space from its beginning again (earlier tensors then alias new ones)."""
        self._next = 0

    def free(self) -> None:
        """Releases the space in llepd and here (llep_space_free); LlepBusyError while forwards
        naming it are in flight. Idempotent."""
        if self._ptr is None:
            return
        if self._client._ptr is not None:
            _check(lib.llep_space_free(self._ptr), self._client._ptr)
        self._ptr = None
        if self._client._space is self:
            self._client._space = None

    def __enter__(self) -> "Space":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.free()
