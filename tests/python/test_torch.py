"""llep with torch tensors and transformers' own MoE models.

Tiny models of each family are built by transformers from a config with random weights (no
download); every MoE block's experts computed by llep must match transformers' within 1e-5
relative L2 (float32), and a whole model with every MoE block patched within 1e-4 of the
unpatched logits. The layers llepd loads from the same model saved by transformers must give
what the patched model's layers give."""
from __future__ import annotations

import tempfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import llep                                   # noqa: E402
import llep.torch                             # noqa: E402
from reference import Weights, rel_l2, to_float   # noqa: E402

HIDDEN = 32
COMMON = dict(vocab_size=96, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2)


def config(family: str):
    if family == "mixtral":
        return transformers.MixtralConfig(intermediate_size=48, num_local_experts=8,
                                          num_experts_per_tok=2, **COMMON)
    if family == "qwen3_moe":
        return transformers.Qwen3MoeConfig(intermediate_size=64, moe_intermediate_size=40,
                                           num_experts=8, num_experts_per_tok=2, head_dim=8,
                                           norm_topk_prob=True, **COMMON)
    if family == "gpt_oss":
        return transformers.GptOssConfig(intermediate_size=48, num_local_experts=8,
                                         num_experts_per_tok=2, head_dim=8, **COMMON)
    raise AssertionError(family)


FAMILIES = ["mixtral", "qwen3_moe", "gpt_oss"]


def tiny_model(family: str, seed: int = 0, dtype=None):
    """A transformers model of the family from its config, random weights; the experts' drawn
    larger than the initialiser's 0.02 so that their outputs (and biases) weigh in the logits."""
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config(family)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".experts." in name:
                p.normal_(0.0, 0.15)
    if dtype is not None:
        model = model.to(dtype)
    return model


def moe_blocks(model):
    return [m for m in model.modules() if hasattr(m, "experts") and
            (hasattr(m, "gate") or hasattr(m, "router"))]


def route(block, x):
    router = block.gate if hasattr(block, "gate") else block.router
    _, weights, index = router(x)
    return index, weights


# ---- torch tensors through a layer ------------------------------------------------------------

def test_torch_tensors(client):
    """float32 and bfloat16 tensors in, the same kind out; int64 ids from torch.topk; out=;
    non-contiguous inputs."""
    rng = np.random.default_rng(3)
    wts = Weights(rng, 8, 24, 16)
    layer = client.create_layer("torch-f32", top_k=2, **wts.layout("fused_t", "dh"))
    x = torch.randn(11, 24)
    idx = torch.topk(torch.randn(11, 8), 2).indices
    assert idx.dtype == torch.int64
    w = torch.rand(11, 2)
    y = layer.forward(x, idx, w)
    assert isinstance(y, torch.Tensor) and y.dtype == torch.float32 and y.shape == (11, 24)
    ref = wts.reference(to_float(x), idx.numpy(), w.numpy())
    assert rel_l2(to_float(y), ref) <= 1e-5
    out = torch.empty(11, 24, dtype=torch.bfloat16)
    assert layer.forward(x, idx, w, out=out) is out
    assert rel_l2(to_float(out), ref) <= 1e-2
    yb = layer.forward(x.to(torch.bfloat16), idx.to(torch.int32), w.to(torch.bfloat16))
    assert yb.dtype == torch.bfloat16
    assert rel_l2(to_float(yb), wts.reference(to_float(x.to(torch.bfloat16)), idx.numpy(),
                                              to_float(w.to(torch.bfloat16)))) <= 1e-2
    xt = torch.randn(24, 11).t()                      # not contiguous: copied once
    assert not xt.is_contiguous()
    np.testing.assert_array_equal(layer.forward(xt, idx, w).numpy(),
                                  layer.forward(xt.contiguous(), idx, w).numpy())
    with pytest.raises(ValueError, match="contiguous"):
        layer.forward(x, idx, w, out=torch.empty(24, 11).t())
    with pytest.raises(ValueError, match="float16"):
        layer.forward(x.half(), idx, w)
    t = layer.submit(x, idx, w)
    assert torch.equal(t.wait(), y)
    layer.close()


def test_torch_weights_bf16(client):
    """A bfloat16 layer made from torch tensors, zero copies in Python."""
    rng = np.random.default_rng(4)
    wts = Weights(rng, 4, 16, 24, "bf16")
    args = {k: (torch.from_numpy(v.astype(np.float32)).to(torch.bfloat16)
                if k.startswith(("w_", "b_")) else v)
            for k, v in wts.layout("interleaved", "hd").items()}
    with client.create_layer("torch-bf16", top_k=2, **args) as layer:
        assert layer.dtype == llep.DType.BF16
        x = torch.randn(7, 16).to(torch.bfloat16)
        idx = torch.randint(0, 4, (7, 2))
        w = torch.rand(7, 2)
        y = layer.forward(x, idx, w)
        assert y.dtype == torch.bfloat16
        ref = wts.reference(to_float(x), idx.numpy(), w.numpy())
        assert rel_l2(to_float(y), ref) <= 1e-2


