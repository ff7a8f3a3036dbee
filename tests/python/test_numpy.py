"""llep with numpy arrays: every weight layout, dtype, policy and activation against the float64
reference, the inputs and outputs of either type, submit/wait, attach, context managers, and
every refusal as the exception it should be."""
from __future__ import annotations

import errno
import threading

import numpy as np
import pytest

import llep
from llep import _tensors
from reference import BF16, Weights, moe, rel_l2, to_float

N, K, D, H = 8, 2, 40, 36      # D and H past the library's 32-element transpose tiles

GATE_UP = ["separate", "separate_t", "fused", "fused_t", "interleaved"]
DOWN = ["hd", "dh"]
TOL = {"f32": 1e-5, "bf16": 1e-2}


def routing(rng, tokens, n=N, k=K, skew=0.0):
    idx = rng.integers(0, n, (tokens, k))
    if skew:
        idx[rng.random((tokens, k)) < skew] = 0
    w = rng.random((tokens, k), dtype=np.float32)
    return idx.astype(np.int64), w


def names():
    names.count += 1
    return f"np-{names.count}"


names.count = 0


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
@pytest.mark.parametrize("down", DOWN)
@pytest.mark.parametrize("gate_up", GATE_UP)
def test_layouts(client, gate_up, down, dtype):
    """Each layout gives the float64 reference's output within 1e-5 (f32) or 1e-2 (bf16)."""
    rng = np.random.default_rng([GATE_UP.index(gate_up), DOWN.index(down), len(dtype)])
    wts = Weights(rng, N, D, H, dtype)
    layer = client.create_layer(names(), top_k=K, **wts.layout(gate_up, down))
    assert layer.dtype == (llep.DType.BF16 if dtype == "bf16" else llep.DType.F32)
    assert (layer.num_experts, layer.top_k, layer.hidden, layer.inter) == (N, K, D, H)
    x = wts.store(rng.standard_normal((37, D)).astype(np.float32))
    idx, w = routing(rng, 37, skew=0.4)
    y = layer.forward(x, idx, w)
    assert y.dtype == x.dtype and y.shape == x.shape
    assert rel_l2(to_float(y), wts.reference(to_float(x), idx, w)) <= TOL[dtype]
    layer.close()


def test_layouts_agree_exactly(client):
    """The same weights in every layout are the same layer: outputs equal bit for bit."""
    rng = np.random.default_rng(5)
    wts = Weights(rng, N, D, H)
    x = rng.standard_normal((20, D)).astype(np.float32)
    idx, w = routing(rng, 20)
    outs = []
    for gate_up in GATE_UP:
        for down in DOWN:
            with client.create_layer(names(), top_k=K, **wts.layout(gate_up, down)) as layer:
                outs.append(layer.forward(x, idx, w))
    for y in outs[1:]:
        np.testing.assert_array_equal(y, outs[0])


FLOAT_TYPES = {"f32": np.float32, "bf16": BF16}


@pytest.mark.parametrize("layer_dtype", ["f32", "bf16"])
def test_io_types(client, layer_dtype):
    """x, topk_w and out float32 or bfloat16 each, ids int32 or int64, on both layer types:
    what llepd computes from the values it sees (x in the layer's dtype), converted to out's."""
    rng = np.random.default_rng(11)
    wts = Weights(rng, N, D, H, layer_dtype)
    layer = client.create_layer(names(), top_k=K, **wts.layout("fused_t", "dh"))
    x32 = rng.standard_normal((23, D)).astype(np.float32)
    idx, w32 = routing(rng, 23)
    combos = 0
    for xt in FLOAT_TYPES:
        for it in (np.int32, np.int64):
            for wt in FLOAT_TYPES:
                for yt in FLOAT_TYPES:
                    x = x32.astype(FLOAT_TYPES[xt])
                    w = w32.astype(FLOAT_TYPES[wt])
                    out = np.zeros((23, D), FLOAT_TYPES[yt])
                    y = layer.forward(x, idx.astype(it), w, out=out)
                    assert y is out
                    seen = to_float(x).astype(np.float32)
                    if layer_dtype == "bf16":
                        seen = seen.astype(BF16)
                    ref = wts.reference(to_float(seen), idx, to_float(w))
                    tol = 1e-2 if "bf16" in (layer_dtype, yt) else 1e-5
                    assert rel_l2(to_float(y), ref) <= tol, (xt, it, wt, yt)
                    combos += 1
    assert combos == 16


