"""Reconnecting clients from Python (llep.connect(reconnect=True), $LLEP_RECONNECT): after llepd
is killed or stopped and started again, layers created with keep_weights and attached layers
work again through the same Layer objects, matching the float64 reference; one created without
keep_weights is lost (LlepNotFoundError); calls while llepd is away raise
LlepConnectionLostError and never write the output."""
from __future__ import annotations

import errno
import time

import numpy as np
import pytest

import llep
from reference import Weights, rel_l2

N, K, D, H = 8, 2, 24, 20


def routing(rng, tokens):
    idx = rng.integers(0, N, (tokens, K)).astype(np.int32)
    w = rng.random((tokens, K), dtype=np.float32)
    return idx, w


def settled(layer, x, idx, w, timeout=5.0):
    """layer.forward, called again while it raises LlepConnectionLostError (reconnect tries)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return layer.forward(x, idx, w)
        except llep.LlepConnectionLostError:
            if time.monotonic() > deadline:
                raise


@pytest.mark.parametrize("how", ["kill", "stop"])
def test_layers_come_back(own_daemon, how):
    rng = np.random.default_rng(7)
    wts = Weights(rng, N, D, H)
    x = rng.standard_normal((9, D)).astype(np.float32)
    idx, w = routing(rng, 9)
    want = wts.reference(x, idx, w)
    with llep.connect(own_daemon.sock, reconnect=True) as c, \
            llep.connect(own_daemon.sock, reconnect=True) as c2:
        assert c.reconnect
        kept = c.create_layer("kept", top_k=K, keep_weights=True,
                              **wts.layout("fused_t", "dh"))
        lost = c.create_layer("lost", top_k=K, **wts.layout("separate", "hd"))
        att = c2.attach("kept")
        for layer in (kept, lost, att):
            assert rel_l2(layer.forward(x, idx, w), want) < 1e-5
        getattr(own_daemon, how)()
        out = np.full((9, D), -7.0, np.float32)
        with pytest.raises(llep.LlepConnectionLostError) as info:
            kept.forward(x, idx, w, out=out)
        assert info.value.errno == errno.ECONNRESET
        assert isinstance(info.value, ConnectionError)
        assert (out == -7.0).all(), "an output was written for a forward that failed"
        own_daemon.start()
        assert rel_l2(settled(kept, x, idx, w), want) < 1e-5
        assert rel_l2(settled(att, x, idx, w), want) < 1e-5
        with pytest.raises(llep.LlepNotFoundError, match="lost when llepd restarted"):
            lost.forward(x, idx, w)


def test_environment_and_plain(own_daemon, monkeypatch):
    """$LLEP_RECONNECT=1 turns reconnecting on when reconnect is not given; reconnect=False
    keeps a client lost for good."""
    rng = np.random.default_rng(8)
    wts = Weights(rng, N, D, H)
    x = rng.standard_normal((3, D)).astype(np.float32)
    idx, w = routing(rng, 3)
    monkeypatch.setenv("LLEP_RECONNECT", "1")
    with llep.connect(own_daemon.sock) as c, \
            llep.connect(own_daemon.sock, reconnect=False) as plain:
        assert c.reconnect and not plain.reconnect
        layer = c.create_layer("e", top_k=K, keep_weights=True, **wts.layout("separate", "hd"))
        pl = plain.attach("e")
        pl.forward(x, idx, w)
        own_daemon.kill()
        own_daemon.start()
        assert rel_l2(settled(layer, x, idx, w), wts.reference(x, idx, w)) < 1e-5
        for _ in range(2):
            with pytest.raises(llep.LlepConnectionLostError):
                pl.forward(x, idx, w)
