"""Clients, layers and models of llepd: the calls of include/llep/client.h in Python."""
from __future__ import annotations

import enum
import errno
import math
import os
from typing import Any, Dict, Mapping, Optional, Sequence, Union

from . import _tensors as T
from ._errors import LlepConnectionError, LlepError, LlepTimeoutError, error_for, invalid
from ._ffi import ffi, lib
from .space import Space

__all__ = [
    "Activation", "Client", "DType", "DownLayout", "GateUpLayout", "Layer", "LayerDesc",
    "Model", "Policy", "Scope", "Ticket", "connect",
]


def _enum(name: str, ctype: str, prefix: str) -> type:
    """A Python IntEnum with the members of a C enum of the header, prefix removed."""
    members = {cname[len(prefix):]: value
               for value, cname in sorted(ffi.typeof(ctype).elements.items())}
    return enum.IntEnum(name, members, module=__name__)


DType = _enum("DType", "enum llep_dtype", "LLEP_DTYPE_")
Activation = _enum("Activation", "enum llep_act", "LLEP_ACT_")
Policy = _enum("Policy", "enum llep_policy", "LLEP_POLICY_")
Scope = _enum("Scope", "enum llep_scope", "LLEP_SCOPE_")
GateUpLayout = _enum("GateUpLayout", "enum llep_gate_up_layout", "LLEP_GATE_UP_")
DownLayout = _enum("DownLayout", "enum llep_down_layout", "LLEP_DOWN_")

EnumArg = Union[str, int]


def _member(cls: type, value: EnumArg, what: str) -> int:
    """An enum member from itself, its value or its name in any case ("llep", "FUSED_T")."""
    if isinstance(value, str):
        try:
            return int(cls[value.upper()])
        except KeyError:
            pass
    else:
        try:
            return int(cls(value))
        except ValueError:
            pass
    names = ", ".join(m.name.lower() for m in cls)
    raise invalid(f"{what} {value!r} is not one of {names}")



def _cname(name: str, what: str = "name") -> bytes:
    """A name for the C library: C strings end at a NUL, so a name holding one would reach
    llepd cut short; it is refused here instead (as llepd refuses one on the wire)."""
    if not isinstance(name, str):
        raise invalid(f"{what} must be a str, not {type(name).__name__}")
    if "\0" in name:
        raise invalid(f"{what} {name!r} has a NUL character")
    return name.encode()


def _check_code(code: int, handle: Any, *, connecting: bool = False) -> None:
    """Raises the exception for a negative code, with the library's message for handle."""
    if code >= 0:
        return
    strerror = ffi.string(lib.llep_strerror(code)).decode()
    raw = lib.llep_client_error(handle if handle is not None else ffi.NULL)
    message = ffi.string(raw).decode(errors="replace") if raw != ffi.NULL else ""
    raise error_for(code, strerror, message, connecting=connecting)


_FLOAT_TYPES = {T.F32: lib.LLEP_IO_F32, T.BF16: lib.LLEP_IO_BF16}


def _to_device_of(like: Any):
    """finish() of an output computed on the host for a CUDA x: moved to x's device."""
    return lambda host_out: (lambda: host_out.to(like.device))


def _copy_into(dev_out: Any):
    """finish() of an output computed on the host for a CUDA out outside the space."""
    def bind(host_out: Any):
        def finish() -> Any:
            dev_out.copy_(host_out)
            return dev_out
        return finish
    return bind


class LayerDesc:
    """A layer's shape and policy as llepd holds it (llep_layer_desc without the pointers)."""

    __slots__ = ("num_experts", "top_k", "hidden", "inter", "dtype", "act", "act_alpha",
                 "act_limit", "policy", "alpha", "lambda_", "min_tokens", "group", "scope",
                 "group_timeout_ms")

    def __init__(self, d: Any):
        self.num_experts: int = d.num_experts
        self.top_k: int = d.top_k
        self.hidden: int = d.hidden
        self.inter: int = d.inter
        self.dtype = DType(d.dtype)
        self.act = Activation(d.act)
        self.act_alpha: float = d.act_alpha
        self.act_limit: float = d.act_limit
        self.policy = Policy(d.policy)
        self.alpha: float = d.alpha
        self.lambda_: float = getattr(d, "lambda")   # a keyword in Python
        self.min_tokens: int = d.min_tokens
        self.group: int = d.group
        self.scope = Scope(d.scope)
        self.group_timeout_ms: int = d.group_timeout_ms

    def as_dict(self) -> Dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__}

    def __repr__(self) -> str:
        return (f"LayerDesc(N={self.num_experts}, K={self.top_k}, D={self.hidden}, "
                f"H={self.inter}, {self.dtype.name.lower()}, {self.act.name.lower()}, "
                f"policy={self.policy.name.lower()})")


