"""The client's device space from Python (llep.space): tensors and arrays backed by it go to
llepd by offset and give the float64 reference's output, equal bit for bit to the ordinary
path; the space's refusals as exceptions. On the CPU backend the space is the host memfd
stand-in, so these are CPU tensors; CUDA tensors are checked by tests/gpu/space.sh."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

import llep
from reference import Weights, rel_l2

N, K, D, H = 8, 2, 40, 36


def routing(rng, tokens):
    idx = rng.integers(0, N, (tokens, K)).astype(np.int64)
    idx[rng.random((tokens, K)) < 0.4] = 0
    return idx, rng.random((tokens, K), dtype=np.float32)


def test_numpy_in_space(client):
    """x and out from the space: the reference within 1e-5, and the same bits as the copying
    path; the space is the host stand-in on a CPU llepd even when a GPU is asked for."""
    rng = np.random.default_rng(1)
    wts = Weights(rng, N, D, H)
    layer = client.create_layer("space-np", top_k=K, **wts.layout("separate", "hd"))
    space = client.space(1 << 20, gpu=0)
    assert (space.kind, space.gpu, space.size) == ("host", -1, 1 << 20)
    assert isinstance(space, llep.Space)
    x = space.array((61, D))
    y = space.array((61, D))
    x[:] = rng.standard_normal((61, D))
    idx, w = routing(rng, 61)
    assert layer.forward(x, idx, w, out=y) is y
    assert rel_l2(y, wts.reference(x, idx, w)) <= 1e-5
    assert np.array_equal(y, layer.forward(np.array(x), idx, w))
    # submit/wait with both in the space
    y2 = space.array((61, D))
    assert layer.submit(x, idx, w, out=y2).wait() is y2
    assert np.array_equal(y2, y)
    space.free()
    space.free()   # idempotent
    layer.close()


def test_torch_in_space(client):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    wts = Weights(rng, N, D, H)
    layer = client.create_layer("space-torch", top_k=K, **wts.layout("fused_t", "dh"))
    with client.space(1 << 20) as space:
        x = space.tensor((3, 17, D))
        y = space.tensor((3, 17, D))
        assert x.device.type == "cpu" and x.dtype == torch.float32
        assert space.contains(x.data_ptr(), x.numel() * 4)
        x.copy_(torch.from_numpy(rng.standard_normal((3, 17, D)).astype(np.float32)))
        idx, w = routing(rng, 51)
        idx_t, w_t = torch.from_numpy(idx).view(3, 17, K), torch.from_numpy(w).view(3, 17, K)
        with warnings.catch_warnings():
            warnings.simplefilter("error")     # nothing here takes the host path
            layer.forward(x, idx_t, w_t, out=y)
        ref = wts.reference(x.numpy().reshape(51, D), idx, w)
        assert rel_l2(y.numpy().reshape(51, D), ref) <= 1e-5
        # out outside the space: x by offset, y through the arena
        y_host = layer.forward(x, idx_t, w_t)
        assert torch.equal(y_host, y)
        with pytest.raises(llep.LlepValueError, match="do not fit"):
            space.tensor((1 << 20,))
        space.reset()
        assert space.tensor((4,)).data_ptr() == x.data_ptr()
    layer.close()


def test_space_refusals(client):
    rng = np.random.default_rng(3)
    wts = Weights(rng, N, D, H)
    layer = client.create_layer("space-refusals", top_k=K, **wts.layout("separate", "hd"))
    space = client.space(1 << 20)
    with pytest.raises(llep.LlepExistsError):
        client.space(4096)
    # bfloat16 x in the space of a float32 layer: llepd would read it in place, unconverted
    ml_dtypes = pytest.importorskip("ml_dtypes")
    x = space.array((4, D), ml_dtypes.bfloat16)
    idx, w = routing(rng, 4)
    with pytest.raises(llep.LlepValueError, match="dtype"):
        layer.forward(x, idx, w)
    # freeing while a forward naming it is in flight
    xs = space.array((512, D))
    xs[:] = 1.0
    idx, w = routing(rng, 512)
    t = layer.submit(xs, idx, w, out=space.array((512, D)))
    with pytest.raises(llep.LlepBusyError):
        space.free()
    t.wait()
    space.free()
    with pytest.raises(llep.LlepValueError, match="freed"):
        space.array((1,))
    layer.close()


def test_closing_the_client_frees_it(daemon):
    c = llep.connect(daemon.sock)
    space = c.space(4096)
    c.close()
    space.free()   # nothing left to free: no error
    with llep.connect(daemon.sock) as c2:
        c2.space(4096).free()