@pytest.mark.parametrize("policy", ["auto", "ep", "llep"])
def test_policies(client, policy):
    """EP, LLEP and AUTO under skewed routing: the same layer's output within 1e-6 of each
    other and 1e-5 of float64."""
    rng = np.random.default_rng(21)
    wts = Weights(rng, N, D, H)
    x = rng.standard_normal((300, D)).astype(np.float32)
    idx, w = routing(rng, 300, skew=0.8)
    ref = wts.reference(x, idx, w)
    with client.create_layer(names(), top_k=K, policy=policy, min_tokens=1,
                             **wts.layout("separate", "hd")) as layer:
        assert layer.desc.policy == llep.Policy[policy.upper()]
        y = layer.forward(x, idx, w)
    assert rel_l2(y, ref) <= 1e-5
    with client.create_layer(names(), top_k=K, policy="ep",
                             **wts.layout("separate", "hd")) as ep:
        assert rel_l2(y, to_float(ep.forward(x, idx, w))) <= 1e-6


def test_swiglu_oai(client):
    """gpt-oss's activation with its own alpha and limit, interleaved like gpt-oss's weights."""
    rng = np.random.default_rng(31)
    wts = Weights(rng, N, D, H)
    wts.wg *= 4    # past the limit, so the clamps matter
    x = rng.standard_normal((17, D)).astype(np.float32)
    idx, w = routing(rng, 17)
    with client.create_layer(names(), top_k=K, act="swiglu_oai", act_alpha=1.5, act_limit=3.0,
                             **wts.layout("interleaved", "hd")) as layer:
        assert layer.desc.act == llep.Activation.SWIGLU_OAI
        y = layer.forward(x, idx, w)
    assert rel_l2(y, wts.reference(x, idx, w, act="oai", alpha=1.5, limit=3.0)) <= 1e-5


def test_shapes_and_copies(client):
    """Leading dimensions are kept; contiguous inputs are handed over as they are, others are
    copied once; an empty batch gives an empty output."""
    rng = np.random.default_rng(41)
    wts = Weights(rng, N, D, H)
    layer = client.create_layer(names(), top_k=K, **wts.layout("separate", "hd"))
    x = rng.standard_normal((3, 5, D)).astype(np.float32)
    idx, w = routing(rng, 15)
    y = layer.forward(x, idx.reshape(3, 5, K), w.reshape(3, 5, K))
    assert y.shape == (3, 5, D)
    ref = wts.reference(x.reshape(15, D), idx, w)
    assert rel_l2(y.reshape(15, D), ref) <= 1e-5

    buf = _tensors.adapt_in(x, "x", _tensors.FLOATS)
    assert buf.obj is x and buf.ptr == x.ctypes.data
    xt = np.asfortranarray(x.reshape(15, D))
    assert _tensors.adapt_in(xt, "x", _tensors.FLOATS).obj is not xt
    y2 = layer.forward(xt, idx, w)
    np.testing.assert_array_equal(y2, y.reshape(15, D))
    y3 = layer.forward(x.reshape(15, D)[::-1], idx[::-1], w[::-1])   # negative strides
    np.testing.assert_array_equal(y3, y2[::-1])

    empty = layer.forward(np.zeros((0, D), np.float32), np.zeros((0, K), np.int64),
                          np.zeros((0, K), np.float32))
    assert empty.shape == (0, D)
    layer.close()


def test_submit_wait(client):
    """Several submissions in flight, collected out of order; a zero timeout only looks."""
    rng = np.random.default_rng(51)
    wts = Weights(rng, N, D, H)
    layer = client.create_layer(names(), top_k=K, **wts.layout("fused", "hd"))
    batches = []
    for _ in range(4):
        x = rng.standard_normal((64, D)).astype(np.float32)
        idx, w = routing(rng, 64, skew=0.5)
        batches.append((x, idx, w))
    tickets = [layer.submit(*b) for b in batches]
    try:
        tickets[0].wait(timeout=0)
        assert tickets[0].done
    except llep.LlepTimeoutError as e:
        assert isinstance(e, TimeoutError) and not tickets[0].done
    for t, (x, idx, w) in reversed(list(zip(tickets, batches))):
        y = client.wait(t)
        assert t.done and y is t.out
        assert rel_l2(y, wts.reference(x, idx, w)) <= 1e-5
    assert tickets[1].wait() is tickets[1].out          # a collected ticket: the same again
    with pytest.raises(ValueError, match="ticket"):
        client.wait(tickets[0].id)                       # its id is no longer known
    layer.close()