class Ticket:
    """A submission in flight (:meth:`Layer.submit`); collect it once with :meth:`wait` or
    :meth:`Client.wait`. Until then it keeps the inputs and the output alive."""

    __slots__ = ("client", "id", "out", "_keep", "_done", "_error", "_finish")

    def __init__(self, client: "Client", ticket_id: int, out: Any, keep: tuple,
                 finish: Any = None):
        self.client = client
        self.id = ticket_id
        self.out = out
        self._keep = keep
        self._done = False
        self._error: Optional[LlepError] = None
        self._finish = finish    # copies a host output to a CUDA out (host path)

    def wait(self, timeout: Optional[float] = None) -> Any:
        """Waits for the result (timeout in seconds, None: as long as it takes) and returns
        the output. LlepTimeoutError when it has not completed in time (the ticket then stays
        valid); the submission's own error otherwise."""
        return self.client.wait(self, timeout)

    @property
    def done(self) -> bool:
        """Whether the ticket has been collected."""
        return self._done


class Layer:
    """A handle on a layer of llepd (llep_layer). Close it (or use ``with``) to drop this
    client's reference; llepd frees the layer with the last one."""

    def __init__(self, client: "Client", ptr: Any, name: str):
        self._client = client
        self._ptr = ptr
        self.name = name
        d = ffi.new("llep_layer_desc *")
        _check_code(lib.llep_layer_get_desc(ptr, d), client._ptr)
        self.desc = LayerDesc(d)

    # ---- shape -------------------------------------------------------------------------
    @property
    def client(self) -> "Client":
        return self._client

    @property
    def num_experts(self) -> int:
        return self.desc.num_experts

    @property
    def top_k(self) -> int:
        return self.desc.top_k

    @property
    def hidden(self) -> int:
        return self.desc.hidden

    @property
    def inter(self) -> int:
        return self.desc.inter

    @property
    def dtype(self) -> "DType":
        return self.desc.dtype

    def __repr__(self) -> str:
        state = "closed" if self._ptr is None else repr(self.desc)
        return f"<llep.Layer {self.name!r} {state}>"

    # ---- forwards ----------------------------------------------------------------------
    def _handle(self) -> Any:
        if self._ptr is None:
            raise invalid(f"layer '{self.name}' is closed")
        self._client._handle()
        return self._ptr

    def _io(self, x: Any, topk_idx: Any, topk_w: Any, out: Any):
        d = self.desc
        space = self._client._space
        # CUDA tensors: those in the client's space go by offset; others through host memory.
        x = T.host_unless_in(x, "x", space)
        topk_idx = T.host_unless_in(topk_idx, "topk_idx", None, routing=True)
        topk_w = T.host_unless_in(topk_w, "topk_w", None, routing=True)
        finish = None
        if out is None and T.is_cuda(x):
            out_dev, out = x, None     # the result goes back to x's device
            T.warn_host_path("out", "out=None with a CUDA x (pass out=space.tensor(...))")
            finish = _to_device_of(out_dev)
        elif out is not None and T.is_cuda(out) and not T.in_space(out, space):
            T.warn_host_path("out", "a CUDA tensor not allocated from the client's space")
            finish, out = _copy_into(out), None
        xb = T.adapt_in(x, "x", T.FLOATS, space)
        ib = T.adapt_in(topk_idx, "topk_idx", T.INTS)
        wb = T.adapt_in(topk_w, "topk_w", T.FLOATS)
        if len(xb.shape) < 1 or xb.shape[-1] != d.hidden:
            raise invalid(f"x has shape {xb.shape}: the last dimension must be the layer's "
                       f"hidden size {d.hidden}")
        lead = xb.shape[:-1]
        for name, b in (("topk_idx", ib), ("topk_w", wb)):
            if b.shape != lead + (d.top_k,):
                raise invalid(f"{name} has shape {b.shape}, x {xb.shape}: it must be "
                           f"{lead + (d.top_k,)} (top_k {d.top_k})")
        tokens = math.prod(lead)
        if tokens >= 1 << 32:
            raise invalid(f"{tokens} tokens in one forward: at most 2^32 - 1")
        if out is None:
            out = T.empty_like(xb, xb.shape, xb.kind)
        ob = T.adapt_out(out, "out", T.FLOATS, space)
        if ob.shape != xb.shape:
            raise invalid(f"out has shape {ob.shape}, x {xb.shape}: they must be equal")
        io = ffi.new("llep_io *")
        io.tokens = tokens
        io.x = ffi.cast("void *", xb.ptr)
        io.topk_idx = ffi.cast("void *", ib.ptr)
        io.topk_w = ffi.cast("void *", wb.ptr)
        io.y = ffi.cast("void *", ob.ptr)
        io.idx_type = lib.LLEP_INDEX_I64 if ib.kind == T.I64 else lib.LLEP_INDEX_I32
        io.x_dtype = _FLOAT_TYPES[xb.kind]
        io.w_dtype = _FLOAT_TYPES[wb.kind]
        io.y_dtype = _FLOAT_TYPES[ob.kind]
        if finish is not None:
            finish = finish(out)
        return io, (xb, ib, wb, ob), out, finish

    def forward(self, x: Any, topk_idx: Any, topk_w: Any, out: Any = None) -> Any:
        """Runs the layer: ``out[t] = sum over k of topk_w[t, k] * FFN_{topk_idx[t, k]}(x[t])``.

        x is ``[..., D]``, topk_idx and topk_w ``[..., K]`` with the same leading dimensions:
        numpy arrays or torch CPU tensors; x, topk_w and out float32 or bfloat16 (torch's, or
        ml_dtypes' for numpy), each independently of the layer's dtype; topk_idx int32 or
        int64. Contiguous inputs are not copied here. Returns out, or a new array of x's kind,
        shape and dtype. Blocks until the result is there; releases the GIL meanwhile.
        """
        handle = self._handle()
        io, keep, out, finish = self._io(x, topk_idx, topk_w, out)
        code = lib.llep_forward_ex(handle, io)
        del keep
        _check_code(code, self._client._ptr)
        return finish() if finish is not None else out

    __call__ = forward

    def submit(self, x: Any, topk_idx: Any, topk_w: Any, out: Any = None) -> Ticket:
        """Queues a forward without waiting (arguments as :meth:`forward`) and returns a
        :class:`Ticket`; llepd may batch submissions of several clients and layers into one
        step. The output is written when the ticket is waited for."""
        handle = self._handle()
        io, keep, out, finish = self._io(x, topk_idx, topk_w, out)
        ticket = ffi.new("uint64_t *")
        _check_code(lib.llep_submit_ex(handle, io, ticket), self._client._ptr)
        t = Ticket(self._client, int(ticket[0]), out, keep, finish)
        self._client._pending[t.id] = t
        return t

    # ---- lifetime ----------------------------------------------------------------------
    def close(self) -> None:
        """Releases the layer (llep_layer_release). Idempotent; wait for its tickets first."""
        ptr, self._ptr = self._ptr, None
        if ptr is not None and self._client._ptr is not None:
            self._client._layers.discard(self)
            lib.llep_layer_release(ptr)

    def __enter__(self) -> "Layer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Model:
    """A model llepd loaded from a checkpoint: ``model.layers[i]`` is its MoE layer i (the layer
    "NAME/i"), attached on first use."""

    def __init__(self, client: "Client", name: str, info: Any):
        self.client = client
        self.name = name
        self.num_layers: int = info.num_layers
        self.desc = LayerDesc(info.desc)
        self.bias = bool(info.bias)
        self.model_type: str = ffi.string(info.model_type).decode()
        self.layers = _ModelLayers(self)

    def __len__(self) -> int:
        return self.num_layers

    def __repr__(self) -> str:
        return (f"<llep.Model {self.name!r} {self.model_type}, {self.num_layers} MoE layers of "
                f"{self.desc!r}>")


