#!/usr/bin/env python3
"""Writes a gpt-oss style MoE checkpoint with random bf16 weights, for the demo and the
benchmarks: what llepd loads with `llepctl load NAME DIR` (or the `model` key of llepd.conf).

    make-model.py OUTDIR [--layers L] [--experts N] [--top-k K] [--hidden D] [--inter H]
                         [--shard-mb S] [--seed X]

OUTDIR gets config.json (model_type gpt_oss) and the expert tensors of every layer
(mlp.experts.gate_up_proj [N][D][2H] with gate and up interleaved, its bias, down_proj
[N][H][D] and its bias) in bf16, written by the real safetensors package, in files of about S
MiB listed by model.safetensors.index.json. Only the experts are written: llepd serves the
MoE layers, the rest of the model stays with the inference process. Progress goes to stderr.
"""
import argparse
import json
import os
import sys

try:
    import numpy as np
    import safetensors
except ImportError as e:
    sys.exit('make-model: cannot import numpy and safetensors (%s): run '
             'scripts/install-deps.sh and use .venv/bin/python3' % e)


def bf16_words(rng, shape, scale):
    """Random normal values times scale, as bf16 words (round to nearest even)."""
    x = (rng.standard_normal(shape, dtype=np.float32) * np.float32(scale)).view(np.uint32)
    x = x + np.uint32(0x7fff) + ((x >> np.uint32(16)) & np.uint32(1))
    return (x >> np.uint32(16)).astype(np.uint16)


def layer_tensors(rng, i, n, d, h):
    p = 'model.layers.%d.mlp.experts.' % i
    return {
        p + 'gate_up_proj': bf16_words(rng, (n, d, 2 * h), d ** -0.5),
        p + 'gate_up_proj_bias': bf16_words(rng, (n, 2 * h), 0.02),
        p + 'down_proj': bf16_words(rng, (n, h, d), h ** -0.5),
        p + 'down_proj_bias': bf16_words(rng, (n, d), 0.02),
    }


def save(tensors, path):
    specs = {k: safetensors.TensorSpec(dtype='bfloat16', shape=v.shape, data_ptr=v.ctypes.data,
                                       data_len=v.nbytes) for k, v in tensors.items()}
    safetensors.serialize_file(specs, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('outdir')
    ap.add_argument('--layers', type=int, default=4)
    ap.add_argument('--experts', type=int, default=32)
    ap.add_argument('--top-k', type=int, default=4)
    ap.add_argument('--hidden', type=int, default=256)
    ap.add_argument('--inter', type=int, default=256)
    ap.add_argument('--shard-mb', type=int, default=512)
    ap.add_argument('--seed', type=int, default=2026)
    a = ap.parse_args()
    for name in ('layers', 'experts', 'top_k', 'hidden', 'inter', 'shard_mb'):
        if getattr(a, name) <= 0:
            ap.error('--%s must be positive' % name.replace('_', '-'))
    if a.top_k > a.experts:
        ap.error('--top-k must not exceed --experts')
    os.makedirs(a.outdir, exist_ok=True)
    rng = np.random.default_rng(a.seed)
    config = {'model_type': 'gpt_oss', 'num_hidden_layers': a.layers,
              'num_local_experts': a.experts, 'num_experts_per_tok': a.top_k,
              'experts_per_token': a.top_k, 'hidden_size': a.hidden,
              'intermediate_size': a.inter, 'swiglu_limit': 7.0, 'hidden_act': 'silu'}
    with open(os.path.join(a.outdir, 'config.json'), 'w') as f:
        json.dump(config, f, indent=2)
    weight_map, shard, shard_bytes, files = {}, {}, 0, []

    def flush():
        nonlocal shard, shard_bytes
        if shard:
            name = 'model-%05d.safetensors' % (len(files) + 1)
            save(shard, os.path.join(a.outdir, name))
            files.append(name)
            weight_map.update({k: name for k in shard})
            shard, shard_bytes = {}, 0

    for i in range(a.layers):
        for k, v in layer_tensors(rng, i, a.experts, a.hidden, a.inter).items():
            shard[k] = v
            shard_bytes += v.nbytes
        if shard_bytes >= a.shard_mb << 20:
            flush()
        print('make-model: layer %d/%d' % (i + 1, a.layers), file=sys.stderr, flush=True)
    flush()
    total = sum(os.path.getsize(os.path.join(a.outdir, f)) for f in files)
    with open(os.path.join(a.outdir, 'model.safetensors.index.json'), 'w') as f:
        json.dump({'metadata': {'total_size': total}, 'weight_map': weight_map}, f, indent=1)
    print('make-model: %s: %d MoE layers of %d experts (K %d, D %d, H %d), %.1f MiB in %d '
          'files' % (a.outdir, a.layers, a.experts, a.top_k, a.hidden, a.inter, total / 2**20,
                     len(files)), file=sys.stderr)


if __name__ == '__main__':
    main()
