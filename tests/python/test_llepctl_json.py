"""llepctl --json with names JSON must escape: a layer whose name has a double quote, a
backslash and a single quote. Every verb that prints the name gives one line that Python's
json (strict: no raw control characters) reads back, with the name as it was given, integers
as int and the floats as float."""
from __future__ import annotations

import json

import numpy as np

from reference import Weights

N, K, D, H = 8, 2, 16, 12
ODD = 'q"u\\o\'te'


def parse(text: str) -> dict:
    assert text.endswith("\n") and text.count("\n") == 1, repr(text)
    return json.loads(text)


def test_odd_layer_name(daemon, client):
    rng = np.random.default_rng(5)
    wts = Weights(rng, N, D, H)
    layer = client.create_layer(ODD, top_k=K, policy="llep", min_tokens=1,
                                **wts.layout("separate", "hd"))
    assert layer.name == ODD
    x = rng.standard_normal((32, D)).astype(np.float32)
    idx = np.zeros((32, K), dtype=np.int64)
    idx[:, 1] = rng.integers(1, N, 32)
    w = np.full((32, K), 0.5, dtype=np.float32)
    layer.forward(x, idx, w)

    layers = parse(daemon.llepctl("--json", "layers"))["layers"]
    mine = [entry for entry in layers if entry["name"] == ODD]
    assert len(mine) == 1, layers
    assert isinstance(mine[0]["steps"], int) and mine[0]["steps"] == 1
    assert isinstance(mine[0]["alpha"], float) and isinstance(mine[0]["lambda"], float)

    stats = parse(daemon.llepctl("--json", "stats"))
    mine = [entry for entry in stats["layers"] if entry["name"] == ODD]
    assert len(mine) == 1 and mine[0]["tokens"] == 32, stats

    experts = parse(daemon.llepctl("--json", "experts", ODD))
    assert experts["layer"] == ODD and sum(experts["last_loads"]) == 32 * K

    plan = parse(daemon.llepctl("--json", "plan", ODD))
    assert plan["devices"] == 2 and sum(plan["device_loads"]) == 32 * K

    done = parse(daemon.llepctl("--json", "set", ODD, "alpha=1.5"))
    assert done == {"layer": ODD, "key": "alpha", "value": "1.5"}
    layer.close()