# ---- transformers ------------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_experts_match_transformers(client, family):
    """Every MoE block's experts through llep equal transformers' own within 1e-5 (float32),
    with the block's own router, on a skewed batch too."""
    model = tiny_model(family)
    blocks = moe_blocks(model)
    assert len(blocks) == 2
    originals = [b.experts for b in blocks]
    made = llep.torch.patch(model, client, prefix=f"experts-{family}")
    assert [b.experts for b in blocks] == made
    assert all(isinstance(m, llep.torch.LlepExperts) for m in made)
    torch.manual_seed(1)
    with torch.no_grad():
        for block, orig, new in zip(blocks, originals, made):
            for x in (torch.randn(19, HIDDEN), torch.randn(1, HIDDEN),
                      torch.randn(64, HIDDEN) + 3 * torch.randn(1, HIDDEN)):
                index, weights = route(block, x)
                want = orig(x, index, weights)
                got = new(x, index, weights)
                assert got.dtype == want.dtype and got.shape == want.shape
                err = float((got - want).norm() / want.norm())
                assert err <= 1e-5, f"{family}: relative L2 error {err}"
    for m in made:
        m.close()


@pytest.mark.parametrize("family", FAMILIES)
def test_whole_model(daemon, client, family):
    """A whole forward with every MoE block patched: within 1e-4 of the unpatched logits; the
    layers show in llepctl stats and layers."""
    model = tiny_model(family, seed=7)
    ids = torch.randint(0, COMMON["vocab_size"], (3, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = model(ids).logits
    made = llep.torch.patch(model, client, prefix=f"whole-{family}", policy="llep")
    assert [m.layer.name for m in made] == [f"whole-{family}/0", f"whole-{family}/1"]
    assert all(m.layer.desc.policy == llep.Policy.LLEP for m in made)
    with torch.no_grad():
        got = model(ids).logits
    err = float((got - want).norm() / want.norm())
    assert err <= 1e-4, f"{family}: logits relative L2 error {err}"
    stats = daemon.llepctl("stats")
    layers = daemon.llepctl("layers")
    for m in made:
        assert m.layer.name in stats and m.layer.name in layers
    for m in made:
        m.close()


@pytest.mark.parametrize("family", ["mixtral", "gpt_oss"])
def test_bf16_model(client, family):
    """A bfloat16 model: each block's experts through llep (float32 compute, one rounding)
    within 1e-2 of the same bf16 weights computed in float32 by transformers."""
    model = tiny_model(family, seed=11, dtype=torch.bfloat16)
    blocks = moe_blocks(model)
    reference = [b.experts for b in blocks]
    made = llep.torch.patch(model, client, prefix=f"bf16-{family}")
    assert made[0].layer.dtype == llep.DType.BF16
    with torch.no_grad():
        for block, orig, new in zip(blocks, reference, made):
            x = torch.randn(13, HIDDEN).to(torch.bfloat16)
            index, weights = route(block, x)
            got = new(x, index, weights)
            assert got.dtype == torch.bfloat16
            want = orig.float()(x.float(), index, weights.float())
            err = float((got.float() - want).norm() / want.norm())
            assert err <= 1e-2, f"{family}: relative L2 error {err}"
    for m in made:
        m.close()


def test_patch_refusals(client):
    """No MoE block, or experts llep cannot compute: ValueError, and the model left as it was."""
    with pytest.raises(ValueError, match="no MoE blocks"):
        llep.torch.patch(torch.nn.Sequential(torch.nn.Linear(4, 4)), client)
    cfg = config("mixtral")
    cfg.hidden_act = "gelu"
    model = transformers.AutoModelForCausalLM.from_config(cfg)
    before = [type(b.experts) for b in moe_blocks(model)]
    with pytest.raises(ValueError, match="gelu"):
        llep.torch.patch(model, client)
    assert [type(b.experts) for b in moe_blocks(model)] == before


# ---- models llepd loads itself -------------------------------------------------------------------

LOADABLE = ["mixtral", "gpt_oss", "qwen3_moe"]


@pytest.mark.parametrize("family", LOADABLE)
def test_model_from_checkpoint(client, family):
    """transformers saves the model; llepd loads it (client.load_model); model.layers[i] gives
    exactly what the layer patched from the same weights gives."""
    model = tiny_model(family, seed=13)
    with tempfile.TemporaryDirectory(prefix="llep-ckpt-") as path:
        model.save_pretrained(path)
        try:
            loaded = client.load_model(f"ckpt-{family}", path)
        except PermissionError:
            pytest.skip("loading a model needs llepd's admin rights (root or group llep)")
    try:
        assert loaded.model_type == family and len(loaded.layers) == 2
        assert loaded.bias == (family == "gpt_oss")
        blocks = moe_blocks(model)
        made = llep.torch.patch(model, client, prefix=f"ckpt-{family}-patched")
        torch.manual_seed(5)
        with torch.no_grad():
            for i, (block, new) in enumerate(zip(blocks, made)):
                x = torch.randn(21, HIDDEN)
                index, weights = route(block, x)
                assert torch.equal(loaded.layers[i].forward(x, index, weights),
                                   new(x, index, weights))
        assert loaded.layers[-1] is loaded.layers[1]
        with pytest.raises(IndexError):
            loaded.layers[2]
        for m in made:
            m.close()
        with pytest.raises(llep.LlepBusyError):
            client.unload_model(f"ckpt-{family}")      # this client holds its layers
        for layer in loaded.layers:
            layer.close()
    finally:
        client.unload_model(f"ckpt-{family}")
