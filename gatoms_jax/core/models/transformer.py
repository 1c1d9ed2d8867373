"""Decoder-only transformer (Llama family and Gemma 3 text) in Flax NNX.

Why NNX: it is the API Flax recommends for new code; modules are plain Python
objects whose parameters are typed Variables, so `nnx.split(model,
nnx.LoRAParam, ...)` separates the LoRA adapter from the frozen weights in one
call, and everything downstream (per-example gradients, curvature, atoms,
steering) works on that LoRA-only pytree.

Axis letters used in shape comments and einsums:
  b batch, t query positions, s key positions (cache slots), d model width,
  h query heads, k kv heads, g query heads per kv head, e head dim,
  f feed-forward width, v vocab, r LoRA rank, i/o a Linear's in/out width.

LoRA (PEFT semantics): y = x W + b + (alpha / r) · (x A) B, with A: i×r,
B: r×o. Every LoRA matrix is its own linear module for curvature purposes:
lora_a maps x (i) → h (r); lora_b maps h (r) → o (o). `LoraTaps` lets callers
record the inputs x, h of every LoRA matrix and add zero "probes" to its
outputs, whose gradients are the per-token output gradients s that K-FAC needs.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

import jax
import jax.numpy as jnp
from flax import nnx

from gatoms_jax.core.models import mixed
from gatoms_jax.core.models.config import ModelConfig

Array = jax.Array
PyTree = Any

LORA_TARGETS = (
  'q_proj',
  'k_proj',
  'v_proj',
  'o_proj',
  'gate_proj',
  'up_proj',
  'down_proj',
)
_MASK_VALUE = -1e30  # finite, so fully-masked (padding) rows stay NaN-free
# Rematerialisation of a decoder layer in the backward pass:
#   none: keep every intermediate (fastest backward, memory ∝ layers × T²);
#   full: keep only each layer's input, recompute the whole layer;
#   dots: keep the outputs of weight matmuls (dots without batch dims), so
#     the backward recomputes only elementwise ops and attention; attention
#     scores/probabilities (batched dots, b·h·T² each) are never kept.
REMAT_POLICIES = ('none', 'full', 'dots')


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  """Which linear modules carry a LoRA adapter, and its size.

  Attributes:
    rank: r.
    alpha: PEFT's lora_alpha; the update is scaled by alpha / r.
    targets: module names (e.g. 'q_proj'); 'all' means every linear module.
  """

  rank: int = 8
  alpha: float = 16.0
  targets: tuple[str, ...] = ('q_proj', 'v_proj')

  def __post_init__(self):
    targets = tuple(self.targets)
    if targets == ('all',):
      targets = LORA_TARGETS
    unknown = sorted(set(targets) - set(LORA_TARGETS))
    if unknown:
      raise ValueError(
        f'Unknown LoRA target(s) {unknown}; choose from {LORA_TARGETS} or all'
      )
    object.__setattr__(self, 'targets', targets)

  @property
  def scale(self) -> float:
    return self.alpha / self.rank


class LoraTaps:
  """Capture context for one forward pass.

  Attributes:
    probes: optional dict module path → {'a': zeros(..., r), 'b': zeros(..., o)}
      added to the outputs of lora_a and lora_b; grads w.r.t. them are the
      per-token output gradients.
    record: dict module path → {'a_in': x, 'b_in': h}, filled during the pass
      when recording is on.
    adapter_weights: optional (b, n) row weights over n stacked adapters
      (LoRA leaves (n, i, o)); one-hot rows give every row its own adapter.
  """

  def __init__(
    self,
    probes: Optional[dict] = None,
    record: bool = False,
    adapter_weights: Optional[Array] = None,
  ):
    self.probes = probes
    self.record = {} if record else None
    self.adapter_weights = adapter_weights


def _lora_matmul(x: Array, w: Array, weights: Optional[Array]) -> Array:
  """x (b t i) @ w (i o); or, for n stacked adapters w (n i o), row b times
  Σ_j weights[b, j] · w[j].

  The stacked form runs n adapters (e.g. steering variants) in one batch,
  any row with any adapter (rows can be dropped or reordered between calls).
  It costs n small LoRA products per row, negligible next to the frozen
  matmuls that all rows share.
  """
  if w.ndim == 2:
    return mixed.matmul(x, w)
  if weights is None:
    raise ValueError('stacked LoRA weights need LoraTaps(adapter_weights=...)')
  per_adapter = jnp.einsum('b...i,nio->b...no', x, w)
  return jnp.einsum('b...no,bn->b...o', per_adapter, weights.astype(x.dtype))


class Linear(nnx.Module):
  """y = x W (+ b) with an optional LoRA adapter. Kernel layout (in, out)."""

  def __init__(
    self,
    in_features: int,
    out_features: int,
    *,
    path: str,
    use_bias: bool = False,
    lora: Optional[LoraConfig] = None,
    dtype: Any = jnp.float32,
    rngs: nnx.Rngs,
  ):
    self.path = path
    std = 1.0 / math.sqrt(in_features)
    self.kernel = nnx.Param(
      std * jax.random.normal(rngs.params(), (in_features, out_features), dtype)
    )
    self.bias = (
      nnx.Param(jnp.zeros((out_features,), dtype)) if use_bias else None
    )
    if lora is not None:
      self.lora_scale = lora.scale
      # PEFT init (kaiming-uniform A, zero B) is applied by lora.init_lora;
      # zeros here keep construction cheap under nnx.eval_shape.
      self.lora_a = nnx.LoRAParam(jnp.zeros((in_features, lora.rank), dtype))
      self.lora_b = nnx.LoRAParam(jnp.zeros((lora.rank, out_features), dtype))
    else:
      self.lora_scale = 0.0
      self.lora_a = None
      self.lora_b = None

  def __call__(self, x: Array, taps: Optional[LoraTaps] = None) -> Array:
    y = mixed.matmul(x, self.kernel[...])  # bf16: fp32 accumulation
    if self.bias is not None:
      y = y + self.bias[...]
    if self.lora_a is None:
      return y
    probes = None if taps is None else taps.probes
    weights = None if taps is None else taps.adapter_weights
    h = _lora_matmul(x, self.lora_a[...], weights)  # b t r
    if probes is not None:
      h = h + probes[self.path]['a']
    if taps is not None and taps.record is not None:
      taps.record[self.path] = {'a_in': x, 'b_in': h}
    o = _lora_matmul(h, self.lora_b[...], weights)  # b t o
    if probes is not None:
      o = o + probes[self.path]['b']
    return y + self.lora_scale * o


class RMSNorm(nnx.Module):
  """RMSNorm in fp32; `offset`=1 gives Gemma's x·(1 + w)."""

  def __init__(self, dim: int, *, eps: float, offset: float, dtype: Any):
    self.eps = eps
    self.offset = offset
    init = jnp.zeros if offset else jnp.ones
    self.weight = nnx.Param(init((dim,), dtype))

  def __call__(self, x: Array) -> Array:
    xf = x.astype(jnp.float32)
    normed = xf * jax.lax.rsqrt(jnp.mean(xf * xf, -1, keepdims=True) + self.eps)
    w = self.weight[...].astype(jnp.float32)
    if self.offset:
      return (normed * (self.offset + w)).astype(x.dtype)
    # Llama casts before scaling; identical in fp32, matches HF in bf16.
    return normed.astype(x.dtype) * self.weight[...]


