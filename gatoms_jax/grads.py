"""Per-document LoRA gradients (the method's raw material, paper step 1).

g_i = ∇_θ Σ_t CE(token_t) over the assistant tokens of document i, θ = the
LoRA tree. Computed as `jax.vmap(jax.grad(doc_loss))` over a padded,
length-bucketed batch, jitted once per bucket shape, with the batch axis
sharded over the mesh axis "data" (gatoms_jax/sharding.py). Two savings keep
the work close to the useful FLOPs:
  * the LM head (v = 49,152 for SmolLM2) runs only on the positions whose next
    token carries loss (gathered, padded to a bucket), not on every position;
  * batches come from length buckets, so padding stays small.
Rows are streamed into a `GradientStore` chunk by chunk; a killed extraction
resumes from the last committed chunk.
"""

from __future__ import annotations

import time
from typing import Any, Iterator, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from tqdm import tqdm

from gatoms_jax import sharding
from gatoms_jax.losses import token_nll
from gatoms_jax.models import lora as lora_lib

Array = jax.Array
PyTree = Any


def loss_positions(
  loss_mask: np.ndarray, multiple: int = 16
) -> tuple[np.ndarray, np.ndarray]:
  """Positions p whose logits predict a loss token (mask[p + 1] = 1).

  Args:
    loss_mask: (b, t) float mask on predicted tokens.
    multiple: the gathered width m is rounded up to this (fewer compiles).

  Returns:
    (index int32[b, m], weight float32[b, m]); padding entries have weight 0.
  """
  shifted = np.asarray(loss_mask)[:, 1:] > 0
  counts = shifted.sum(axis=1)
  width = max(1, int(-(-max(int(counts.max(initial=0)), 1) // multiple) * multiple))
  width = min(width, max(loss_mask.shape[1] - 1, 1))
  index = np.zeros((loss_mask.shape[0], width), np.int32)
  weight = np.zeros((loss_mask.shape[0], width), np.float32)
  for row in range(loss_mask.shape[0]):
    pos = np.nonzero(shifted[row])[0]
    index[row, : len(pos)] = pos
    weight[row, : len(pos)] = 1.0
  return index, weight


def doc_loss(
  lora: PyTree,
  mdef: lora_lib.ModelDef,
  base: PyTree,
  tokens: Array,
  index: Array,
  weight: Array,
) -> Array:
  """Summed CE of one document (t,) over its gathered loss positions (m,)."""
  model = lora_lib.merge(mdef, base, lora)
  hidden, _ = model.hidden_states(tokens[None])
  logits = model.logits(hidden[0, index])  # m v
  targets = tokens[index + 1]
  return jnp.sum(token_nll(logits, targets) * weight)


def batch_loss(lora, mdef, base, tokens, index, weight) -> Array:
  """Σ over docs of `doc_loss`, batched (for fine-tuning and checks)."""
  model = lora_lib.merge(mdef, base, lora)
  hidden, _ = model.hidden_states(tokens)
  gathered = jnp.take_along_axis(hidden, index[..., None], axis=1)  # b m d
  logits = model.logits(gathered)
  targets = jnp.take_along_axis(tokens, index + 1, axis=1)
  return jnp.sum(token_nll(logits, targets) * weight)


def _per_example(lora, mdef, base, tokens, index, weight, compute_dtype):
  cast = lambda t: jax.tree.map(lambda x: x.astype(compute_dtype), t)
  grad_fn = jax.grad(doc_loss)
  grads = jax.vmap(grad_fn, in_axes=(None, None, None, 0, 0, 0))(
    cast(lora), mdef, cast(base), tokens, index, weight
  )
  # (b, d) rows in the canonical LoRA leaf order, always in fp32.
  return lora_lib.flatten(grads).astype(jnp.float32)


class GradientExtractor:
  """Jitted, sharded per-example gradients for one (model, adapter).

  Args:
    mdef, base, lora: from `gatoms_jax.models.lora.split`.
    mesh: a mesh with a "data" axis (default: all devices).
    compute_dtype: 'float32' (default) or 'bfloat16' (accelerators).
  """

  def __init__(
    self,
    mdef: lora_lib.ModelDef,
    base: PyTree,
    lora: PyTree,
    *,
    mesh: Optional[jax.sharding.Mesh] = None,
    compute_dtype: str = 'float32',
  ):
    self.mdef = mdef
    self.mesh = mesh or sharding.make_mesh()
    rep = sharding.replicated(self.mesh)
    self.base = jax.device_put(base, rep)
    self.lora = jax.device_put(lora, rep)
    rows = sharding.row_sharding(self.mesh, 2)
    self._fn = jax.jit(
      _per_example,
      static_argnums=(1, 6),
      in_shardings=(rep, rep, rows, rows, rows),
      out_shardings=rows,
    )
    self._compute_dtype = jnp.dtype(compute_dtype)
    self.n_devices = sharding.axis_size(self.mesh, sharding.DATA_AXIS)

  def __call__(self, tokens: np.ndarray, loss_mask: np.ndarray) -> np.ndarray:
    """Gradient rows (b, d) float32 for a padded batch (b, t)."""
    index, weight = loss_positions(loss_mask)
    n = tokens.shape[0]
    arrays = [sharding.pad_rows(x, self.n_devices)[0] for x in (tokens, index, weight)]
    out = self._fn(
      self.lora, self.mdef, self.base, *arrays, self._compute_dtype
    )
    return np.asarray(out)[:n]


def extract_to_store(
  extractor: GradientExtractor,
  tokenized: Sequence[Any],
  store: Any,
  *,
  batch_size: int,
  chunk_size: int,
  bucket_multiple: int = 16,
  progress: bool = True,
) -> dict:
  """Streams per-document gradients of `tokenized` docs into `store`.

  Resumable: documents already in the store (or recorded as skipped) are not
  recomputed; a chunk is committed atomically, so after a SIGKILL at most the
  rows of one unfinished chunk are recomputed. Peak memory is one chunk of
  rows plus one batch, independent of the number of documents.

  Args:
    extractor: a `GradientExtractor`.
    tokenized: `TokenizedDoc`s (gatoms_jax.data.tokenize).
    store: an open `GradientStore` whose layout matches the adapter.
    batch_size: documents per jitted call.
    chunk_size: rows per committed chunk.
    bucket_multiple: sequence lengths are padded up to a multiple of this.
    progress: show a tqdm bar.

  Returns:
    Timing and count statistics.
  """
  from gatoms_jax.data.tokenize import make_batches

  done = store.completed_ids()
  pending = []
  for doc in tokenized:
    if doc.doc_id in done:
      continue
    if doc.n_target == 0:
      store.record_skipped(doc.doc_id, 'no assistant tokens')
      continue
    pending.append(doc)
  stats = {'n_docs': len(tokenized), 'n_resumed': len(tokenized) - len(pending)}
  if not pending:
    stats.update(n_computed=0, seconds=0.0)
    return stats
  logging.info('extracting %d gradients (%d already stored)', len(pending), stats['n_resumed'])
  start = time.perf_counter()
  n_tokens = 0
  bar = tqdm(total=len(pending), desc='gradients', unit='doc', disable=not progress)
  with store.writer(chunk_size) as writer:
    for batch in make_batches(pending, batch_size, bucket_multiple):
      rows = extractor(batch.tokens, batch.loss_mask)
      keep = batch.doc_index >= 0
      ids = [pending[i].doc_id for i in batch.doc_index[keep]]
      writer.add(ids, rows[keep])
      n_tokens += int(sum(pending[i].length for i in batch.doc_index[keep]))
      bar.update(len(ids))
  bar.close()
  seconds = time.perf_counter() - start
  stats.update(
    n_computed=len(pending),
    seconds=seconds,
    docs_per_s=len(pending) / seconds,
    tokens_per_s=n_tokens / seconds,
  )
  return stats


def iter_gradients(
  extractor: GradientExtractor, batches: Iterator[Any]
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """(doc_index, rows) per batch, padding rows dropped (no store)."""
  for batch in batches:
    rows = extractor(batch.tokens, batch.loss_mask)
    keep = batch.doc_index >= 0
    yield batch.doc_index[keep], rows[keep]