def test_threads(client):
    """One client used by several threads at once."""
    rng = np.random.default_rng(61)
    wts = Weights(rng, N, D, H)
    layer = client.create_layer(names(), top_k=K, **wts.layout("separate", "hd"))
    x = rng.standard_normal((40, D)).astype(np.float32)
    idx, w = routing(rng, 40)
    want = layer.forward(x, idx, w)
    errors = []

    def run():
        try:
            for _ in range(10):
                np.testing.assert_array_equal(layer.forward(x, idx, w), want)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    layer.close()


def test_attach(daemon, client):
    """A second client attaches by name and gets the same outputs; context managers release."""
    rng = np.random.default_rng(71)
    wts = Weights(rng, N, D, H)
    x = rng.standard_normal((9, D)).astype(np.float32)
    idx, w = routing(rng, 9)
    with client.create_layer("shared", top_k=K, **wts.layout("separate", "hd")) as layer:
        y = layer.forward(x, idx, w)
        with llep.connect(daemon.sock) as other:
            with other.attach("shared") as att:
                assert att.desc.num_experts == N and att.desc.hidden == D
                np.testing.assert_array_equal(att.forward(x, idx, w), y)
            with pytest.raises(ValueError, match="closed"):
                att.forward(x, idx, w)
        assert other.closed
    with pytest.raises(LookupError):
        client.attach("shared")     # released by both: gone


def test_refusals(client):
    """Every bad argument is a ValueError (llep.LlepValueError, errno EINVAL) that says what
    was wrong, never a crash or a wrong result."""
    rng = np.random.default_rng(81)
    wts = Weights(rng, N, D, H)
    good = wts.layout("fused_t", "dh")
    layer = client.create_layer(names(), top_k=K, **good)
    x = rng.standard_normal((6, D)).astype(np.float32)
    idx, w = routing(rng, 6)

    def refused(match, fn, *args, **kw):
        with pytest.raises(ValueError, match=match) as info:
            fn(*args, **kw)
        assert isinstance(info.value, llep.LlepError) and info.value.errno == errno.EINVAL

    bad = idx.copy()
    bad[4, 1] = N
    refused(r"topk_idx\[4\]\[1\] = 8 is not one of its experts", layer.forward, x, bad, w)
    bad[4, 1] = -1
    refused(r"topk_idx\[4\]\[1\] = -1", layer.forward, x, bad, w)
    bad[4, 1] = 2**32 + 1            # 1 if it were cut to int32
    refused(r"= 4294967297", layer.forward, x, bad, w)
    bad32 = idx.astype(np.int32)
    bad32[4, 1] = 99
    refused(r"topk_idx\[4\]\[1\] = 99", layer.forward, x, bad32, w)
    nan = w.copy()
    nan[2, 0] = np.nan
    refused(r".", layer.forward, x, idx, nan)                       # llepd's own check
    refused("float64", layer.forward, x.astype(np.float64), idx, w)
    refused("float16", layer.forward, x, idx, w.astype(np.float16))
    refused("int16", layer.forward, x, idx.astype(np.int16), w)
    refused("hidden size 40", layer.forward, x[:, :-1], idx, w)
    refused(r"topk_idx has shape \(5, 2\)", layer.forward, x, idx[:5], w)
    refused("top_k 2", layer.forward, x, idx[:, :1], w[:, :1])
    refused("C-contiguous", layer.forward, x, idx, w, out=np.zeros((D, 6), np.float32).T)
    refused("out has shape", layer.forward, x, idx, w, out=np.zeros((5, D), np.float32))
    with pytest.raises(TypeError):
        layer.forward(x, idx, w, out=[0.0])
    # C strings end at a NUL: a name holding one is refused, never cut short.
    refused("NUL", client.create_layer, "good\0x", top_k=K, **good)
    refused("NUL", client.attach, names() + "\0tail")
    refused("NUL", client.model, "m\0x")

    refused("gate_up_layout 'sideways'", client.create_layer, "r", top_k=K,
            **{**good, "gate_up_layout": "sideways"})
    refused("policy 'fast'", client.create_layer, "r", top_k=K, policy="fast", **good)
    refused("w_gate_up is missing", client.create_layer, "r", top_k=K,
            **{**good, "w_gate_up": None})
    refused(r"w_down has shape \(8, 36, 40\)", client.create_layer, "r", top_k=K,
            **{**good, "down_layout": "dh", "w_down": wts.store(wts.wd)})
    refused(r"all be float32 or all bfloat16, not a mix \(bfloat16, float32\)", client.create_layer, "r", top_k=K,
            **{**good, "w_down": good["w_down"].astype(BF16)})
    refused("top_k", client.create_layer, "r", top_k=N + 1, **good)          # the library's
    refused("layer name", client.create_layer, "has space", top_k=K, **good)
    with pytest.raises(FileExistsError) as info:
        client.create_layer(layer.name, top_k=K, **good)
    assert info.value.errno == errno.EEXIST and layer.name in info.value.message
    with pytest.raises(LookupError):
        client.attach("no-such-layer")
    with pytest.raises(LookupError):
        client.model("no-such-model")
    # The client goes on working.
    assert rel_l2(layer.forward(x, idx, w), wts.reference(x, idx, w)) <= 1e-5
    layer.close()


