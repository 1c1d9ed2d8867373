"""Token losses: the SUMMED assistant-token cross-entropy of the method.

Convention (docs/CONTRIBUTING_NOTES.md): loss_mask[b, t] = 1 iff tokens[b, t] is
an assistant token to be predicted; it is predicted from position t - 1.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gatoms_jax.core.data.tokenize import round_up
from gatoms_jax.core.models import lora as lora_lib

Array = jax.Array
PyTree = Any


def shifted_targets(tokens: Array, loss_mask: Array) -> tuple[Array, Array]:
  """Targets and weights aligned with logits positions 0..T-2."""
  return tokens[:, 1:], loss_mask[:, 1:].astype(jnp.float32)


def token_nll(logits: Array, targets: Array) -> Array:
  """-log p(target) for logits (..., v) in fp32."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]


def summed_ce(logits: Array, tokens: Array, loss_mask: Array) -> Array:
  """Σ_t mask[t] · CE(logits[t-1], tokens[t]) per row: (b,)."""
  targets, weights = shifted_targets(tokens, loss_mask)
  nll = token_nll(logits[:, :-1], targets)
  return jnp.sum(nll * weights, axis=-1)


# ---------------------------------------------------------------------------
# Batched and per-document losses (fine-tuning, curvature, gradients).


def loss_positions(
  loss_mask: np.ndarray, multiple: int = 16, width: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
  """Positions p whose logits predict a loss token (mask[p + 1] = 1).

  Args:
    loss_mask: (b, t) float mask on predicted tokens.
    multiple: the gathered width m is rounded up to this (fewer compiles).
    width: the gathered width m itself (≥ the fullest row's loss positions);
      None: from `multiple`.

  Returns:
    (index int32[b, m], weight float32[b, m]); padding entries have weight 0.
  """
  shifted = np.asarray(loss_mask)[:, 1:] > 0
  counts = shifted.sum(axis=1)
  if width is None:
    width = round_up(max(int(counts.max(initial=0)), 1), multiple)
    width = min(width, max(loss_mask.shape[1] - 1, 1))
  elif width < counts.max(initial=0):
    raise ValueError(f'width {width} < {int(counts.max())} loss positions')
  index = np.zeros((loss_mask.shape[0], width), np.int32)
  weight = np.zeros((loss_mask.shape[0], width), np.float32)
  for row in range(loss_mask.shape[0]):
    pos = np.nonzero(shifted[row])[0]
    index[row, : len(pos)] = pos
    weight[row, : len(pos)] = 1.0
  return index, weight


def batch_loss(lora, mdef, base, tokens, index, weight) -> Array:
  """Σ over docs of the summed CE, batched (for fine-tuning and checks)."""
  model = lora_lib.merge(mdef, base, lora)
  hidden, _ = model.hidden_states(tokens)
  gathered = jnp.take_along_axis(hidden, index[..., None], axis=1)  # b m d
  logits = model.logits(gathered)
  targets = jnp.take_along_axis(tokens, index + 1, axis=1)
  return jnp.sum(token_nll(logits, targets) * weight)


def summed_nll(logits: Array, targets: Array, weight: Array) -> Array:
  """Σ weight · (logsumexp(logits) − logits[target]), in fp32.

  The same value as `losses.token_nll`, without materialising log_softmax
  over the vocabulary: ~25 % less LM-head time on CPU.
  """
  logits = logits.astype(jnp.float32)
  lse = jax.nn.logsumexp(logits, axis=-1)
  picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  return jnp.sum((lse - picked) * weight)


def doc_loss(
  lora: PyTree,
  mdef: lora_lib.ModelDef,
  base: PyTree,
  tokens: Array,
  index: Array,
  targets: Array,
  weight: Array,
) -> Array:
  """Summed CE of one right-padded document.

  Args:
    lora, mdef, base: the split model.
    tokens: int32[t] input tokens.
    index: int32[m] positions whose logits are scored.
    targets: int32[m] the tokens they predict.
    weight: float32[m] 1 for real loss positions, 0 for padding.
  """
  model = lora_lib.merge(mdef, base, lora)
  hidden, _ = model.hidden_states(tokens[None])
  logits = model.logits(hidden[0, index])  # m v
  return summed_nll(logits, targets, weight)
