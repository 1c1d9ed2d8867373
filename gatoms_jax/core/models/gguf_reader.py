"""GGUF files beyond llama: metadata, dequantised tensors, Gemma 3.

A GGUF file holds key/value metadata (`general.architecture`,
`ARCH.block_count`, tokenizer tables, ...) and tensors that may be quantised:
legacy block formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) and K-quants (Q2_K ...
Q6_K). The `gguf` package's `gguf.quants.dequantize` expands every one of
these to float32; we never implement block formats ourselves.

Gemma 3 in llama.cpp's layout (convert_hf_to_gguf.py, Gemma3Model), mapped to
HF names, which `convert.build_from_tensors` then maps to our parameters:

| GGUF                        | HF (model.layers.N.*)          |
|-----------------------------|--------------------------------|
| blk.N.attn_norm             | input_layernorm                |
| blk.N.post_attention_norm   | post_attention_layernorm       |
| blk.N.ffn_norm              | pre_feedforward_layernorm      |
| blk.N.post_ffw_norm         | post_feedforward_layernorm     |
| blk.N.attn_q_norm / k_norm  | self_attn.q_norm / k_norm      |
| blk.N.attn_{q,k,v,output}   | self_attn.{q,k,v,o}_proj       |
| blk.N.ffn_{gate,up,down}    | mlp.{gate,up,down}_proj        |

Two conventions differ from HF: llama.cpp multiplies by the stored norm
weight, so the converter stored every Gemma `*norm.weight` as 1 + w (we
subtract 1: our RMSNorm computes x·(1 + w), as HF does); and, unlike llama,
Gemma's Q/K rows are stored unpermuted (llama.cpp's Gemma 3 graph uses
NeoX-style RoPE, the same rotate-half as HF). What GGUF does not record
takes Gemma 3's defaults, as transformers' GGUF loader does: local RoPE base
10 000, every 6th layer global, query_pre_attn_scalar = head_dim.
"""

from __future__ import annotations

import re
from typing import Any, Iterator

import numpy as np

from gatoms_jax.core.models import config as config_lib
from gatoms_jax.core.models.config import ModelConfig
from gatoms_jax.core.models.errors import ModelLoadError, UnsupportedModelError

# Types `gguf.quants.dequantize` expands (checked by name so that a newer
# gguf release with more types still gets a clear error from us first).
SUPPORTED_TENSOR_TYPES = (
  'F32', 'F16', 'BF16', 'Q4_0', 'Q4_1', 'Q5_0', 'Q5_1', 'Q8_0',
  'Q2_K', 'Q3_K', 'Q4_K', 'Q5_K', 'Q6_K',
)  # fmt: skip
SUPPORTED_ARCHITECTURES = ('llama', 'gemma3')

_GEMMA3_NAMES = [
  (r'token_embd\.weight', 'model.embed_tokens.weight'),
  (r'output_norm\.weight', 'model.norm.weight'),
  (r'output\.weight', 'lm_head.weight'),
  (r'blk\.(\d+)\.attn_norm\.weight', r'model.layers.\1.input_layernorm.weight'),
  (
    r'blk\.(\d+)\.post_attention_norm\.weight',
    r'model.layers.\1.post_attention_layernorm.weight',
  ),
  (
    r'blk\.(\d+)\.ffn_norm\.weight',
    r'model.layers.\1.pre_feedforward_layernorm.weight',
  ),
  (
    r'blk\.(\d+)\.post_ffw_norm\.weight',
    r'model.layers.\1.post_feedforward_layernorm.weight',
  ),
  (
    r'blk\.(\d+)\.attn_([qk])_norm\.weight',
    r'model.layers.\1.self_attn.\2_norm.weight',
  ),
  (
    r'blk\.(\d+)\.attn_([qkv])\.weight',
    r'model.layers.\1.self_attn.\2_proj.weight',
  ),
  (
    r'blk\.(\d+)\.attn_output\.weight',
    r'model.layers.\1.self_attn.o_proj.weight',
  ),
  (
    r'blk\.(\d+)\.ffn_(gate|up|down)\.weight',
    r'model.layers.\1.mlp.\2_proj.weight',
  ),
]


def open_reader(path: str) -> Any:
  """A `gguf.GGUFReader` on `path` (memory-mapped; tensors read lazily)."""
  import gguf

  try:
    return gguf.GGUFReader(path)
  except Exception as e:  # gguf raises ValueError, struct.error, OSError
    raise ModelLoadError(f'Cannot read GGUF file {path}: {e}') from e