def rope_inv_freq(config: ModelConfig, layer_type: str) -> Array:
  """Inverse RoPE frequencies (e/2,) for a layer type, with scaling."""
  e = config.head_dim
  theta = (
    config.local_rope_theta if layer_type == 'sliding' else config.rope_theta
  )
  inv = 1.0 / (theta ** (jnp.arange(0, e, 2, dtype=jnp.float32) / e))
  scaling = config.rope_scaling
  if scaling is None or layer_type == 'sliding':
    return inv
  if scaling.kind == 'linear':
    return inv / scaling.factor
  if scaling.kind == 'llama3':
    low_wavelen = scaling.original_max_position / scaling.low_freq_factor
    high_wavelen = scaling.original_max_position / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv
    scaled = jnp.where(wavelen > low_wavelen, inv / scaling.factor, inv)
    smooth = (
      scaling.original_max_position / wavelen - scaling.low_freq_factor
    ) / (scaling.high_freq_factor - scaling.low_freq_factor)
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return jnp.where(medium, smoothed, scaled)
  raise ValueError(f'Unsupported rope scaling {scaling.kind!r}')


def layer_inputs_of(config: ModelConfig, layer_type: str) -> dict:
  """A layer's per-layer inputs: attention window (0: global) and RoPE table.

  These are the only things that differ between layers besides weights, so
  the scanned stack feeds them as scanned inputs instead of branching.
  """
  window = config.sliding_window if layer_type == 'sliding' else 0
  return {
    'window': jnp.asarray(window or 0, jnp.int32),
    'inv_freq': rope_inv_freq(config, layer_type),
  }


