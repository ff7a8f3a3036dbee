#!/usr/bin/env python3
"""Writes the checkpoints tests/test-model.c reads, with the real safetensors package.

    make-checkpoints.py OUTDIR

Each checkpoint is a directory OUTDIR/NAME holding config.json and .safetensors files (and
model.safetensors.index.json when sharded), in the tensor names and layouts transformers
uses for its family. Next to the good ones, OUTDIR/NAME/expected.bin holds what llep's
loader must make of them: for each MoE layer in order, w_gate and w_up [N][D][H], w_down
[N][H][D], then (gpt-oss) b_gate, b_up [N][H] and b_down [N][D], as little-endian float32.
Those are computed here with plain numpy transposes, slices and (for MXFP4) the format's
definition, independently of the C code; every conversion involved is exact, so the test
compares bit for bit. The err-* directories are broken on purpose, one way each.

numpy has no bfloat16: bf16 tensors go through safetensors.serialize_file with a TensorSpec
of dtype "bfloat16" over raw 16-bit words; everything else through safetensors.numpy.save_file.
"""
import json
import os
import shutil
import struct
import sys

try:
    import numpy as np
    import safetensors
    from safetensors.numpy import save_file
except ImportError as e:
    sys.exit('make-checkpoints: cannot import numpy and safetensors (%s): run '
             'scripts/install-deps.sh, which makes .venv with them' % e)


class BF16:
    """bf16 tensor data as raw 16-bit words (the top half of each float32)."""

    def __init__(self, words):
        self.words = np.ascontiguousarray(words, dtype=np.uint16)
        self.shape = self.words.shape

    def f32(self):
        return (self.words.astype(np.uint32) << 16).view(np.float32)


def save(tensors, path):
    if not any(isinstance(v, BF16) for v in tensors.values()):
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, path)
        return
    keep, specs = [], {}
    for k, v in tensors.items():
        if isinstance(v, BF16):
            arr, dtype = v.words, 'bfloat16'
        else:
            arr = np.ascontiguousarray(v)
            dtype = arr.dtype.name
        keep.append(arr)
        specs[k] = safetensors.TensorSpec(dtype=dtype, shape=arr.shape,
                                          data_ptr=arr.ctypes.data, data_len=arr.nbytes)
    safetensors.serialize_file(specs, path)


def as_f32(v):
    return v.f32() if isinstance(v, BF16) else np.asarray(v).astype(np.float32)


def make(rng, shape, dtype):
    """Random weights stored as dtype ('f32', 'f16' or 'bf16')."""
    x = rng.standard_normal(shape).astype(np.float32)
    if dtype == 'f32':
        return x
    if dtype == 'bf16':
        return BF16(x.view(np.uint32) >> 16)
    h = (x * 0.5).astype(np.float16)
    # The corners of f16 -> f32: a negative zero, a subnormal, the smallest subnormal.
    flat = h.reshape(-1)
    flat[0], flat[1], flat[2] = np.float16(-0.0), np.float16(3e-6), np.float16(-6e-8)
    return h


def write(outdir, name, config, tensors, expected, shards=None):
    """The checkpoint directory; shards maps tensor name -> file name (an index is written)."""
    d = os.path.join(outdir, name)
    os.makedirs(d)
    with open(os.path.join(d, 'config.json'), 'w') as f:
        json.dump(config, f, indent=2)
    if shards is None:
        save(tensors, os.path.join(d, 'model.safetensors'))
    else:
        for fname in sorted(set(shards.values())):
            save({k: v for k, v in tensors.items() if shards[k] == fname},
                 os.path.join(d, fname))
        with open(os.path.join(d, 'model.safetensors.index.json'), 'w') as f:
            json.dump({'metadata': {'total_size': 0}, 'weight_map': shards}, f, indent=2)
    if expected is not None:
        with open(os.path.join(d, 'expected.bin'), 'wb') as f:
            for layer in expected:
                for a in layer:
                    f.write(np.ascontiguousarray(a, dtype='<f4').tobytes())
    return d


def stack_t(mats):
    """Per-expert nn.Linear weights [out][in] -> llep's [N][in][out]: each transposed."""
    return np.stack([as_f32(m).T for m in mats])


# ---- the families --------------------------------------------------------------------------

def other_tensors(rng, t, i, d):
    """Attention and norms, which the loader must leave alone."""
    t['model.layers.%d.self_attn.q_proj.weight' % i] = make(rng, (d, d), 'f32')
    t['model.layers.%d.input_layernorm.weight' % i] = make(rng, (d,), 'f32')


