"""Token losses: the SUMMED assistant-token cross-entropy of the method.

Convention (docs/CONTRIBUTING_NOTES.md): loss_mask[b, t] = 1 iff tokens[b, t] is
an assistant token to be predicted; it is predicted from position t - 1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


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