class _ModelLayers(Sequence):
    """The MoE layers of a Model, attached lazily."""

    def __init__(self, model: Model):
        self._model = model
        self._layers: Dict[int, Layer] = {}

    def __len__(self) -> int:
        return self._model.num_layers

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"model '{self._model.name}' has {len(self)} MoE layers, not {i}")
        layer = self._layers.get(i)
        if layer is None or layer._ptr is None:
            layer = self._model.client._model_layer(self._model.name, i)
            self._layers[i] = layer
        return layer


class Client:
    """A connection to llepd with its own shared-memory arena (llep_client). Thread-safe.
    Close it (or use ``with``) to release its layers and the connection."""

    def __init__(self, socket: Optional[str] = None, *, reconnect: Optional[bool] = None):
        ret = ffi.new("llep_client **")
        path = os.fsencode(socket) if socket is not None else ffi.NULL
        if reconnect is None:
            reconnect = os.environ.get("LLEP_RECONNECT") == "1"
        flags = lib.LLEP_CONNECT_RECONNECT if reconnect else 0
        _check_code(lib.llep_connect_ex(path, flags, ret), None, connecting=True)
        self.reconnect = bool(reconnect)
        self._ptr = ret[0]
        self._layers: "set[Layer]" = set()
        self._pending: Dict[int, Ticket] = {}
        self._space: Optional[Space] = None

    def _handle(self) -> Any:
        if self._ptr is None:
            raise _closed_error()
        return self._ptr

    def _layer(self, ptr: Any, name: str) -> Layer:
        try:
            layer = Layer(self, ptr, name)
        except BaseException:
            lib.llep_layer_release(ptr)
            raise
        self._layers.add(layer)
        return layer

    # ---- layers ------------------------------------------------------------------------
    def create_layer(self, name: str, *, top_k: int,
                     w_down: Any, w_gate: Any = None, w_up: Any = None, w_gate_up: Any = None,
                     b_gate: Any = None, b_up: Any = None, b_down: Any = None,
                     b_gate_up: Any = None,
                     gate_up_layout: EnumArg = "separate", down_layout: EnumArg = "hd",
                     act: EnumArg = "swiglu", act_alpha: float = 0.0, act_limit: float = 0.0,
                     policy: EnumArg = "auto", alpha: float = 0.0, lambda_: float = 0.0,
                     min_tokens: int = 0, group: int = 0, scope: EnumArg = "node",
                     group_timeout_ms: int = 0, keep_weights: bool = False) -> Layer:
        """Creates the layer ``name`` in llepd from the given weights (numpy arrays or torch
        CPU tensors, all float32 or all bfloat16: the layer's dtype), in the layout they have:

        ==============  =====================================  ==========================
        gate_up_layout  tensors                                 e.g.
        ==============  =====================================  ==========================
        separate        w_gate, w_up [N, D, H]; b_gate, b_up    llep's own
        separate_t      w_gate, w_up [N, H, D] (x W^T)          stacked nn.Linear weights
        fused           w_gate_up [N, D, 2H]; b_gate_up [N, 2H]
        fused_t         w_gate_up [N, 2H, D] (x W^T)            transformers 5 Mixtral, Qwen
        interleaved     w_gate_up [N, D, 2H], gate at 2j        gpt-oss
        ==============  =====================================  ==========================

        down_layout "hd": w_down [N, H, D]; "dh": [N, D, H] applied as x W^T. b_down is
        [N, D]. N, D and H come from the shapes; top_k is K. The library converts the layout
        while it copies the weights (nothing is copied here when they are contiguous); llepd
        holds its own copy, so the arrays may be freed after. act "swiglu" or "swiglu_oai"
        (act_alpha, act_limit: 0 for 1.702 and 7.0); policy "auto", "ep" or "llep" with
        alpha, lambda_ and min_tokens (0: llepd's defaults); group > 0 for collective
        batching with group_timeout_ms; scope "node" or "cluster". keep_weights: the library
        keeps a host copy of the weights so that a reconnecting client (``reconnect=True``)
        creates the layer again after llepd restarts; without it such a layer is lost then
        (LlepNotFoundError on use).
        """
        gl = _member(GateUpLayout, gate_up_layout, "gate_up_layout")
        dl = _member(DownLayout, down_layout, "down_layout")
        fused = gl not in (GateUpLayout.SEPARATE, GateUpLayout.SEPARATE_T)
        given = {"w_gate": w_gate, "w_up": w_up, "w_gate_up": w_gate_up, "w_down": w_down,
                 "b_gate": b_gate, "b_up": b_up, "b_gate_up": b_gate_up, "b_down": b_down}
        needed = ("w_gate_up", "w_down") if fused else ("w_gate", "w_up", "w_down")
        for key in needed:
            if given[key] is None:
                raise invalid(f"layer '{name}': gate_up_layout {GateUpLayout(gl).name.lower()} "
                           f"needs {', '.join(needed)}; {key} is missing")
        bufs = {k: T.adapt_in(v, k, T.FLOATS) for k, v in given.items() if v is not None}
        kinds = {b.kind for b in bufs.values()}
        if len(kinds) != 1:
            raise invalid(f"layer '{name}': the weights and biases must all be float32 or all "
                       f"bfloat16, not a mix ({', '.join(sorted(T.NAMES[k] for k in kinds))})")
        n, dd, h = self._shape_of(name, bufs, gl, dl)
        d = ffi.new("llep_layer_desc *")
        d.num_experts, d.top_k, d.hidden, d.inter = n, top_k, dd, h
        d.dtype = DType.BF16 if kinds == {T.BF16} else DType.F32
        d.act = _member(Activation, act, "act")
        d.act_alpha, d.act_limit = act_alpha, act_limit
        d.policy = _member(Policy, policy, "policy")
        d.alpha = alpha
        setattr(d, "lambda", lambda_)
        d.min_tokens, d.group = min_tokens, group
        d.scope = _member(Scope, scope, "scope")
        d.group_timeout_ms = group_timeout_ms
        d.gate_up_layout, d.down_layout = gl, dl
        for key, b in bufs.items():
            setattr(d, key, ffi.cast("void *", b.ptr))
        ret = ffi.new("llep_layer **")
        flags = lib.LLEP_LAYER_KEEP_WEIGHTS if keep_weights else 0
        code = lib.llep_layer_create_ex(self._handle(), _cname(name), d, flags, ret)
        del bufs
        _check_code(code, self._ptr)
        return self._layer(ret[0], name)

    @staticmethod
    def _shape_of(name: str, bufs: Mapping[str, "T.Buffer"], gl: int, dl: int):
        """N, D, H from the weights' shapes, each tensor checked against them."""
        def shape(key: str) -> tuple:
            return bufs[key].shape

        fused = gl not in (GateUpLayout.SEPARATE, GateUpLayout.SEPARATE_T)
        first = shape("w_gate_up" if fused else "w_gate")
        if len(first) != 3:
            raise invalid(f"layer '{name}': {'w_gate_up' if fused else 'w_gate'} has shape "
                       f"{first}, not [N, ., .]")
        n = first[0]
        if gl == GateUpLayout.SEPARATE:
            dd, h = first[1], first[2]
        elif gl == GateUpLayout.SEPARATE_T:
            h, dd = first[1], first[2]
        elif gl == GateUpLayout.FUSED_T:
            h, dd = first[1] // 2, first[2]
        else:
            dd, h = first[1], first[2] // 2
        want = {
            "w_gate": (n, dd, h) if gl == GateUpLayout.SEPARATE else (n, h, dd),
            "w_up": (n, dd, h) if gl == GateUpLayout.SEPARATE else (n, h, dd),
            "w_gate_up": (n, 2 * h, dd) if gl == GateUpLayout.FUSED_T else (n, dd, 2 * h),
            "w_down": (n, h, dd) if dl == DownLayout.HD else (n, dd, h),
            "b_gate": (n, h), "b_up": (n, h), "b_gate_up": (n, 2 * h), "b_down": (n, dd),
        }
        for key, b in bufs.items():
            if b.shape != want[key]:
                raise invalid(f"layer '{name}': {key} has shape {b.shape}; with "
                           f"gate_up_layout {GateUpLayout(gl).name.lower()} and down_layout "
                           f"{DownLayout(dl).name.lower()} it must be {want[key]} "
                           f"(N {n}, D {dd}, H {h})")
        return n, dd, h

    def attach(self, name: str) -> Layer:
        """Attaches to the existing layer ``name`` (whatever its shape)."""
        ret = ffi.new("llep_layer **")
        _check_code(lib.llep_layer_create(self._handle(), _cname(name), ffi.NULL, ret),
                    self._ptr)
        return self._layer(ret[0], name)

    # ---- models ------------------------------------------------------------------------
    def model(self, name: str) -> Model:
        """The model ``name`` llepd has loaded; its layers attach on first use."""
        info = ffi.new("llep_model_info *")
        _check_code(lib.llep_model_get(self._handle(), _cname(name, "model name"), info),
                    self._ptr)
        return Model(self, name, info)

    def _model_layer(self, model: str, index: int) -> Layer:
        ret = ffi.new("llep_layer **")
        _check_code(lib.llep_model_layer(self._handle(), _cname(model, "model name"), index,
                                         ret), self._ptr)
        return self._layer(ret[0], f"{model}/{index}")

    def load_model(self, name: str, path: Union[str, os.PathLike]) -> Model:
        """Asks llepd to load the checkpoint directory ``path`` (as llepd sees it) as model
        ``name``; needs llepd's admin rights. Returns the model once every layer is ready."""
        _check_code(lib.llep_model_load(self._handle(), _cname(name, "model name"),
                                        os.fsencode(path)),
                    self._ptr)
        return self.model(name)

    def unload_model(self, name: str) -> None:
        """Unloads model ``name`` (LlepBusyError while any client holds one of its layers)."""
        _check_code(lib.llep_model_unload(self._handle(), _cname(name, "model name")), self._ptr)

    # ---- tickets -----------------------------------------------------------------------
    def wait(self, ticket: Union[Ticket, int], timeout: Optional[float] = None) -> Any:
        """Waits for a submission (timeout in seconds; None: as long as it takes, 0: just
        look) and returns its output. Raises LlepTimeoutError when it has not completed in
        time (the ticket stays valid), or the submission's error. Waiting again for a
        collected Ticket gives the same output or error again; a bare ticket id is known
        only until it is collected."""
        if isinstance(ticket, Ticket) and ticket._done:
            if ticket._error is not None:
                raise ticket._error
            return ticket.out
        tid = ticket.id if isinstance(ticket, Ticket) else int(ticket)
        t = self._pending.get(tid)
        ms = -1 if timeout is None else max(0, int(timeout * 1000))
        code = lib.llep_wait(self._handle(), tid, ms)
        if code == -errno.EAGAIN:   # not complete yet: the ticket stays
            raise LlepTimeoutError(f"submission {tid} has not completed within {timeout} s",
                                   errno=errno.EAGAIN, strerror="not complete yet")
        self._pending.pop(tid, None)
        try:
            _check_code(code, self._ptr)
        except LlepError as e:
            if t is not None:
                t._done, t._keep, t._error = True, (), e
            raise
        if t is None:
            return None
        if t._finish is not None:
            t.out, t._finish = t._finish(), None
        t._done, t._keep = True, ()
        return t.out

    # ---- the device space ---------------------------------------------------------------
    def space(self, nbytes: int, gpu: int = -1) -> Space:
        """Allocates and registers this client's device space (llep_space_alloc): CUDA memory
        on ``gpu`` when the library has CUDA and llepd runs the CUDA backend, else the host
        stand-in (``Space.kind`` says which); gpu -1 asks for the host stand-in. One per
        client: LlepExistsError for a second. See :mod:`llep.space`."""
        ret = ffi.new("llep_space **")
        _check_code(lib.llep_space_alloc(self._handle(), int(nbytes), int(gpu), ret), self._ptr)
        self._space = Space(self, ret[0])
        return self._space

    # ---- lifetime ----------------------------------------------------------------------
    def close(self) -> None:
        """Closes the connection: its layers are released, submissions still in flight are
        abandoned (their outputs are not written), its space is freed. Idempotent."""
        ptr, self._ptr = self._ptr, None
        if ptr is None:
            return
        if self._space is not None:   # llep_disconnect frees it
            self._space._ptr, self._space = None, None
        for layer in list(self._layers):
            layer._ptr = None
        self._layers.clear()
        lib.llep_disconnect(ptr)
        # Only now, with nothing left to write into them, may the buffers go.
        self._pending.clear()

    @property
    def closed(self) -> bool:
        return self._ptr is None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"<llep.Client {'closed' if self._ptr is None else 'connected'}>"


def _closed_error() -> LlepError:
    return LlepConnectionError("the client is closed", strerror="client closed")


def connect(socket: Optional[str] = None, *, reconnect: Optional[bool] = None) -> Client:
    """Connects to llepd at ``socket`` (None: $LLEP_SOCKET, else /run/llep/llepd.sock as root,
    else $XDG_RUNTIME_DIR/llep/llepd.sock). LlepConnectionError when no daemon is there.

    ``reconnect=True`` (None: ``$LLEP_RECONNECT`` is 1) rides out restarts of llepd: calls in
    flight when it goes away raise :class:`LlepConnectionLostError` (their outputs are not
    written), later calls reconnect (each waiting at most about 0.2 s for a try, raising
    LlepConnectionLostError while llepd is not back) and restore the client's layers by
    name; the Layer objects stay valid. See llep_connect_ex() in llep/client.h."""
    return Client(socket, reconnect=reconnect)