def per_expert(rng, t, prefix, names, n, d, h, dtype):
    """names = (gate, up, down) leaves; returns llep's [w_gate, w_up, w_down]."""
    gate, up, down = [], [], []
    for e in range(n):
        g, u, w = make(rng, (h, d), dtype), make(rng, (h, d), dtype), make(rng, (d, h), dtype)
        t['%s.%d.%s.weight' % (prefix, e, names[0])] = g
        t['%s.%d.%s.weight' % (prefix, e, names[1])] = u
        t['%s.%d.%s.weight' % (prefix, e, names[2])] = w
        gate.append(g)
        up.append(u)
        down.append(w)
    return [stack_t(gate), stack_t(up), stack_t(down)]


def mixtral(rng, dtype, n=4, d=8, h=6, layers=2, fused=False):
    config = {'model_type': 'mixtral', 'architectures': ['MixtralForCausalLM'],
              'num_hidden_layers': layers, 'num_local_experts': n, 'num_experts_per_tok': 2,
              'hidden_size': d, 'intermediate_size': h, 'hidden_act': 'silu',
              'torch_dtype': {'f32': 'float32', 'bf16': 'bfloat16'}[dtype]}
    t, expected = {'model.embed_tokens.weight': make(rng, (16, d), 'f32')}, []
    for i in range(layers):
        other_tensors(rng, t, i, d)
        if fused:
            # transformers 5: gate_up_proj [N][2H][D] (gate rows first), down_proj [N][D][H].
            t['model.layers.%d.mlp.gate.weight' % i] = make(rng, (n, d), 'f32')
            gu, dn = make(rng, (n, 2 * h, d), dtype), make(rng, (n, d, h), dtype)
            t['model.layers.%d.mlp.experts.gate_up_proj' % i] = gu
            t['model.layers.%d.mlp.experts.down_proj' % i] = dn
            g = as_f32(gu)
            expected.append([g[:, :h, :].transpose(0, 2, 1), g[:, h:, :].transpose(0, 2, 1),
                             as_f32(dn).transpose(0, 2, 1)])
        else:
            t['model.layers.%d.block_sparse_moe.gate.weight' % i] = make(rng, (n, d), 'f32')
            expected.append(per_expert(rng, t, 'model.layers.%d.block_sparse_moe.experts' % i,
                                       ('w1', 'w3', 'w2'), n, d, h, dtype))
    return config, t, expected


def dense_mlp(rng, t, i, d, inter, prefix='mlp'):
    t['model.layers.%d.%s.gate_proj.weight' % (i, prefix)] = make(rng, (inter, d), 'f32')
    t['model.layers.%d.%s.up_proj.weight' % (i, prefix)] = make(rng, (inter, d), 'f32')
    t['model.layers.%d.%s.down_proj.weight' % (i, prefix)] = make(rng, (d, inter), 'f32')


def qwen(rng, model_type, dtype, layers, step, only, n=4, d=8, h=6):
    config = {'model_type': model_type, 'num_hidden_layers': layers, 'num_experts': n,
              'num_experts_per_tok': 2, 'hidden_size': d, 'moe_intermediate_size': h,
              'intermediate_size': 10, 'shared_expert_intermediate_size': 12,
              'decoder_sparse_step': step, 'mlp_only_layers': only, 'hidden_act': 'silu'}
    t, expected = {}, []
    for i in range(layers):
        other_tensors(rng, t, i, d)
        # Qwen2MoeDecoderLayer's rule, as transformers writes it.
        if i not in only and n > 0 and (i + 1) % step == 0:
            t['model.layers.%d.mlp.gate.weight' % i] = make(rng, (n, d), 'f32')
            if model_type == 'qwen2_moe':
                dense_mlp(rng, t, i, d, 12, 'mlp.shared_expert')
                t['model.layers.%d.mlp.shared_expert_gate.weight' % i] = make(rng, (1, d), 'f32')
            expected.append(per_expert(rng, t, 'model.layers.%d.mlp.experts' % i,
                                       ('gate_proj', 'up_proj', 'down_proj'), n, d, h, dtype))
        else:
            dense_mlp(rng, t, i, d, 10)
    return config, t, expected


