"""One pass over the data for per-document gradients AND Kronecker factors.

The taps formulation of `gradients` already records, in one forward/backward
of a slab, every LoRA matrix's inputs a_t and per-token output gradients s_t
(the probes' gradients). Those are exactly what the K-FAC factors of
`curvature` sum, A_m = Σ_t w_t a aᵀ and S_m = Σ_t w_t s sᵀ, when

  * the Fisher is the EMPIRICAL one: s is the gradient of the data labels'
    loss, the same loss whose per-document gradients go to the store (the
    true Fisher needs s from sampled labels: a second backward, not done
    here);
  * the token scope is 'loss' (w_t = 1 on positions whose logits are scored):
    the gradient pass cuts a document after its last scored position, so
    tokens after it (which token_scope 'all' counts) are never run;
  * every training document enters the factors (curvature.max_docs = 0);
  * both passes compute at the same precision (gradients.compute_dtype ==
    model.dtype).

Then `FusedExtractor` gives the stored rows and the factor sums of the
separate passes from one forward/backward per slab: mathematically equal,
numerically equal up to fp32 summation order (other slab shapes than the
factor pass's batches). The EK-FAC eigenvalue correction then streams the
store (`curvature.correct_eigenvalues`), so the seed pipeline's three passes
over the data (covariance, correction, gradient loop) become one.

Single process only: the sums are accumulated on the one host that runs
every slab; multi-process runs fall back to the separate factor pass.
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from gatoms_jax.core import sharding
from gatoms_jax.core.models import lora as lora_lib
from gatoms_jax.method import gradients as grads
from gatoms_jax.method import curvature
from gatoms_jax.method.curvature import Factors

Array = jax.Array
PyTree = Any


def fused_applies(
  *,
  enabled: bool,
  fisher: str,
  token_scope: str,
  max_docs: int,
  n_docs: int,
  compute_dtype: str,
  model_dtype: str,
  process_count: Optional[int] = None,
) -> tuple[bool, str]:
  """Whether the fused pass gives exactly the separate passes' factors.

  Returns:
    (applies, reason): the reason names the first condition that fails.
  """
  if process_count is None:
    process_count = jax.process_count()
  checks = (
    (enabled, 'curvature.fused is off'),
    (fisher == 'empirical', f'fisher={fisher!r} needs sampled labels'),
    (token_scope == 'loss', f'token_scope={token_scope!r} is not "loss"'),
    (not max_docs or max_docs >= n_docs, 'curvature.max_docs subsamples'),
    (
      jnp.dtype(compute_dtype) == jnp.dtype(model_dtype),
      f'gradients.compute_dtype {compute_dtype} != model.dtype {model_dtype}',
    ),
    (process_count == 1, f'{process_count} processes (single-process only)'),
  )
  for ok, reason in checks:
    if not ok:
      return False, reason
  return True, 'fused: empirical Fisher, loss scope, all documents'


def _scored_mask(slab: grads.Slab) -> Array:
  """(R, T) float32: 1 at the positions whose logits are scored."""
  n_rows, width = slab.tokens.shape
  groups = slab.index.shape[0]
  flat = jnp.zeros((groups, n_rows // groups * width), jnp.float32)
  rows = jnp.arange(groups)[:, None]
  # Padding slots have index 0 and weight 0: they add nothing.
  flat = flat.at[rows, slab.index].add(slab.weight)
  return flat.reshape(n_rows, width)


def _slab_fused(lora, mdef, base, slab: grads.Slab, packed: bool):
  """Rows (R, k, d), factor sums {leaf: (A_sum, S_sum)} and token count."""
  out_grads, record = grads._taps_backward(lora, mdef, base, slab, packed)
  rows = grads._per_doc_rows(lora, slab, out_grads, record)
  mask = _scored_mask(slab)
  sums = {}
  for module, _, _ in lora_lib.iter_module_pairs(lora):
    for side in ('a', 'b'):
      # As `curvature._factor_batch`: fp32 inputs, weights w_t ∈ {0, 1}.
      inp = record[module][f'{side}_in'].astype(jnp.float32)
      out = out_grads[module][side].astype(jnp.float32)
      inp_w = inp * mask[..., None]
      out_w = out * mask[..., None]
      sums[f'{module}.lora_{side}'] = (
        jnp.einsum('bti,btj->ij', inp_w, inp),
        jnp.einsum('bto,btp->op', out_w, out),
      )
  return rows, sums, jnp.sum(mask)


def _zero_sums(lora) -> dict:
  out = {}
  for module, a, b in lora_lib.iter_module_pairs(lora):
    i, r = a.shape
    o = b.shape[1]
    out[f'{module}.lora_a'] = (jnp.zeros((i, i)), jnp.zeros((r, r)))
    out[f'{module}.lora_b'] = (jnp.zeros((r, r)), jnp.zeros((o, o)))
  return out


def _call_fused(lora, mdef, base, call: grads.Slab, packed: bool):
  """(rows (S, R, k, d), summed factor sums, token count) of S slabs."""
  n_rows, n_slots = call.doc_index.shape[1:]
  dim = lora_lib.num_params(lora)
  one = functools.partial(_slab_fused, packed=packed)
  if call.tokens.shape[0] == 1:
    rows, sums, count = one(
      lora, mdef, base, jax.tree.map(lambda x: x[0], call)
    )
    return rows[None], sums, count

  def body(carry, slab):
    sums, count = carry
    rows, s, c = jax.lax.cond(
      jnp.any(slab.weight > 0),
      lambda sl: one(lora, mdef, base, sl),
      lambda sl: (
        jnp.zeros((n_rows, n_slots, dim), jnp.float32),
        _zero_sums(lora),
        jnp.zeros((), jnp.float32),
      ),
      slab,
    )
    return (jax.tree.map(jnp.add, sums, s), count + c), rows

  init = (_zero_sums(lora), jnp.zeros((), jnp.float32))
  (sums, count), rows = jax.lax.scan(body, init, call)
  return rows, sums, count


@functools.lru_cache(maxsize=None)
def _jitted_fused(packed: bool, mesh: jax.sharding.Mesh):
  rep = sharding.replicated(mesh)
  rows = functools.partial(grads._slab_rows, mesh)
  return jax.jit(
    functools.partial(_call_fused, packed=packed),
    static_argnums=(1,),
    in_shardings=(rep, rep, grads.Slab(*[rows(3)] * 7)),
    out_shardings=(rows(4), rep, rep),
  )


class FusedExtractor(grads.GradientExtractor):
  """A `GradientExtractor` (method 'taps') that also sums the empirical-
  Fisher Kronecker factors (token scope 'loss') of every slab it runs.

  Use it like a GradientExtractor (e.g. with `gradients.extract_to_store`),
  then `factors()` gives the `Factors` (covariances only) over every
  document it extracted.
  """

  def __init__(self, mdef, base, lora, **kwargs):
    if kwargs.get('method', 'taps') != 'taps':
      raise ValueError('the fused pass needs method="taps"')
    if jax.process_count() > 1:
      raise ValueError('the fused pass is single-process only')
    super().__init__(mdef, base, lora, **kwargs)
    self._fn = _jitted_fused(self.pack, self.mesh)
    self.sums = None
    self.count = 0.0
    self.n_docs = 0

  def collect(self, call: grads.Slab, out) -> tuple[np.ndarray, np.ndarray]:
    rows, sums, count = out
    self.sums = (
      sums if self.sums is None else jax.tree.map(jnp.add, self.sums, sums)
    )
    self.count += float(count)
    index, host_rows = super().collect(call, rows)
    self.n_docs += len(index)
    return index, host_rows

  def factors(self) -> Factors:
    """Mean factors A = Σ a aᵀ / n, S = Σ s sᵀ / n (empirical, loss scope)."""
    return curvature.factors_from_sums(
      self.sums,
      self.count,
      fisher='empirical',
      token_scope='loss',
      source='fused pass',
    )
