"""Jitted kernels of batched decoding: prefill, decode segments, scoring.

`gatoms_jax.core.models.generate.Generator` drives these from the host. Layout of
one batch (B rows, prompts LEFT-padded to a bucketed length P, N new tokens):

  slots 0..P-1      prompt (pads: valid=False), written by `prefill`
  slots P..P+N-2    generated tokens 0..N-2, one per decode step

Positions are `cumsum(valid) - 1`, so every row's prompt starts at position 0
whatever its padding, and generated token i of a row sits at position
`len(prompt) + i`. `decode_segment` runs up to `n_steps` decode steps in one
`lax.while_loop` and stops early once every row has emitted an EOS id.

Adapters: `lora` is one LoRA tree, or n stacked trees (leaves (n, ...)) with
per-row one-hot `adapter_weights` (b, n) — see `transformer._lora_matmul` —
so steering variants share one batch, and rows can be dropped between
segments (`gather_rows`) without regrouping them by adapter.

The LoRA tree is an argument of every kernel, so a modified adapter of the
same shapes reuses the compiled code.
"""

from __future__ import annotations

import collections
import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp

from gatoms_jax.core.models import lora as lora_lib
from gatoms_jax.core.models.transformer import (
  LoraTaps,
  cache_slots,
  init_cache,
  set_layer_execution,
)

Array = jax.Array
PyTree = Any

# Number of times each kernel was traced, keyed by (name, *shapes); tests use
# it to check that a new LoRA tree of the same shapes does not recompile.
TRACE_COUNTS: collections.Counter = collections.Counter()


def positions(valid: Array) -> Array:
  """Position ids of left-padded rows (pads get 0; they are masked keys)."""
  return jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0).astype(jnp.int32)


def _cached_model(mdef, base, lora):
  """The model for the KV-cache kernels (prefill, decode): layers unrolled.

  A scanned model can decode (`init_cache(..., stacked=True)`), but carrying
  the stacked cache through the layer scan copies each layer's cache slice
  in and out at every step: measured on SmolLM2-135M shapes (4 prompts,
  64 new tokens, shared CPU at load ~24), generation took ~150 s scanned
  vs ~85 s unrolled. These kernels therefore run the unrolled layout
  (same weights, same results); scoring kernels without a cache stay
  scanned.
  """
  model = lora_lib.merge(mdef, base, lora)
  set_layer_execution(model, scan_layers=False, remat=model.remat)
  return model


def _taps(weights: Optional[Array]) -> Optional[LoraTaps]:
  return None if weights is None else LoraTaps(adapter_weights=weights)


def _top_p_filter(logits: Array, top_p: Array) -> Array:
  """Keeps the smallest set of tokens whose probability reaches top_p.

  Same rule as transformers' TopPLogitsWarper: a token is kept iff the
  probability mass of strictly more likely tokens is < top_p (so the most
  likely token always survives). Ties at the threshold are kept together.
  """
  sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
  probs = jax.nn.softmax(sorted_logits, axis=-1)
  mass_before = jnp.cumsum(probs, axis=-1) - probs
  keep = mass_before < top_p
  threshold = jnp.min(
    jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True
  )
  return jnp.where(logits >= threshold, logits, -jnp.inf)


def _pick(logits, row_keys, step, sampling, mode: str) -> Array:
  """Next token per row: argmax ('greedy') or a sample ('sample', 'top_p')."""
  if mode == 'greedy':
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  temperature, top_p = sampling
  scaled = logits / temperature
  if mode == 'top_p':
    scaled = _top_p_filter(scaled, top_p)
  keys = jax.vmap(jax.random.fold_in, (0, None))(row_keys, step)
  return jax.vmap(jax.random.categorical)(keys, scaled).astype(jnp.int32)


def _is_eos(tok: Array, eos_ids: Array) -> Array:
  return jnp.any(tok[:, None] == eos_ids[None, :], axis=-1)