def deepseek(rng, model_type, dtype, n=4, d=8, h=6, layers=3, first_k=None):
    """first_k None leaves first_k_dense_replace out: DeepseekV2Config then has 0,
    DeepseekV3Config 3."""
    config = {'model_type': model_type, 'num_hidden_layers': layers, 'n_routed_experts': n,
              'num_experts_per_tok': 2, 'hidden_size': d, 'moe_intermediate_size': h,
              'intermediate_size': 12, 'moe_layer_freq': 1, 'n_shared_experts': 1,
              'n_group': 1, 'topk_group': 1, 'hidden_act': 'silu'}
    if first_k is not None:
        config['first_k_dense_replace'] = first_k
    else:
        first_k = {'deepseek_v2': 0, 'deepseek_v3': 3}[model_type]
    t, expected = {}, []
    # V3 has one layer past num_hidden_layers: its multi-token-prediction layer (61 of 61).
    for i in range(layers + (model_type == 'deepseek_v3')):
        other_tensors(rng, t, i, d)
        if i < first_k:  # DeepseekV3DecoderLayer: MoE from first_k_dense_replace on
            dense_mlp(rng, t, i, d, 12)
            continue
        t['model.layers.%d.mlp.gate.weight' % i] = make(rng, (n, d), 'f32')
        t['model.layers.%d.mlp.gate.e_score_correction_bias' % i] = make(rng, (n,), 'f32')
        dense_mlp(rng, t, i, d, h, 'mlp.shared_experts')
        layer = per_expert(rng, t, 'model.layers.%d.mlp.experts' % i,
                           ('gate_proj', 'up_proj', 'down_proj'), n, d, h, dtype)
        if i < layers:
            expected.append(layer)
    return config, t, expected


def gpt_oss_config(n, d, h, layers):
    return {'model_type': 'gpt_oss', 'num_hidden_layers': layers, 'num_local_experts': n,
            'num_experts_per_tok': 2, 'experts_per_token': 2, 'hidden_size': d,
            'intermediate_size': h, 'swiglu_limit': 5.5, 'hidden_act': 'silu'}


def gpt_oss_biases(rng, t, i, n, d, h):
    gub, db = make(rng, (n, 2 * h), 'bf16'), make(rng, (n, d), 'bf16')
    t['model.layers.%d.mlp.experts.gate_up_proj_bias' % i] = gub
    t['model.layers.%d.mlp.experts.down_proj_bias' % i] = db
    b = as_f32(gub)
    return [b[:, 0::2], b[:, 1::2], as_f32(db)]


def gpt_oss(rng, n=4, d=8, h=6, layers=2):
    config, t, expected = gpt_oss_config(n, d, h, layers), {}, []
    for i in range(layers):
        other_tensors(rng, t, i, d)
        t['model.layers.%d.mlp.router.weight' % i] = make(rng, (n, d), 'bf16')
        t['model.layers.%d.mlp.router.bias' % i] = make(rng, (n,), 'bf16')
        # GptOssExperts: gate_up_proj [N][D][2H], column 2j gate j, 2j+1 up j.
        gu, dn = make(rng, (n, d, 2 * h), 'bf16'), make(rng, (n, h, d), 'bf16')
        t['model.layers.%d.mlp.experts.gate_up_proj' % i] = gu
        t['model.layers.%d.mlp.experts.down_proj' % i] = dn
        g = as_f32(gu)
        expected.append([g[:, :, 0::2], g[:, :, 1::2], as_f32(dn)] +
                        gpt_oss_biases(rng, t, i, n, d, h))
    return config, t, expected


def e2m1(nibble):
    """FP4 E2M1 from its definition: sign bit, two exponent bits (bias 1), one mantissa bit;
    exponent 0 is subnormal (0 or 0.5)."""
    sign, exp, man = nibble >> 3, (nibble >> 1) & 3, nibble & 1
    mag = man * 0.5 if exp == 0 else 2.0 ** (exp - 1) * (1 + man / 2)
    return -mag if sign else mag


def mx_dequant(blocks, scales):
    """blocks [..., G, 16] bytes, two FP4 values each, the low nibble the earlier element;
    scales [..., G] E8M0: 2^(s - 127) for the block's 32 values. -> [..., G * 32]."""
    table = np.array([e2m1(v) for v in range(16)], dtype=np.float64)
    lo, hi = table[blocks & 0x0F], table[blocks >> 4]
    vals = np.empty(blocks.shape[:-1] + (32,), dtype=np.float64)
    vals[..., 0::2], vals[..., 1::2] = lo, hi
    vals *= np.exp2(scales.astype(np.float64) - 127)[..., None]
    return vals.reshape(blocks.shape[:-2] + (-1,)).astype(np.float32)