def _remat(fn, remat: str, prevent_cse: bool = True):
  """`fn` under the named rematerialisation policy (REMAT_POLICIES)."""
  if remat == 'none':
    return fn
  if remat == 'full':
    return jax.checkpoint(fn, prevent_cse=prevent_cse)
  if remat == 'dots':
    return jax.checkpoint(
      fn,
      prevent_cse=prevent_cse,
      policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    )
  raise ValueError(f'remat must be one of {REMAT_POLICIES}, got {remat!r}')


def apply_rope(x: Array, positions: Array, inv_freq: Array) -> Array:
  """HF's rotate-half RoPE. x: b t n e, positions: b t."""
  freqs = positions[..., None].astype(jnp.float32) * inv_freq  # b t e/2
  emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]
  cos, sin = jnp.cos(emb), jnp.sin(emb)
  xf = x.astype(jnp.float32)
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-xf[..., half:], xf[..., :half]], axis=-1)
  return (xf * cos + rotated * sin).astype(x.dtype)


class Attention(nnx.Module):
  """Grouped-query attention with optional q/k norm and sliding window."""

  def __init__(self, config: ModelConfig, layer: int, lora, dtype, rngs):
    c = config
    self.config = c
    self.layer_type = c.layer_types[layer]
    p = f'layers.{layer}.self_attn'

    def linear(name, i, o, bias):
      use_lora = lora if (lora is not None and name in lora.targets) else None
      return Linear(
        i,
        o,
        path=f'{p}.{name}',
        use_bias=bias,
        lora=use_lora,
        dtype=dtype,
        rngs=rngs,
      )

    bias = c.attention_bias
    self.q_proj = linear(
      'q_proj', c.hidden_size, c.num_heads * c.head_dim, bias
    )
    self.k_proj = linear(
      'k_proj', c.hidden_size, c.num_kv_heads * c.head_dim, bias
    )
    self.v_proj = linear(
      'v_proj', c.hidden_size, c.num_kv_heads * c.head_dim, bias
    )
    self.o_proj = linear(
      'o_proj', c.num_heads * c.head_dim, c.hidden_size, False
    )
    if c.qk_norm:
      kw = dict(eps=c.rms_norm_eps, offset=c.norm_offset, dtype=dtype)
      self.q_norm = RMSNorm(c.head_dim, **kw)
      self.k_norm = RMSNorm(c.head_dim, **kw)
    else:
      self.q_norm = self.k_norm = None

  def __call__(
    self,
    x,
    positions,
    valid,
    cache,
    cache_index,
    taps,
    segment_ids=None,
    layer_inputs=None,
  ):
    """One attention block; `layer_inputs` (see `layer_inputs`) overrides
    this layer's own window and RoPE table (the scanned stack runs every
    layer through one template module and feeds them as scanned inputs)."""
    c = self.config
    b, t, _ = x.shape
    q = self.q_proj(x, taps).reshape(b, t, c.num_heads, c.head_dim)
    k = self.k_proj(x, taps).reshape(b, t, c.num_kv_heads, c.head_dim)
    v = self.v_proj(x, taps).reshape(b, t, c.num_kv_heads, c.head_dim)
    if self.q_norm is not None:
      q, k = self.q_norm(q), self.k_norm(k)
    if layer_inputs is None:
      layer_inputs = layer_inputs_of(c, self.layer_type)
    inv_freq = layer_inputs['inv_freq']
    q = apply_rope(q, positions, inv_freq)
    k = apply_rope(k, positions, inv_freq)

    # Keys and values are laid out b k s e (the cache's layout): both
    # attention einsums then batch over (b, k) without transposing the cache,
    # which would copy all of it at every decode step.
    k = k.transpose(0, 2, 1, 3)
    v = v.transpose(0, 2, 1, 3)
    if cache is None:
      keys, values, key_pos, key_valid = k, v, positions, valid
      new_cache = None
    else:
      start = (0, 0, cache_index, 0)
      keys = jax.lax.dynamic_update_slice(
        cache['k'], k.astype(cache['k'].dtype), start
      )
      values = jax.lax.dynamic_update_slice(
        cache['v'], v.astype(cache['v'].dtype), start
      )
      key_pos = jax.lax.dynamic_update_slice(
        cache['pos'], positions, (0, cache_index)
      )
      key_valid = jax.lax.dynamic_update_slice(
        cache['valid'], valid, (0, cache_index)
      )
      new_cache = {'k': keys, 'v': values, 'pos': key_pos, 'valid': key_valid}

    mask = (key_pos[:, None, :] <= positions[:, :, None]) & key_valid[
      :, None, :
    ]
    if segment_ids is not None:  # packed documents: no attention across them
      mask &= segment_ids[:, None, :] == segment_ids[:, :, None]
    window = layer_inputs['window']  # 0: global attention
    mask &= (window == 0) | (
      key_pos[:, None, :] > positions[:, :, None] - window
    )
    g = c.num_heads // c.num_kv_heads
    q = q.reshape(b, t, c.num_kv_heads, g, c.head_dim)
    if t == 1:
      # One query (a decode step): multiply-and-reduce streams the cache
      # once in a fused loop; XLA:CPU's batched dots of (g × e)·(e × s) per
      # (b, k) were ~1.5x slower here.
      scores = jnp.sum(q[:, 0, :, :, None, :] * keys[:, :, None], axis=-1)[
        :, :, :, None
      ].astype(jnp.float32)  # b k g t=1 s
    else:
      scores = jnp.einsum('btkge,bkse->bkgts', q, keys).astype(jnp.float32)
    scores = scores * c.attention_scale
    scores = jnp.where(mask[:, None, None], scores, _MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(values.dtype)
    if t == 1:
      out = jnp.sum(probs[:, :, :, 0, :, None] * values[:, :, None], axis=3)
      out = out[:, None]  # b t=1 k g e
    else:
      out = jnp.einsum('bkgts,bkse->btkge', probs, values)
    out = out.reshape(b, t, c.num_heads * c.head_dim).astype(x.dtype)
    return self.o_proj(out, taps), new_cache


class MLP(nnx.Module):
  """Gated MLP: SwiGLU (Llama) or GeGLU with tanh GELU (Gemma 3)."""

  def __init__(self, config: ModelConfig, layer: int, lora, dtype, rngs):
    c = config
    p = f'layers.{layer}.mlp'
    self.activation = c.activation

    def linear(name, i, o):
      use_lora = lora if (lora is not None and name in lora.targets) else None
      return Linear(
        i, o, path=f'{p}.{name}', lora=use_lora, dtype=dtype, rngs=rngs
      )

    self.gate_proj = linear('gate_proj', c.hidden_size, c.intermediate_size)
    self.up_proj = linear('up_proj', c.hidden_size, c.intermediate_size)
    self.down_proj = linear('down_proj', c.intermediate_size, c.hidden_size)

  def __call__(self, x, taps):
    gate = self.gate_proj(x, taps)
    if self.activation == 'silu':
      gate = jax.nn.silu(gate)
    else:
      gate = jax.nn.gelu(gate, approximate=True)
    return self.down_proj(gate * self.up_proj(x, taps), taps)


class DecoderLayer(nnx.Module):
  def __init__(self, config: ModelConfig, layer: int, lora, dtype, rngs):
    c = config
    kw = dict(eps=c.rms_norm_eps, offset=c.norm_offset, dtype=dtype)
    self.sandwich = c.sandwich_norms
    self.input_layernorm = RMSNorm(c.hidden_size, **kw)
    self.self_attn = Attention(c, layer, lora, dtype, rngs)
    self.post_attention_layernorm = RMSNorm(c.hidden_size, **kw)
    if c.sandwich_norms:
      self.pre_feedforward_layernorm = RMSNorm(c.hidden_size, **kw)
      self.post_feedforward_layernorm = RMSNorm(c.hidden_size, **kw)
    self.mlp = MLP(c, layer, lora, dtype, rngs)

  def __call__(
    self,
    x,
    positions,
    valid,
    cache,
    cache_index,
    taps,
    segment_ids=None,
    layer_inputs=None,
  ):
    h, new_cache = self.self_attn(
      self.input_layernorm(x),
      positions,
      valid,
      cache,
      cache_index,
      taps,
      segment_ids,
      layer_inputs,
    )
    if self.sandwich:
      x = x + self.post_attention_layernorm(h)
      h = self.mlp(self.pre_feedforward_layernorm(x), taps)
      return x + self.post_feedforward_layernorm(h), new_cache
    x = x + h
    return x + self.mlp(self.post_attention_layernorm(x), taps), new_cache


class Transformer(nnx.Module):
  """A causal LM. Parameter names follow the HF checkpoints' names."""

  def __init__(
    self,
    config: ModelConfig,
    *,
    lora: Optional[LoraConfig] = None,
    dtype: Any = jnp.float32,
    rngs: nnx.Rngs,
    scan_layers: bool = True,
    remat: str = 'dots',
  ):
    c = config
    self.config = c
    self.lora_config = lora
    set_layer_execution(self, scan_layers=scan_layers, remat=remat)
    self.embed_tokens = nnx.Param(
      jax.random.normal(rngs.params(), (c.vocab_size, c.hidden_size), dtype)
      * 0.02
    )
    self.layers = nnx.List(
      [DecoderLayer(c, i, lora, dtype, rngs) for i in range(c.num_layers)]
    )
    self.norm = RMSNorm(
      c.hidden_size, eps=c.rms_norm_eps, offset=c.norm_offset, dtype=dtype
    )
    if c.tie_embeddings:
      self.lm_head = None
    else:
      self.lm_head = nnx.Param(
        jax.random.normal(rngs.params(), (c.hidden_size, c.vocab_size), dtype)
        * 0.02
      )

  def embed(self, tokens: Array) -> Array:
    table = self.embed_tokens[...]
    x = jnp.take(table, tokens, axis=0)
    if self.config.scale_embeddings:
      # HF rounds sqrt(d) to the weight dtype (bf16 for real Gemma weights).
      x = x * jnp.asarray(math.sqrt(self.config.hidden_size), table.dtype)
    return x

  def hidden_states(
    self,
    tokens: Array,
    positions: Optional[Array] = None,
    valid: Optional[Array] = None,
    *,
    cache: Optional[dict] = None,
    cache_index: Optional[Array] = None,
    taps: Optional[LoraTaps] = None,
    segment_ids: Optional[Array] = None,
  ) -> tuple[Array, Optional[dict]]:
    """Final-norm hidden states (b t d) and the updated cache.

    `segment_ids` (b t, int; no cache) packs several documents into one row:
    a token attends only to keys with its own segment id. Give each packed
    document its own `positions` starting at 0.
    """
    b, t = tokens.shape
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    if valid is None:
      valid = jnp.ones((b, t), bool)
    x = self.embed(tokens)
    run = self._scanned if self.scan_layers else self._unrolled
    x, new_cache = run(
      x, positions, valid, cache, cache_index, taps, segment_ids
    )
    return self.norm(x), new_cache

  def _layer_fn(
    self,
    graphdef,
    record,
    positions,
    valid,
    cache_index,
    taps,
    segment_ids,
    prevent_cse,
  ):
    """A pure function (state, x, layer_inputs, probes, cache) → (x, cache,
    record) of one layer, under the remat policy.

    Pure (no writes into `taps`), so that it can run under jax.checkpoint and
    lax.scan: the inputs the layer's LoRA matrices saw come back as outputs.
    """
    weights = None if taps is None else taps.adapter_weights

    def fn(state, x, layer_inputs, probes, cache):
      layer = nnx.merge(graphdef, state)
      layer_taps = None
      if probes is not None or record or weights is not None:
        layer_taps = LoraTaps(probes, record, weights)
      x, new_cache = layer(
        x,
        positions,
        valid,
        cache,
        cache_index,
        layer_taps,
        segment_ids,
        layer_inputs,
      )
      return x, new_cache, (layer_taps.record if record else None)

    return _remat(fn, self.remat, prevent_cse)

  def _unrolled(
    self, x, positions, valid, cache, cache_index, taps, segment_ids
  ):
    """The layers one after another (a Python loop: one graph per layer)."""
    record = taps is not None and taps.record is not None
    new_cache = None if cache is None else {'layers': []}
    for i, layer in enumerate(self.layers):
      graphdef, state = nnx.split(layer)
      fn = self._layer_fn(
        graphdef, record, positions, valid, cache_index, taps, segment_ids, True
      )
      layer_type = self.config.layer_types[i]
      probes = None if taps is None else taps.probes
      layer_cache = None if cache is None else cache['layers'][i]
      x, c, rec = fn(
        state, x, layer_inputs_of(self.config, layer_type), probes, layer_cache
      )
      if record:
        taps.record.update(rec)
      if cache is not None:
        new_cache['layers'].append(c)
    return x, new_cache

  def _scanned(
    self, x, positions, valid, cache, cache_index, taps, segment_ids
  ):
    """The layers as one `lax.scan` over stacked layer states.

    Every layer runs through layer 0's module (its graph), with its own
    weights, window and RoPE table as scanned inputs, so XLA compiles one
    layer, not `num_layers` copies. LoRA probes are stacked under layer 0's
    module paths and the recorded inputs unstacked back to `layers.{i}.…`,
    so taps keep their per-module names. A KV cache is carried stacked
    (`init_cache(..., stacked=True)`; slower to decode on CPU than the
    unrolled layout, see `decode._cached_model`).
    """
    n = len(self.layers)
    splits = [nnx.split(layer) for layer in self.layers]
    graphdef = splits[0][0]
    # Same module tree in every layer (only static window/RoPE differ, fed
    # below); tree.map raises if the states' structures differ.
    states = jax.tree.map(lambda *xs: jnp.stack(xs), *[s for _, s in splits])
    per_layer = [
      layer_inputs_of(self.config, t) for t in self.config.layer_types
    ]
    layer_inputs = jax.tree.map(lambda *xs: jnp.stack(xs), *per_layer)
    record = taps is not None and taps.record is not None
    probes = None
    prefix = 'layers.0.'
    if taps is not None and taps.probes is not None:
      names = [k[len(prefix) :] for k in taps.probes if k.startswith(prefix)]
      probes = {
        prefix + name: jax.tree.map(
          lambda *xs: jnp.stack(xs),
          *[taps.probes[f'layers.{i}.{name}'] for i in range(n)],
        )
        for name in names
      }
    unstack_cache = cache is not None and isinstance(cache['layers'], list)
    if unstack_cache:  # a per-layer cache from an unrolled caller: one copy
      cache = stack_cache(cache)
    stacked_cache = None if cache is None else cache['layers']
    fn = self._layer_fn(
      graphdef, record, positions, valid, cache_index, taps, segment_ids, False
    )

    def body(carry, xs):
      x, all_cache = carry
      state, inputs, layer_probes, i = xs
      layer_cache = None
      if all_cache is not None:
        layer_cache = jax.tree.map(lambda a: a[i], all_cache)
      x, new_layer_cache, rec = fn(state, x, inputs, layer_probes, layer_cache)
      if all_cache is not None:
        all_cache = jax.tree.map(
          lambda a, u: jax.lax.dynamic_update_index_in_dim(a, u, i, 0),
          all_cache,
          new_layer_cache,
        )
      return (x, all_cache), rec

    xs = (states, layer_inputs, probes, jnp.arange(n))
    (x, stacked_cache), recs = jax.lax.scan(body, (x, stacked_cache), xs)
    if record:
      for name, rec in recs.items():
        rest = name[len(prefix) :]
        for i in range(n):
          taps.record[f'layers.{i}.{rest}'] = jax.tree.map(lambda a: a[i], rec)
    new_cache = None if cache is None else {'layers': stacked_cache}
    if unstack_cache:
      new_cache = unstack_cache_layers(new_cache)
    return x, new_cache

  def logits(self, hidden: Array) -> Array:
    """LM head on any array of hidden states (..., d) → (..., v) in fp32."""
    if self.lm_head is None:
      w = self.embed_tokens[...]
      out = mixed.matmul_transposed(hidden, w, fp32_out=True)
    else:
      out = mixed.matmul(hidden, self.lm_head[...], fp32_out=True)
    return out.astype(jnp.float32)

  def __call__(self, tokens, positions=None, valid=None, **kwargs):
    hidden, cache = self.hidden_states(tokens, positions, valid, **kwargs)
    logits = self.logits(hidden)
    return logits if kwargs.get('cache') is None else (logits, cache)


def set_layer_execution(
  model: 'Transformer', *, scan_layers: bool, remat: str
) -> None:
  """How `model` runs its layers: one scanned stack or unrolled, and the
  rematerialisation policy of each layer (REMAT_POLICIES).

  Both are static (part of the graph definition, so of `lora.ModelDef`):
  they change the compiled program, never the parameters or the results
  beyond float rounding.
  """
  if remat not in REMAT_POLICIES:
    raise ValueError(f'remat must be one of {REMAT_POLICIES}, got {remat!r}')
  model.scan_layers = bool(scan_layers)
  model.remat = remat


def init_cache(
  config: ModelConfig,
  batch: int,
  max_len: int,
  dtype: Any = jnp.float32,
  *,
  stacked: bool = False,
) -> dict:
  """An empty KV cache: every slot invalid.

  Layout: {'layers': [per-layer {'k', 'v': b k s e, 'pos', 'valid': b s}]};
  `stacked=True` (for a scanned model) gives the same arrays stacked on a
  leading layer axis, {'layers': {'k': L b k s e, ...}}.
  """
  shape = (batch, config.num_kv_heads, max_len, config.head_dim)  # b k s e
  layers = [
    {
      'k': jnp.zeros(shape, dtype),
      'v': jnp.zeros(shape, dtype),
      'pos': jnp.zeros((batch, max_len), jnp.int32),
      'valid': jnp.zeros((batch, max_len), bool),
    }
    for _ in range(config.num_layers)
  ]
  cache = {'layers': layers}
  return stack_cache(cache) if stacked else cache


def stack_cache(cache: dict) -> dict:
  """A per-layer KV cache → the stacked layout (leading layer axis)."""
  layers = cache['layers']
  if not isinstance(layers, list):
    return cache
  return {'layers': jax.tree.map(lambda *xs: jnp.stack(xs), *layers)}


def unstack_cache_layers(cache: dict) -> dict:
  """A stacked KV cache → the per-layer layout."""
  layers = cache['layers']
  if isinstance(layers, list):
    return cache
  n = layers['k'].shape[0]
  return {'layers': [jax.tree.map(lambda a: a[i], layers) for i in range(n)]}


def cache_slots(cache: dict) -> int:
  """Number of slots (s) of a KV cache in either layout."""
  layers = cache['layers']
  k = layers[0]['k'] if isinstance(layers, list) else layers['k']
  return k.shape[-2]