def test_device_memory():
    """A layer the devices cannot hold: MemoryError with llepd's message."""
    from conftest import Daemon

    d = Daemon(args=["--device-memory", "64K"])
    try:
        rng = np.random.default_rng(91)
        wts = Weights(rng, 8, 64, 256)
        with llep.connect(d.sock) as c:
            with pytest.raises(MemoryError) as info:
                c.create_layer("huge", top_k=2, **wts.layout("separate", "hd"))
            assert info.value.errno == errno.ENOMEM and info.value.message
    finally:
        d.close()


def test_lost_daemon(own_daemon):
    """llepd going away: ConnectionError (errno ECONNRESET) for every later call, tickets in
    flight included; no daemon at all: ConnectionError at connect."""
    rng = np.random.default_rng(101)
    wts = Weights(rng, N, D, H)
    c = llep.connect(own_daemon.sock)
    layer = c.create_layer("bye", top_k=K, **wts.layout("separate", "hd"))
    x = rng.standard_normal((5, D)).astype(np.float32)
    idx, w = routing(rng, 5)
    layer.forward(x, idx, w)
    own_daemon.kill()
    with pytest.raises(ConnectionError) as info:
        layer.forward(x, idx, w)
    assert info.value.errno == errno.ECONNRESET
    with pytest.raises(ConnectionError):
        layer.submit(x, idx, w)
    with pytest.raises(ConnectionError):
        c.attach("bye")
    c.close()
    with pytest.raises(ConnectionError, match="closed"):
        c.attach("bye")
    with pytest.raises(ConnectionError):
        llep.connect(own_daemon.sock)


def test_stopping_daemon_fails_tickets(own_daemon):
    """Tickets in flight when llepd stops: each either completed with the right output or
    fails with ConnectionError; nothing hangs, and later calls fail the same way."""
    rng = np.random.default_rng(111)
    wts = Weights(rng, N, 128, 128)
    with llep.connect(own_daemon.sock) as c:
        layer = c.create_layer("busy", top_k=K, **wts.layout("separate", "hd"))
        x = rng.standard_normal((1000, 128)).astype(np.float32)
        idx, w = routing(rng, 1000)
        want = layer.forward(x, idx, w)
        tickets = [layer.submit(x, idx, w) for _ in range(6)]
        own_daemon.stop()
        for t in tickets:
            try:
                np.testing.assert_array_equal(t.wait(), want)
            except ConnectionError as e:
                assert e.errno == errno.ECONNRESET
        with pytest.raises(ConnectionError):
            layer.forward(x[:1], idx[:1], w[:1])


def test_connect_missing():
    with pytest.raises(ConnectionError) as info:
        llep.connect("/nonexistent/llepd.sock")
    assert isinstance(info.value, llep.LlepError) and info.value.errno == errno.ENOENT


def test_enums_from_header():
    """The Python enums are the header's: names and values."""
    from llep._ffi import lib

    assert llep.Policy.LLEP == lib.LLEP_POLICY_LLEP
    assert llep.GateUpLayout.INTERLEAVED == lib.LLEP_GATE_UP_INTERLEAVED
    assert llep.DownLayout.DH == lib.LLEP_DOWN_DH
    assert [m.name for m in llep.DType] == ["F32", "BF16"]


def test_reference_is_plain():
    """The reference itself on a case small enough to do by hand: one expert, D = H = 1."""
    y = moe(np.array([[2.0]]), np.array([[0]]), np.array([[0.5]]), np.array([[[1.0]]]),
            np.array([[[3.0]]]), np.array([[[4.0]]]))
    g, u = 2.0, 6.0
    assert y[0, 0] == pytest.approx(0.5 * 4.0 * g / (1 + np.exp(-g)) * u)