@functools.partial(jax.jit, static_argnames=('mdef', 'n_slots', 'mode'))
def prefill(
  mdef: lora_lib.ModelDef,
  base: PyTree,
  lora: PyTree,
  weights: Optional[Array],
  tokens: Array,
  valid: Array,
  done: Array,
  row_keys: Array,
  eos_ids: Array,
  sampling: tuple[Array, Array],
  *,
  n_slots: int,
  mode: str,
) -> dict:
  """Runs the prompts and emits generated token 0.

  Args:
    mdef, base, lora: the split model (lora: one tree or n stacked trees).
    weights: (b, n) adapter weights for stacked trees, else None.
    tokens, valid: int32/bool [b, P] left-padded prompts.
    done: bool [b], rows that are padding (never generate).
    row_keys: [b] PRNG keys (sampling only).
    eos_ids: int32 [k] ids that end a row (-1: padding).
    sampling: (temperature, top_p) float32 scalars (sampling only).
    n_slots: cache slots, P + N - 1.
    mode: 'greedy', 'sample' or 'top_p'.

  Returns:
    The decode state: cache, tok [b] (token 0; -1 for padding rows),
    done [b], lengths [b] (prompt lengths).
  """
  b, p = tokens.shape
  TRACE_COUNTS['prefill', b, p, n_slots, mode] += 1
  model = _cached_model(mdef, base, lora)
  dtype = model.embed_tokens[...].dtype
  cache = init_cache(mdef.config, b, n_slots, dtype)
  hidden, cache = model.hidden_states(
    tokens,
    positions(valid),
    valid,
    cache=cache,
    cache_index=0,
    taps=_taps(weights),
  )
  logits = model.logits(hidden[:, -1])
  tok = jnp.where(done, -1, _pick(logits, row_keys, 0, sampling, mode))
  return {
    'cache': cache,
    'tok': tok,
    'done': done | _is_eos(tok, eos_ids),
    'lengths': jnp.sum(valid, axis=1).astype(jnp.int32),
  }


@functools.partial(
  jax.jit,
  static_argnames=('mdef', 'n_steps', 'mode'),
  donate_argnames=('state',),
)
def decode_segment(
  mdef: lora_lib.ModelDef,
  base: PyTree,
  lora: PyTree,
  weights: Optional[Array],
  state: dict,
  row_keys: Array,
  eos_ids: Array,
  sampling: tuple[Array, Array],
  first_step: Array,
  prompt_slots: Array,
  last_step: Array,
  *,
  n_steps: int,
  mode: str,
) -> tuple[dict, Array]:
  """Decode steps first_step, first_step + 1, ..., at most `n_steps` of them.

  Stops after step `last_step` or once every row has stopped. Column i of
  the returned tokens holds step first_step + i (-1: the row had stopped or
  the loop ended).

  Args:
    mdef, base, lora, weights: as in `prefill`.
    state: the decode state (donated; its cache is updated in place).
    row_keys, eos_ids, sampling, mode: as in `prefill`.
    first_step: int32, the first step to run (≥ 1).
    prompt_slots: int32 P, the cache slots taken by the prompts.
    last_step: int32 N - 1, the last step of the generation.
    n_steps: decode steps per call at most (static).

  Returns:
    (the new state, int32 [b, n_steps] tokens of this segment).
  """
  b, width = state['tok'].shape[0], n_steps
  slots = cache_slots(state['cache'])
  TRACE_COUNTS['decode', b, slots, n_steps, mode] += 1
  lengths = state['lengths']

  def cond(carry):
    i, _, _, done, _ = carry
    return (i < width) & (first_step + i <= last_step) & ~jnp.all(done)

  def body(carry):
    i, cache, tok, done, out = carry
    step = first_step + i
    # Merging is free at run time; doing it here keeps NNX objects from
    # crossing the while_loop trace boundary.
    model = _cached_model(mdef, base, lora)
    x = jnp.maximum(tok, 0)[:, None]  # finished rows feed a dummy id
    pos = (lengths + step - 1)[:, None]
    hidden, cache = model.hidden_states(
      x,
      pos,
      jnp.ones_like(x, bool),
      cache=cache,
      cache_index=prompt_slots + step - 1,
      taps=_taps(weights),
    )
    logits = model.logits(hidden[:, 0])
    tok = jnp.where(done, -1, _pick(logits, row_keys, step, sampling, mode))
    out = out.at[:, i].set(tok)
    return i + 1, cache, tok, done | _is_eos(tok, eos_ids), out

  out = jnp.full((b, width), -1, jnp.int32)
  carry = (jnp.int32(0), state['cache'], state['tok'], state['done'], out)
  _, cache, tok, done, out = jax.lax.while_loop(cond, body, carry)
  return {**state, 'cache': cache, 'tok': tok, 'done': done}, out