def mxfp4_pair(rng, t, name, n, rows, cols):
    blocks = rng.integers(0, 256, (n, rows, cols // 32, 16), dtype=np.uint8)
    scales = rng.integers(118, 137, (n, rows, cols // 32), dtype=np.uint8)
    t[name + '_blocks'], t[name + '_scales'] = blocks, scales
    return blocks, scales


def gpt_oss_mxfp4(rng, n=4, d=64, h=32, layers=2, nan_scale=False):
    config, t, expected = gpt_oss_config(n, d, h, layers), {}, []
    config['quantization_config'] = {'quant_method': 'mxfp4',
                                     'modules_to_not_convert': ['model.layers.*.self_attn']}
    for i in range(layers):
        other_tensors(rng, t, i, d)
        p = 'model.layers.%d.mlp.experts.' % i
        # Mxfp4GptOssExperts: gate_up blocks [N][2H][D/32][16], down [N][D][H/32][16]; the
        # dequantised [N][2H][D] and [N][D][H] are transposed into gpt-oss's layout.
        gb, gs = mxfp4_pair(rng, t, p + 'gate_up_proj', n, 2 * h, d)
        db, ds = mxfp4_pair(rng, t, p + 'down_proj', n, d, h)
        gate_up = mx_dequant(gb, gs).transpose(0, 2, 1)       # [N][D][2H]
        down = mx_dequant(db, ds).transpose(0, 2, 1)          # [N][H][D]
        expected.append([gate_up[:, :, 0::2], gate_up[:, :, 1::2], down] +
                        gpt_oss_biases(rng, t, i, n, d, h))
        if nan_scale:  # E8M0's NaN, in expert 1
            gs[1, 3, 0] = 255
    return config, t, expected


# ---- files changed after the safetensors package wrote them --------------------------------

def edit_file(path, edit_header=None, cut=0, header_len=None, misalign=False):
    """Rewrites a .safetensors file: the header through edit_header(dict), the data cut short
    by `cut` bytes, the stated header length replaced by header_len, or the header padded so
    that the data starts 2 bytes past an 8-byte boundary."""
    raw = open(path, 'rb').read()
    n = struct.unpack('<Q', raw[:8])[0]
    header, data = json.loads(raw[8:8 + n]), raw[8 + n:]
    if edit_header:
        edit_header(header)
    text = json.dumps(header, separators=(',', ':')).encode()
    text += b' ' * (((2 if misalign else 0) - len(text)) % 8)
    length = len(text) if header_len is None else header_len
    with open(path, 'wb') as f:
        f.write(struct.pack('<Q', length) + text + (data[:len(data) - cut] if cut else data))


def offsets(header, name):
    return header[name]['data_offsets']


def err_dir(outdir, name, config, tensors, **kw):
    return write(outdir, name, config, tensors, None, **kw)


def broken(rng, outdir):
    """One way of being wrong each, all from a one-layer mixtral in f32."""
    def base():
        return mixtral(rng, 'f32', layers=1)

    config, t, _ = base()
    del t['model.layers.0.block_sparse_moe.experts.2.w3.weight']
    err_dir(outdir, 'err-missing-tensor', config, t)

    config, t, _ = base()
    t['model.layers.0.block_sparse_moe.experts.1.w2.weight'] = make(rng, (6, 8), 'f32')
    err_dir(outdir, 'err-wrong-shape', config, t)

    config, t, _ = base()
    t['model.layers.0.block_sparse_moe.experts.0.w1.weight'] = np.zeros((6, 8), np.int32)
    err_dir(outdir, 'err-wrong-dtype', config, t)

    config, t, _ = base()
    config['num_local_experts'] = 8
    err_dir(outdir, 'err-config-more-experts', config, t)

    config, t, _ = base()
    config['num_local_experts'], config['num_experts_per_tok'] = 2, 1
    err_dir(outdir, 'err-config-fewer-experts', config, t)

    config, t, _ = base()
    config['hidden_size'] = 16
    err_dir(outdir, 'err-config-hidden', config, t)

    config, t, _ = base()
    config['model_type'] = 'llama'
    err_dir(outdir, 'err-config-family', config, t)

    config, t, _ = base()
    config['hidden_act'] = 'gelu'
    err_dir(outdir, 'err-config-act', config, t)

    config, t, _ = deepseek(rng, 'deepseek_v3', 'f32', first_k=1)
    config['moe_layer_freq'] = 2
    err_dir(outdir, 'err-config-layer-freq', config, t)

    w1 = 'model.layers.0.block_sparse_moe.experts.0.w1.weight'
    w2 = 'model.layers.0.block_sparse_moe.experts.3.w2.weight'
    size = os.path.getsize
    d = err_dir(outdir, 'err-header-past-eof', *base()[:2])
    f = os.path.join(d, 'model.safetensors')
    edit_file(f, header_len=size(f))
    d = err_dir(outdir, 'err-header-absurd', *base()[:2])
    edit_file(os.path.join(d, 'model.safetensors'), header_len=200_000_000)
    d = err_dir(outdir, 'err-header-not-json', *base()[:2])
    f = os.path.join(d, 'model.safetensors')
    raw = bytearray(open(f, 'rb').read())
    raw[8] = ord('[')
    open(f, 'wb').write(bytes(raw))

    def outside(h):
        b, e = offsets(h, w2)
        h[w2]['data_offsets'] = [b + 4096, e + 4096]
    d = err_dir(outdir, 'err-offsets-outside', *base()[:2])
    edit_file(os.path.join(d, 'model.safetensors'), outside)

    def overlap(h):
        h[w2]['data_offsets'] = list(offsets(h, w1))
    d = err_dir(outdir, 'err-offsets-overlap', *base()[:2])
    edit_file(os.path.join(d, 'model.safetensors'), overlap)

    d = err_dir(outdir, 'err-truncated', *base()[:2])
    edit_file(os.path.join(d, 'model.safetensors'), cut=10)

    # Indexes: a file that is not there, a path out of the directory, a tensor not in its file.
    config, t, _ = base()
    rest = {k: v for k, v in t.items() if k != w1}
    for name, bad in (('err-index-missing-file', 'model-00003-of-00002.safetensors'),
                      ('err-index-slash', 'shards/model-00001-of-00002.safetensors')):
        err_dir(outdir, name, config, rest,
                shards={k: 'model-00001-of-00002.safetensors' for k in rest})
        fix_index(outdir, name, w1, bad)
    config, t, _ = base()
    shards = {k: 'model-00001-of-00002.safetensors' if 'experts.0.' in k
              else 'model-00002-of-00002.safetensors' for k in t}
    err_dir(outdir, 'err-index-absent-tensor', config, t, shards=shards)
    fix_index(outdir, 'err-index-absent-tensor', w2, 'model-00001-of-00002.safetensors')

    config, t, _ = gpt_oss_mxfp4(rng, layers=1, nan_scale=True)
    err_dir(outdir, 'err-mxfp4-nan-scale', config, t)


def fix_index(outdir, name, tensor, fname):
    """Points the index's entry for tensor at fname, after the files were written."""
    path = os.path.join(outdir, name, 'model.safetensors.index.json')
    index = json.load(open(path))
    index['weight_map'][tensor] = fname
    json.dump(index, open(path, 'w'), indent=2)


def main():
    if len(sys.argv) != 2:
        sys.exit('usage: make-checkpoints.py OUTDIR')
    out = sys.argv[1]
    rng = np.random.default_rng(20250613)
    write(out, 'mixtral-bf16', *mixtral(rng, 'bf16'))
    write(out, 'mixtral-f32', *mixtral(rng, 'f32'))
    write(out, 'mixtral-fused-bf16', *mixtral(rng, 'bf16', fused=True))
    d = write(out, 'mixtral-f32-unaligned', *mixtral(rng, 'f32'))
    edit_file(os.path.join(d, 'model.safetensors'), misalign=True)
    write(out, 'qwen3-moe-f16', *qwen(rng, 'qwen3_moe', 'f16', layers=6, step=2, only=[3]))
    write(out, 'deepseek-v3-bf16', *deepseek(rng, 'deepseek_v3', 'bf16', first_k=1))
    write(out, 'deepseek-v2-f16', *deepseek(rng, 'deepseek_v2', 'f16'))
    write(out, 'gpt-oss-bf16', *gpt_oss(rng))
    write(out, 'gpt-oss-mxfp4', *gpt_oss_mxfp4(rng))
    config, t, expected = qwen(rng, 'qwen2_moe', 'f32', layers=2, step=1, only=[])
    # Two shards, with layer 0's experts split between them.
    shards = {k: 'model-00001-of-00002.safetensors'
              if k.startswith('model.layers.0.') and 'experts.3.' not in k
              else 'model-00002-of-00002.safetensors' for k in t}
    write(out, 'qwen2-moe-sharded', config, t, expected, shards=shards)
    broken(rng, out)


if __name__ == '__main__':
    main()
