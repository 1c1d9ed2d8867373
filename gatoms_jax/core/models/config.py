"""Model configuration: one frozen dataclass for both supported families.

Llama (SmolLM2, Llama 2/3, Qwen2-style qkv biases) and Gemma 3 text models
share one decoder (`transformer.py`); the differences are flags here:

| flag                 | llama              | gemma3                            |
|----------------------|--------------------|-----------------------------------|
| norm_offset          | 0 (x·w)            | 1 (x·(1+w))                       |
| qk_norm              | False              | True                              |
| sandwich_norms       | False              | True (post-attn/pre+post-ffw)     |
| embed_scale          | 1                  | sqrt(hidden) rounded to the dtype |
| activation           | silu (SwiGLU)      | gelu_tanh (GeGLU)                 |
| layer_types          | all 'full'         | 'sliding' / 'full' pattern        |
| rope                 | one base (+scaling)| local base for sliding layers     |
"""

from __future__ import annotations

import dataclasses
from typing import Optional

SUPPORTED_FAMILIES = ('llama', 'gemma3')


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """RoPE frequency scaling. kind: 'linear' (Gemma 3 global) or 'llama3'."""

  kind: str
  factor: float
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_position: int = 8192


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture of a decoder-only LM.

  Attributes:
    family: 'llama' or 'gemma3'.
    vocab_size, hidden_size, intermediate_size, num_layers, num_heads,
    num_kv_heads, head_dim: the usual sizes.
    rms_norm_eps: epsilon inside every RMSNorm.
    rope_theta: RoPE base of full-attention layers.
    rope_scaling: optional scaling of full-attention RoPE frequencies.
    local_rope_theta: RoPE base of sliding-window layers (Gemma 3).
    sliding_window: window of 'sliding' layers (keys with q - k < window).
    layer_types: per-layer 'full' or 'sliding'.
    query_pre_attn_scalar: attention scale is its -1/2 power (None: head_dim).
    tie_embeddings: the LM head reuses the embedding matrix.
    attention_bias: q/k/v projections carry biases (Qwen2-style).
    norm_offset, qk_norm, sandwich_norms, scale_embeddings, activation:
      family switches, see the module docstring.
    max_position_embeddings: longest supported sequence.
  """

  family: str
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rms_norm_eps: float = 1e-5
  rope_theta: float = 10000.0
  rope_scaling: Optional[RopeScaling] = None
  local_rope_theta: float = 10000.0
  sliding_window: Optional[int] = None
  layer_types: tuple[str, ...] = ()
  query_pre_attn_scalar: Optional[float] = None
  tie_embeddings: bool = True
  attention_bias: bool = False
  norm_offset: float = 0.0
  qk_norm: bool = False
  sandwich_norms: bool = False
  scale_embeddings: bool = False
  activation: str = 'silu'
  max_position_embeddings: int = 8192

  def __post_init__(self):
    if self.family not in SUPPORTED_FAMILIES:
      raise ValueError(
        f'Unsupported model family {self.family!r}; supported: '
        f'{", ".join(SUPPORTED_FAMILIES)}'
      )
    if not self.layer_types:
      object.__setattr__(self, 'layer_types', ('full',) * self.num_layers)
    if len(self.layer_types) != self.num_layers:
      raise ValueError('layer_types must have one entry per layer')
    if self.num_heads % self.num_kv_heads:
      raise ValueError('num_heads must be a multiple of num_kv_heads')

  @property
  def attention_scale(self) -> float:
    scalar = self.query_pre_attn_scalar or self.head_dim
    return float(scalar) ** -0.5

  def replace(self, **kwargs) -> 'ModelConfig':
    return dataclasses.replace(self, **kwargs)


def llama_config(**kwargs) -> ModelConfig:
  return ModelConfig(family='llama', **kwargs)


def gemma3_config(sliding_window_pattern: int = 6, **kwargs) -> ModelConfig:
  """Gemma 3 text config; every `pattern`-th layer is global ('full')."""
  n = kwargs['num_layers']
  kwargs.setdefault(
    'layer_types',
    tuple(
      'full' if (i + 1) % sliding_window_pattern == 0 else 'sliding'
      for i in range(n)
    ),
  )
  defaults = dict(
    rms_norm_eps=1e-6,
    rope_theta=1_000_000.0,
    local_rope_theta=10_000.0,
    norm_offset=1.0,
    qk_norm=True,
    sandwich_norms=True,
    scale_embeddings=True,
    activation='gelu_tanh',
    tie_embeddings=True,
  )
  defaults.update(kwargs)
  return ModelConfig(family='gemma3', **defaults)


# Named presets. Real weights come from files; these give shapes for tests,
# memory estimates and `nnx.eval_shape`.
def smollm2_135m() -> ModelConfig:
  return llama_config(
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_layers=30,
    num_heads=9,
    num_kv_heads=3,
    head_dim=64,
    rms_norm_eps=1e-5,
    rope_theta=100000.0,
    tie_embeddings=True,
  )


def gemma3_4b() -> ModelConfig:
  return gemma3_config(
    vocab_size=262208,
    hidden_size=2560,
    intermediate_size=10240,
    num_layers=34,
    num_heads=8,
    num_kv_heads=4,
    head_dim=256,
    query_pre_attn_scalar=256,
    sliding_window=1024,
    rope_scaling=RopeScaling(kind='linear', factor=8.0),
    max_position_embeddings=131072,
  )


def tiny_llama(**overrides) -> ModelConfig:
  base = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=16,
    rope_theta=10000.0,
    tie_embeddings=True,
    max_position_embeddings=512,
  )
  base.update(overrides)
  return llama_config(**base)


def tiny_gemma3(**overrides) -> ModelConfig:
  base = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_layers=3,
    num_heads=4,
    num_kv_heads=2,
    head_dim=16,
    query_pre_attn_scalar=16,
    sliding_window=4,
    sliding_window_pattern=3,
    rope_theta=10000.0,
    local_rope_theta=1000.0,
    max_position_embeddings=512,
  )
  base.update(overrides)
  return gemma3_config(**base)


PRESETS = {
  'smollm2_135m': smollm2_135m,
  'gemma3_4b': gemma3_4b,
  'tiny_llama': tiny_llama,
  'tiny_gemma3': tiny_gemma3,
}
