"""One forward with an installed llep package (not the source tree's), as a user of the
install or of the python3-llep package gets it: its own declarations (llep-client.h beside
it), the library it is given, a float64 reference. Run by tests/test-install.sh and
tests/test-packaging.sh:

    installed-check.py SOCKET ROOT     (the package must lie under ROOT)
"""
import sys

import numpy as np

import llep

sock, root = sys.argv[1], sys.argv[2]
assert llep.__file__.startswith(root), f"imported {llep.__file__}, not the one under {root}"
rng = np.random.default_rng(1)
n, k, d, h = 4, 2, 8, 12
wg = rng.standard_normal((n, d, h)).astype(np.float32) / 3
wu = rng.standard_normal((n, d, h)).astype(np.float32) / 3
wd = rng.standard_normal((n, h, d)).astype(np.float32) / 3
x = rng.standard_normal((5, d)).astype(np.float32)
idx = rng.integers(0, n, (5, k))
w = rng.random((5, k)).astype(np.float32)
with llep.connect(sock) as c:
    with c.create_layer("installed-py", top_k=k, w_gate_up=np.concatenate([wg, wu], 2),
                        w_down=wd, gate_up_layout="fused") as layer:
        y = layer.forward(x, idx, w)
ref = np.zeros((5, d))
for t in range(5):
    for s in range(k):
        e = idx[t, s]
        g, u = x[t].astype(float) @ wg[e], x[t].astype(float) @ wu[e]
        ref[t] += w[t, s] * ((g / (1 + np.exp(-g)) * u) @ wd[e])
err = float(np.linalg.norm(y - ref) / np.linalg.norm(ref))
assert err < 1e-5, err
print(f"llep {llep.__version__} from {llep.__file__}: forward ok (relative L2 error {err:.1e})")