def _batch_axis(path) -> int:
  """Batch axis of a leaf: 1 inside a stacked KV cache (L b ...), else 0."""
  names = [getattr(k, 'key', None) for k in path]
  for i, name in enumerate(names[:-1]):
    if name == 'cache' and names[i + 1] == 'layers':
      stacked = i + 2 < len(path) and isinstance(
        path[i + 2], jax.tree_util.DictKey
      )
      return 1 if stacked else 0
  return 0


@jax.jit
def gather_rows(tree: PyTree, index: Array) -> PyTree:
  """Rows `index` of every array in `tree` (batch axis 0; axis 1 in a stacked
  KV cache under a 'cache' key)."""
  return jax.tree_util.tree_map_with_path(
    lambda p, x: jnp.take(x, index, axis=_batch_axis(p)), tree
  )


@functools.partial(jax.jit, static_argnames=('mdef',))
def next_logprobs(
  mdef: lora_lib.ModelDef,
  base: PyTree,
  lora: PyTree,
  tokens: Array,
  valid: Array,
) -> Array:
  """log p(next token | prompt) for left-padded prompts: fp32 [B, V]."""
  TRACE_COUNTS['logprobs', tokens.shape[0], tokens.shape[1]] += 1
  model = lora_lib.merge(mdef, base, lora)
  hidden, _ = model.hidden_states(tokens, positions(valid), valid)
  return jax.nn.log_softmax(model.logits(hidden[:, -1]), axis=-1)


def _picked_log_probs(mdef, base, lora, weights, tokens, valid, index):
  model = lora_lib.merge(mdef, base, lora)
  hidden, _ = model.hidden_states(
    tokens, positions(valid), valid, taps=_taps(weights)
  )
  picked = jnp.take_along_axis(hidden, index[..., None], axis=1)
  return jax.nn.log_softmax(model.logits(picked), axis=-1)


@functools.partial(jax.jit, static_argnames=('mdef',))
def scored_log_probs(
  mdef: lora_lib.ModelDef,
  base: PyTree,
  lora: PyTree,
  tokens: Array,
  valid: Array,
  index: Array,
) -> Array:
  """log p(next token) at positions `index` (b, m) of one adapter: b m v."""
  TRACE_COUNTS[('scored', *tokens.shape, index.shape[1])] += 1
  return _picked_log_probs(mdef, base, lora, None, tokens, valid, index)


@functools.partial(jax.jit, static_argnames=('mdef',))
def kl_sums(
  mdef: lora_lib.ModelDef,
  base: PyTree,
  reference: Array,
  loras: PyTree,
  tokens: Array,
  valid: Array,
  index: Array,
  weight: Array,
) -> Array:
  """Σ_m weight · KL(reference ‖ adapter j) of next-token distributions.

  Args:
    reference: fp32 [b, m, v] log-probs of the reference adapter at the
      scored positions (`scored_log_probs`, computed once per batch).
    loras: n stacked trees (leaves (n, ...)).
    tokens, valid: [b, T] left-padded prompt + right-padded continuation.
    index: int32 [b, m] positions whose next-token distribution is scored.
    weight: float32 [b, m] (0 for padding).

  Returns:
    fp32 [n, b]: per adapter and row, the weighted KL sum in nats.
  """
  n = jax.tree.leaves(loras)[0].shape[0]
  TRACE_COUNTS[('kl', n, *tokens.shape, index.shape[1])] += 1
  b = tokens.shape[0]
  tile = lambda x: jnp.tile(x, (n,) + (1,) * (x.ndim - 1))
  one_hot = jnp.repeat(jnp.eye(n, dtype=jnp.float32), b, axis=0)  # (n·b) n
  var = _picked_log_probs(
    mdef, base, loras, one_hot, tile(tokens), tile(valid), tile(index)
  ).reshape(n, *reference.shape)
  kl = jnp.sum(jnp.exp(reference) * (reference - var), axis=-1)  # n b m
  return jnp.sum(kl * weight, axis=-1)