def field(reader: Any, key: str, default: Any = None) -> Any:
  """One scalar or string metadata value (arrays: their first element)."""
  f = reader.fields.get(key)
  if f is None or not f.data:
    return default
  value = f.parts[f.data[0]]
  if f.types and f.types[-1].name == 'STRING':
    return bytes(value).decode()
  return value.tolist()[0] if hasattr(value, 'tolist') else value


def architecture(reader: Any) -> str:
  return field(reader, 'general.architecture', '')


def dequantize(tensor: Any, path: str) -> np.ndarray:
  """A GGUF tensor as float32 in row-major (HF) shape, e.g. (out, in).

  Raises:
    UnsupportedModelError: its type is not one `gguf` can dequantise.
  """
  from gguf import quants

  qtype = tensor.tensor_type.name
  if qtype not in SUPPORTED_TENSOR_TYPES:
    raise UnsupportedModelError(
      f'{path}: tensor {tensor.name} has unsupported type {qtype}; supported: '
      f'{", ".join(SUPPORTED_TENSOR_TYPES)}'
    )
  w = quants.dequantize(tensor.data, tensor.tensor_type)
  # GGUF lists dims fastest-first; the data are row-major in reverse order.
  return np.asarray(w, np.float32).reshape([int(d) for d in tensor.shape[::-1]])


def gemma3_config(reader: Any, path: str) -> ModelConfig:
  """Our ModelConfig for a `gemma3` GGUF's metadata."""
  g = lambda key, default=None: field(reader, f'gemma3.{key}', default)
  required = (
    'block_count',
    'embedding_length',
    'feed_forward_length',
    'attention.head_count',
  )
  missing = [k for k in required if g(k) is None]
  if missing:
    raise ModelLoadError(f'{path}: gemma3 metadata lacks {missing}')
  names = {t.name for t in reader.tensors}
  embed = next(t for t in reader.tensors if t.name == 'token_embd.weight')
  n_heads = int(g('attention.head_count'))
  hidden = int(g('embedding_length'))
  head_dim = int(g('attention.key_length', hidden // n_heads))
  if int(g('attention.value_length', head_dim)) != head_dim:
    raise UnsupportedModelError(
      f'{path}: key_length != value_length is not supported'
    )
  scaling = None
  if field(reader, 'gemma3.rope.scaling.type') not in (None, 'none'):
    kind = field(reader, 'gemma3.rope.scaling.type')
    if kind != 'linear':
      raise UnsupportedModelError(
        f'{path}: rope scaling {kind!r} is not supported (only linear)'
      )
    scaling = config_lib.RopeScaling(
      kind='linear', factor=float(g('rope.scaling.factor'))
    )
  return config_lib.gemma3_config(
    vocab_size=int(embed.shape[-1]),
    hidden_size=hidden,
    intermediate_size=int(g('feed_forward_length')),
    num_layers=int(g('block_count')),
    num_heads=n_heads,
    num_kv_heads=int(g('attention.head_count_kv', n_heads)),
    head_dim=head_dim,
    query_pre_attn_scalar=head_dim,
    rms_norm_eps=float(g('attention.layer_norm_rms_epsilon', 1e-6)),
    rope_theta=float(g('rope.freq_base', 1_000_000.0)),
    local_rope_theta=10_000.0,
    rope_scaling=scaling,
    sliding_window=int(g('attention.sliding_window', 512)),
    tie_embeddings='output.weight' not in names,
    max_position_embeddings=int(g('context_length', 32768)),
  )


def gemma3_tensors(reader: Any, path: str) -> Iterator[tuple[str, np.ndarray]]:
  """(HF name, float32 array) for every tensor of a `gemma3` GGUF.

  Raises:
    UnsupportedModelError: a tensor has an unknown name or type.
  """
  for tensor in reader.tensors:
    hf_name = None
    for pattern, template in _GEMMA3_NAMES:
      if re.fullmatch(pattern, tensor.name):
        hf_name = re.sub(pattern, template, tensor.name)
        break
    if hf_name is None:
      raise UnsupportedModelError(
        f'{path}: unknown gemma3 tensor {tensor.name}; this port reads the '
        'text decoder only (no vision tower, no per-layer embeddings)'
      )
    w = dequantize(tensor, path)
    if hf_name.endswith('norm.weight'):
      w = w - 1.0  # stored as 1 + w for llama.cpp's x·w RMSNorm
    yield hf_name, w


def read_gemma3(reader: Any, path: str):
  """(config, iterator of HF-named float32 tensors) of a `gemma3` GGUF."""
  return gemma3_config(reader, path), gemma3_tensors(reader, path)
