"""Per-document LoRA gradients (the method's raw material, paper step 1).

g_i = ∇_θ Σ_t CE(token_t) over the assistant tokens of document i, θ = the
LoRA tree, flattened in the canonical leaf order (`lora.flatten`). Two
formulations compute the same rows (tests check both against one document at
a time at its own length):

  'vmap'  `jax.vmap(jax.grad(doc_loss))` over a padded slab, one document per
          row: the canonical, obviously-correct formulation (vmap over a
          jitted grad).
  'taps'  (default) ONE forward/backward of the summed loss of the whole slab
          with zero probes added to every lora_a/lora_b output
          (`LoraTaps(probes, record=True)`): ∂L/∂probe is the per-token output
          gradient s and, since documents do not interact, the per-document
          gradients are exact per-document sums of outer products,
            ∂L_i/∂A = Σ_{t∈i} x_t s_aᵀ   (einsum 'bti,btr->bir'),
            ∂L_i/∂B = Σ_{t∈i} h_t s_bᵀ   (einsum 'btr,bto->bro'),
          with x, h the recorded lora_a/lora_b inputs.

Why 'taps' is the default (measured on a 2-core AVX-512 CPU, SmolLM2-135M,
fp32; experiments/bench_gradients.py). vmap(grad) does NOT run per-example
matmuls: XLA folds the vmapped axis into the rows of every frozen-weight
matmul and both formulations compile to the same (B·T)×d dots (checked in the
optimised HLO). Its apparent bad scaling with B came from memory and a shared
CPU: the backward keeps ~1.8 MB of activations per token, i.e. ~1.8 GB of
temporaries at B·T = 1024 that XLA:CPU allocates per call and the kernel
faults in page by page (~0.45 M minor faults per GB, ~20 % of the CPU time),
and wall-clock on a loaded 2-core machine swings by 2x. In CPU-seconds per
useful FLOP, vmap(grad) is flat from B = 4 to 8 (~105 GFLOP per CPU-second)
and ~20 % worse at B = 16; 'taps' with this module's planning does ~125.
What makes the difference:
  * slabs of R·T ≈ `tokens_per_slab` tokens, documents sorted by length, each
    slab padded only to its longest document (multiple of `bucket_multiple`);
  * several same-shape slabs per jitted call (`lax.map`, empty slabs skipped
    by `lax.cond`): the temporaries are faulted in once per call, not once
    per slab;
  * only needed positions: a document is cut after its last loss-predicting
    position, and the LM head (v = 49,152) runs only on loss positions,
    gathered per device-local row group (per row for vmap), with a
    logsumexp NLL (no log_softmax materialised over the vocabulary);
  * frozen weights are not differentiated: forward + input-gradient
    backward + tiny LoRA outer products.
Optional packing (`pack=True`, taps only) puts several documents in a row
(`segment_ids` keep their attention apart, positions restart at 0). It is
off by default: attention is dense over the whole row, and with typical chat
lengths (e.g. 46–121 tokens) rows cannot be filled well, so it was slower
than length buckets on both the benchmark and the generated mixture.
What remains on CPU is XLA:CPU itself: the matmuls run at ~60–70 % of the
machine's square-matmul rate at these shapes (512×576×1536), and attention,
norms, SiLU and the softmaxes are memory-bound; no
XLA:CPU option tried (fast math, Eigen/oneDNN/XNNPACK dots, YNNPACK
element-wise fusions) helped. compute_dtype='bfloat16' runs the dense,
LoRA and LM-head matmuls as bf16×bf16 dots with fp32 accumulation
(core/models/mixed.py; a plain bf16 `x @ w` is compiled by XLA:CPU as an fp32
dot plus converts). Where the time goes (experiments/profile_gradients.py,
32 documents of 64–256 tokens, layers unrolled, alone on a 2-core AMX CPU):
fp32 20.4 s, of XLA:CPU op time 76% dots, 12% layout copies, 12% other
element-wise; bf16 13.3 s (1.5× faster), 58% dots, 21% dtype converts (XLA:CPU
runs bf16 element-wise work as f32 with converts around it: a bf16
norm/SiLU-like chain measured 4× slower than the same chain in f32), 18%
copies. In both, the two cores are busy only ~2/3 of the wall time (XLA:CPU
runs many small ops on one thread). The default stays fp32: bf16 rows differ
from fp32 by a median 5% (relative L2), and the demo's findings have not been
re-measured in bf16; bf16 compiles ~2.4× longer (41 vs 17 s for 4 shapes).

Rows are streamed into a `GradientStore` chunk by chunk; a killed extraction
resumes from the last committed chunk.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Iterator, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from tqdm import tqdm

from gatoms_jax.core import sharding
from gatoms_jax.core.data import batching
from gatoms_jax.core.data.tokenize import round_up as _round_up
from gatoms_jax.core.losses import (
  doc_loss,
  summed_nll as _summed_nll,
)
from gatoms_jax.core.models import lora as lora_lib
from gatoms_jax.core.models.transformer import LoraTaps

Array = jax.Array
PyTree = Any

METHODS = ('taps', 'vmap')
NO_TARGET_REASON = 'no assistant tokens'


# ---------------------------------------------------------------------------
# Host-side planning: documents -> slabs of fixed shape.


class Slab(NamedTuple):
  """R rows of T positions holding whole documents (host numpy arrays).

  The loss positions are gathered per group of rows: G groups of R / G
  consecutive rows (G = R for vmap, which differentiates rows one by one; G =
  the number of devices for taps, so the gather stays on each device), M
  slots per group, so the LM head runs on loss positions only.

  Attributes:
    tokens: int32[R, T] input tokens, 0 on padding.
    positions: int32[R, T] position of each token inside its document.
    segments: int32[R, T] 0 on padding, j + 1 for the row's j-th document.
    index: int32[G, M] positions, in the group's flattened (R / G · T)
      tokens, whose logits are scored.
    targets: int32[G, M] the tokens they predict.
    weight: float32[G, M] 1 for real loss positions, 0 for padding.
    doc_index: int32[R, k] document of each (row, slot); -1 if empty.
  """

  tokens: np.ndarray
  positions: np.ndarray
  segments: np.ndarray
  index: np.ndarray
  targets: np.ndarray
  weight: np.ndarray
  doc_index: np.ndarray

  @property
  def shape(self) -> tuple[int, ...]:
    """(R, T, G, M, k): slabs of one shape share a compiled function."""
    return self.tokens.shape + self.index.shape + self.doc_index.shape[-1:]

  @property
  def n_docs(self) -> int:
    return int((self.doc_index >= 0).sum())


@dataclasses.dataclass(frozen=True)
class _Doc:
  """What the gradient needs of one document."""

  inputs: np.ndarray  # int32[n]: tokens up to the last loss-predicting one
  loss_pos: np.ndarray  # int32[c]: positions whose logits are scored
  targets: np.ndarray  # int32[c]

  @property
  def n_in(self) -> int:
    return len(self.inputs)

  @property
  def n_loss(self) -> int:
    return len(self.loss_pos)


def _prepare(tokens: np.ndarray, loss_mask: np.ndarray) -> Optional[_Doc]:
  """Cuts a document after its last loss-predicting position (None: no loss)."""
  tokens = np.asarray(tokens, np.int32)
  target_pos = np.nonzero(np.asarray(loss_mask)[1:] > 0)[0] + 1
  if not len(target_pos):
    return None
  n_in = int(target_pos[-1])  # position n_in - 1 predicts the last target
  return _Doc(
    inputs=tokens[:n_in],
    loss_pos=(target_pos - 1).astype(np.int32),
    targets=tokens[target_pos],
  )


def _best_fit_decreasing(
  docs: Sequence[_Doc], widths: Sequence[int], max_docs: int
) -> list[tuple[int, list[int]]]:
  """Packs documents into rows; returns (width class, document list) per row.

  Longest documents first; each goes into the open row with the least room
  that still fits it, else opens a row of the narrowest width class that
  holds it. Rows that cannot take even the shortest document are closed, so
  the scan stays short.
  """
  order = sorted(range(len(docs)), key=lambda i: -docs[i].n_in)
  min_len = min(d.n_in for d in docs)
  rows: list[tuple[int, list[int]]] = []
  room: list[int] = []
  open_rows: list[int] = []
  for i in order:
    n = docs[i].n_in
    best = None
    for pos, r in enumerate(open_rows):
      if n <= room[r] and (best is None or room[r] < room[open_rows[best]]):
        best = pos
    if best is None:
      c = next(c for c, w in enumerate(widths) if w >= n)
      rows.append((c, [i]))
      room.append(widths[c] - n)
      open_rows.append(len(rows) - 1)
      best = len(open_rows) - 1
    else:
      r = open_rows[best]
      rows[r][1].append(i)
      room[r] -= n
    r = open_rows[best]
    if room[r] < min_len or len(rows[r][1]) >= max_docs:
      open_rows.pop(best)
  return rows


def _fill_slab(
  docs: Sequence[_Doc],
  doc_ids: Sequence[int],
  rows: Sequence[Sequence[int]],
  shape: tuple[int, int, int, int, int],
) -> Slab:
  """Lays out rows of documents (indices into `docs`) as one Slab."""
  n_rows, width, groups, loss_width, slots = shape
  per_group = n_rows // groups
  tokens = np.zeros((n_rows, width), np.int32)
  positions = np.zeros((n_rows, width), np.int32)
  segments = np.zeros((n_rows, width), np.int32)
  index = np.zeros((groups, loss_width), np.int32)
  targets = np.zeros((groups, loss_width), np.int32)
  weight = np.zeros((groups, loss_width), np.float32)
  doc_index = np.full((n_rows, slots), -1, np.int32)
  filled = np.zeros((groups,), np.int64)
  for r, row in enumerate(rows):
    g, start = r // per_group, 0
    offset = (r % per_group) * width  # of the row in its group's tokens
    for j, i in enumerate(row):
      d = docs[i]
      end = start + d.n_in
      tokens[r, start:end] = d.inputs
      positions[r, start:end] = np.arange(d.n_in)
      segments[r, start:end] = j + 1
      at = slice(filled[g], filled[g] + d.n_loss)
      index[g, at] = offset + start + d.loss_pos
      targets[g, at] = d.targets
      weight[g, at] = 1.0
      filled[g] += d.n_loss
      doc_index[r, j] = doc_ids[i]
      start = end
  return Slab(tokens, positions, segments, index, targets, weight, doc_index)


def _loss_width(
  docs: Sequence[_Doc], rows: Sequence[Sequence[int]], per_group: int
) -> int:
  """Most loss positions of any group of `per_group` consecutive rows."""
  counts = [sum(docs[i].n_loss for i in row) for row in rows]
  return max(
    sum(counts[g : g + per_group]) for g in range(0, len(counts), per_group)
  )


def plan_slabs(
  docs: Sequence[_Doc],
  doc_ids: Sequence[int],
  *,
  tokens_per_slab: int,
  bucket_multiple: int = 16,
  row_multiple: int = 1,
  max_rows: Optional[int] = None,
  group_rows: bool = True,
  pack: bool = False,
  pack_width: int = 0,
  max_docs_per_row: int = 8,
  ladder_steps: int = 2,
) -> list[Slab]:
  """Lays documents out in slabs of few distinct shapes.

  Without packing (the default): one document per row; documents sorted
  longest first, each slab takes the next R = tokens_per_slab / T documents,
  T = the first one's length on the `batching` ladder (a multiple of
  `bucket_multiple`), so padding is the length spread inside a slab plus the
  rounding (the final slab has a power of two ≥ the rows it needs). With packing: rows of a width class hold several
  documents (best fit decreasing); slabs of a class are balanced. Slabs of
  one (R, T) share one shape, hence one compilation; the loss width M is the
  fullest row group's.

  Args:
    docs: prepared documents (`_prepare`), all with at least one loss token.
    doc_ids: the id (index into the caller's list) of each document.
    tokens_per_slab: R·T target: the size of one forward/backward.
    bucket_multiple: widths are multiples of this (fewer width classes: fewer
      compilations, more padding).
    row_multiple: R is a multiple of this (the number of devices).
    max_rows: optional cap on R.
    group_rows: gather loss positions per group of rows (G = row_multiple)
      rather than per row (G = R, what vmap needs).
    pack: several documents per row (best fit, longest first, into rows of
      a width class); attention then runs densely over the whole row.
    pack_width: packing: minimum row width (0: the longest document's width
      class), so short documents can share rows.
    max_docs_per_row: packing cap on documents per row (k; the per-document
      sums cost ∝ k).
    ladder_steps: unpacked widths per doubling of the length
      (`batching.ladder_length`): more steps, less padding, more shapes.

  Returns:
    The slabs; every document appears in exactly one slot.
  """
  if not docs:
    return []
  n_in = np.array([d.n_in for d in docs])

  def rows_for(width):
    rows = max(1, tokens_per_slab // width)
    if max_rows:
      rows = min(rows, max_rows)
    return _round_up(rows, row_multiple)

  parts: dict[tuple[int, int], list[list[list[int]]]] = {}
  if pack:
    widths = sorted({_round_up(n, bucket_multiple) for n in n_in.tolist()})
    floor = _round_up(max(pack_width, 1), bucket_multiple)
    widths = sorted({max(w, floor) for w in widths})
    packed = _best_fit_decreasing(docs, widths, max_docs_per_row)
    for c, width in enumerate(widths):
      group = [r for cc, r in packed if cc == c]
      if not group:
        continue
      # Balanced slabs, so the last one is not mostly empty rows.
      n_slabs = -(-len(group) // rows_for(width))
      per_slab = _round_up(-(-len(group) // n_slabs), row_multiple)
      parts[(per_slab, width)] = [
        group[s : s + per_slab] for s in range(0, len(group), per_slab)
      ]
  else:
    # Longest first; each slab takes as many of the next documents as fit
    # its token budget at the width of its longest one.
    order = np.argsort(-n_in, kind='stable').tolist()
    start = 0
    while start < len(order):
      # Widths on the `batching` ladder: a bounded set of shapes whatever
      # the lengths (at most ~2 per doubling of the length).
      width = batching.bucket_length(
        int(n_in[order[start]]),
        min_length=bucket_multiple,
        multiple=bucket_multiple,
        steps=ladder_steps,
      )
      rows = rows_for(width)
      # The final slab of a width: fewer rows (a power of two), so few empty
      # rows for one more shape at most per width.
      left = len(order) - start
      rows = min(rows, _round_up(1 << (left - 1).bit_length(), row_multiple))
      part = [[i] for i in order[start : start + rows]]
      parts.setdefault((rows, width), []).append(part)
      start += rows
  slabs = []
  for (rows, width), group in parts.items():
    groups = row_multiple if group_rows else rows
    loss_width = max(_loss_width(docs, p, rows // groups) for p in group)
    slots = max(len(r) for p in group for r in p)
    shape = (rows, width, groups, _round_up(loss_width, 8), slots)
    slabs += [_fill_slab(docs, doc_ids, p, shape) for p in group]
  return slabs


def _empty_like(slab: Slab) -> Slab:
  return Slab(
    *[np.zeros_like(x) for x in slab[:-1]], np.full_like(slab[-1], -1)
  )


def group_calls(slabs: Sequence[Slab], slabs_per_call: int) -> list[Slab]:
  """Stacks same-shape slabs into calls of at most `slabs_per_call`.

  A short last call is filled with empty slabs, which the jitted function
  skips (`lax.cond`), so they cost no compute.
  """
  by_shape: dict[tuple, list[Slab]] = {}
  for s in slabs:
    by_shape.setdefault(s.shape, []).append(s)
  calls = []
  for group in by_shape.values():
    # Balanced: one call size per shape (one compilation), few empty slabs.
    n_calls = -(-len(group) // slabs_per_call)
    size = -(-len(group) // n_calls)
    for c in range(0, len(group), size):
      part = list(group[c : c + size])
      part += [_empty_like(part[0])] * (size - len(part))
      calls.append(Slab(*[np.stack(x) for x in zip(*part)]))
  return calls


# ---------------------------------------------------------------------------
# Jitted per-slab gradients.


def _taps_backward(lora, mdef, base, slab: Slab, packed: bool):
  """One forward/backward of a slab's summed loss with zero probes on every
  LoRA output: (per-token output gradients s, recorded LoRA inputs)."""
  tokens, positions, segments, index, targets, weight, _ = slab
  model = lora_lib.merge(mdef, base, lora)
  n_rows, width = tokens.shape
  dtype = jax.tree.leaves(lora)[0].dtype
  probes = {
    module: {
      'a': jnp.zeros((n_rows, width, a.shape[1]), dtype),
      'b': jnp.zeros((n_rows, width, b.shape[1]), dtype),
    }
    for module, a, b in lora_lib.iter_module_pairs(lora)
  }

  def loss_fn(probes):
    taps = LoraTaps(probes=probes, record=True)
    hidden, _ = model.hidden_states(
      tokens,
      positions,
      segments > 0,
      taps=taps,
      segment_ids=segments if packed else None,
    )
    groups = index.shape[0]
    flat = hidden.reshape(groups, -1, hidden.shape[-1])  # G (R/G·T) d
    gathered = jnp.take_along_axis(flat, index[..., None], axis=1)
    logits = model.logits(gathered)  # G M v, fp32
    return _summed_nll(logits, targets, weight), taps.record

  return jax.grad(loss_fn, has_aux=True)(probes)


def _per_doc_rows(lora, slab: Slab, out_grads, record) -> Array:
  """Per-document rows (R, k, d): per-document sums of x sᵀ per LoRA matrix."""
  segments = slab.segments
  dtype = jax.tree.leaves(lora)[0].dtype
  n_slots = slab.doc_index.shape[1]
  # Per-document sums over a row's tokens: a one-hot (R, T, k) over the
  # row's documents; without packing k = 1 and padding already has s = 0.
  if n_slots > 1:
    onehot = (segments[..., None] == jnp.arange(1, n_slots + 1)).astype(dtype)

  def per_doc(inp, out):
    if n_slots == 1:
      g = jnp.einsum(
        'rti,rto->rio', inp, out, preferred_element_type=jnp.float32
      )
      return g[:, None]
    if inp.shape[-1] <= out.shape[-1]:  # put the one-hot on the narrow side
      inp = jnp.einsum('rti,rtk->rtki', inp, onehot)
      return jnp.einsum(
        'rtki,rto->rkio', inp, out, preferred_element_type=jnp.float32
      )
    out = jnp.einsum('rto,rtk->rtko', out, onehot)
    return jnp.einsum(
      'rti,rtko->rkio', inp, out, preferred_element_type=jnp.float32
    )

  leaves = []
  for path, _ in lora_lib.lora_leaves(lora):
    module, which = path.rsplit('.', 1)
    side = which[-1]  # lora_a -> 'a'
    inp = record[module][f'{side}_in']
    leaves.append(per_doc(inp, out_grads[module][side]))
  tree = jax.tree_util.tree_unflatten(
    jax.tree_util.tree_structure(lora), leaves
  )
  return lora_lib.flatten(tree)  # R k d


def _slab_taps(lora, mdef, base, slab: Slab, packed: bool) -> Array:
  """Per-document rows (R, k, d) of one slab, by probes on LoRA outputs."""
  out_grads, record = _taps_backward(lora, mdef, base, slab, packed)
  return _per_doc_rows(lora, slab, out_grads, record)


def _slab_vmap(lora, mdef, base, slab: Slab) -> Array:
  """Per-document rows (R, 1, d) of one unpacked slab, by vmap(grad)."""
  grad_fn = jax.vmap(jax.grad(doc_loss), in_axes=(None, None, None, 0, 0, 0, 0))
  grads = grad_fn(
    lora, mdef, base, slab.tokens, slab.index, slab.targets, slab.weight
  )
  return lora_lib.flatten(grads).astype(jnp.float32)[:, None]


def _call_fn(lora, mdef, base, call: Slab, method: str, packed: bool) -> Array:
  """Rows (S, R, k, d) for S stacked slabs, one slab at a time."""
  one = _slab_taps if method == 'taps' else _slab_vmap
  kw = {'packed': packed} if method == 'taps' else {}
  n_rows, n_slots = call.doc_index.shape[1:]
  dim = lora_lib.num_params(lora)

  def body(slab):
    return jax.lax.cond(
      jnp.any(slab.weight > 0),
      lambda s: one(lora, mdef, base, s, **kw),
      lambda s: jnp.zeros((n_rows, n_slots, dim), jnp.float32),
      slab,
    )

  if call.tokens.shape[0] == 1:  # no loop: one slab per call
    return one(lora, mdef, base, jax.tree.map(lambda x: x[0], call), **kw)[None]
  return jax.lax.map(body, call)


def _slab_rows(mesh: jax.sharding.Mesh, ndim: int):
  """Slab arrays are (S, R, ...): rows sharded, slabs looped over."""
  return jax.sharding.NamedSharding(
    mesh, jax.P(None, sharding.DATA_AXIS, *([None] * (ndim - 2)))
  )


@functools.lru_cache(maxsize=None)
def _jitted_call(
  method: str,
  packed: bool,
  mesh: jax.sharding.Mesh,
  compiler_options: tuple = (),
):
  """One jitted `_call_fn` per setting, shared by extractors (and their
  compilations: lora and base are arguments, mdef a static one)."""
  rep = sharding.replicated(mesh)
  rows = functools.partial(_slab_rows, mesh)
  return jax.jit(
    functools.partial(_call_fn, method=method, packed=packed),
    static_argnums=(1,),
    in_shardings=(rep, rep, Slab(*[rows(3)] * 7)),
    out_shardings=rows(4),
    compiler_options=dict(compiler_options) or None,
  )


# ---------------------------------------------------------------------------
# The extractor.


class GradientExtractor:
  """Jitted, sharded per-document gradients for one (model, adapter).

  Args:
    mdef, base, lora: from `gatoms_jax.core.models.lora.split`.
    mesh: a mesh with a "data" axis (default: all devices); slab rows are
      sharded over it.
    compute_dtype: 'float32' (default) or 'bfloat16' (accelerators; rows are
      still accumulated and returned in float32).
    method: 'taps' (default, see the module docstring) or 'vmap'.
    tokens_per_slab: R·T per slab: the size of one forward/backward.
    slabs_per_call: same-shape slabs per jitted call (they reuse one set of
      temporaries, which XLA:CPU allocates, and the kernel faults in, per
      call).
    bucket_multiple: widths are padded to a multiple of this.
    batch_size: optional cap on rows (documents, unpacked) per slab.
    pack: several documents per row (taps only; see `plan_slabs`).
    max_docs_per_row: packing cap on documents per row.
    pack_width: packing: minimum row width.
    compiler_options: XLA options for the jitted call (e.g. {'xla_cpu_...'}).
    ladder_steps: padded widths per doubling of the length (see `plan_slabs`).
  """

  def __init__(
    self,
    mdef: lora_lib.ModelDef,
    base: PyTree,
    lora: PyTree,
    *,
    mesh: Optional[jax.sharding.Mesh] = None,
    compute_dtype: str = 'float32',
    method: str = 'taps',
    tokens_per_slab: int = 512,
    slabs_per_call: int = 8,
    bucket_multiple: int = 16,
    batch_size: Optional[int] = None,
    pack: bool = False,
    max_docs_per_row: int = 8,
    pack_width: int = 0,
    compiler_options: Optional[dict] = None,
    ladder_steps: int = 2,
  ):
    if method not in METHODS:
      raise ValueError(f'method must be one of {METHODS}, got {method!r}')
    if pack and method != 'taps':
      raise ValueError('packing needs method="taps" (vmap differentiates rows)')
    self.mdef = mdef
    self.method = method
    self.pack = pack
    self.tokens_per_slab = tokens_per_slab
    self.slabs_per_call = max(1, slabs_per_call)
    self.bucket_multiple = bucket_multiple
    self.ladder_steps = ladder_steps
    self.batch_size = batch_size
    self.max_docs_per_row = max_docs_per_row
    self.pack_width = pack_width
    self.mesh = mesh or sharding.make_mesh()
    self.n_devices = sharding.axis_size(self.mesh, sharding.DATA_AXIS)
    self.compute_dtype = jnp.dtype(compute_dtype)
    cast = lambda t: jax.tree.map(lambda x: x.astype(self.compute_dtype), t)
    rep = sharding.replicated(self.mesh)
    self.base = jax.device_put(cast(base), rep)
    self.lora = jax.device_put(cast(lora), rep)
    self.dim = lora_lib.num_params(lora)
    self._fn = _jitted_call(
      method, pack, self.mesh, tuple(sorted((compiler_options or {}).items()))
    )
    self._shapes_seen: set = set()

  # -- planning ------------------------------------------------------------

  def plan(self, docs: Sequence[Any]) -> tuple[list[Slab], list[int]]:
    """Lays out documents (anything with .tokens and .loss_mask) in calls.

    Returns:
      (calls, skipped): stacked slabs whose doc_index points into `docs`,
      and the indices of documents without any loss position.
    """
    prepared, ids, skipped = [], [], []
    for i, doc in enumerate(docs):
      d = _prepare(doc.tokens, doc.loss_mask)
      if d is None:
        skipped.append(i)
      else:
        prepared.append(d)
        ids.append(i)
    slabs = plan_slabs(
      prepared,
      ids,
      tokens_per_slab=self.tokens_per_slab,
      bucket_multiple=self.bucket_multiple,
      row_multiple=self.n_devices,
      max_rows=self.batch_size,
      group_rows=self.method == 'taps',
      pack=self.pack,
      pack_width=self.pack_width,
      max_docs_per_row=self.max_docs_per_row,
      ladder_steps=self.ladder_steps,
    )
    return group_calls(slabs, self.slabs_per_call), skipped

  # -- running -------------------------------------------------------------

  def dispatch(self, call: Slab) -> Array:
    """Starts one planned call; returns its (S, R, k, d) rows (async)."""
    self._shapes_seen.add(call.tokens.shape + call.index.shape[1:])
    if jax.process_count() > 1:
      # jit places host arrays itself only within one process; across
      # processes each input must already be a global jax.Array.
      call = Slab(
        *[jax.device_put(x, _slab_rows(self.mesh, x.ndim)) for x in call]
      )
    return self._fn(self.lora, self.mdef, self.base, call)

  @staticmethod
  def collect(call: Slab, out: Array) -> tuple[np.ndarray, np.ndarray]:
    """(doc_index int[n], rows float32[n, d]) of a dispatched call."""
    keep = call.doc_index >= 0
    return call.doc_index[keep], sharding.to_host(out)[keep]

  def run(self, call: Slab) -> tuple[np.ndarray, np.ndarray]:
    """(doc_index int[n], rows float32[n, d]) of one planned call."""
    return self.collect(call, self.dispatch(call))

  def run_calls(
    self, calls: Sequence[Slab]
  ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """`run` over calls, keeping the next call in flight while the caller
    copies and stores the rows of the previous one."""
    previous = None
    for call in calls:
      out = self.dispatch(call)
      if previous is not None:
        yield self.collect(*previous)
      previous = (call, out)
    if previous is not None:
      yield self.collect(*previous)

  def iter_gradients(
    self, docs: Sequence[Any]
  ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yields (doc_index, rows) per call; docs without loss are left out."""
    calls, _ = self.plan(docs)
    yield from self.run_calls(calls)

  def gradients(self, docs: Sequence[Any]) -> np.ndarray:
    """All rows (n, d) in the order of `docs` (zero rows for no-loss docs)."""
    out = np.zeros((len(docs), self.dim), np.float32)
    for index, rows in self.iter_gradients(docs):
      out[index] = rows
    return out

  def __call__(self, tokens: np.ndarray, loss_mask: np.ndarray) -> np.ndarray:
    """Gradient rows (b, d) float32 for a padded batch (b, t).

    Rows of documents without any loss token (e.g. padding rows) are zero.
    """
    docs = [
      _Row(t, m) for t, m in zip(np.asarray(tokens), np.asarray(loss_mask))
    ]
    return self.gradients(docs)

  @property
  def n_compiled_shapes(self) -> int:
    return len(self._shapes_seen)


class _Row(NamedTuple):
  tokens: np.ndarray
  loss_mask: np.ndarray


def extract_to_store(
  extractor: GradientExtractor,
  tokenized: Sequence[Any],
  store: Any,
  *,
  chunk_size: int,
  batch_size: Optional[int] = None,
  bucket_multiple: Optional[int] = None,
  progress: bool = True,
) -> dict:
  """Streams per-document gradients of `tokenized` docs into `store`.

  Resumable: documents already in the store (or recorded as skipped) are not
  recomputed; a chunk is committed atomically, so after a SIGKILL at most the
  rows of one unfinished chunk are recomputed. Documents without any loss
  position are recorded as skipped (never stored as a zero row). Peak memory
  is one chunk of rows plus one call, independent of the number of documents.

  Args:
    extractor: a `GradientExtractor` (its planning settings apply).
    tokenized: `TokenizedDoc`s (gatoms_jax.core.data.tokenize): .doc_id, .tokens,
      .loss_mask.
    store: an open `GradientStore` whose layout matches the adapter.
    chunk_size: rows per committed chunk.
    batch_size: overrides the extractor's rows per unpacked slab.
    bucket_multiple: overrides the extractor's width multiple.
    progress: show a tqdm bar.

  Returns:
    Counts (n_docs, n_resumed, n_skipped, n_computed) and timings.
  """
  if batch_size is not None:
    extractor.batch_size = batch_size
  if bucket_multiple is not None:
    extractor.bucket_multiple = bucket_multiple
  done = store.completed_ids()
  pending = [doc for doc in tokenized if doc.doc_id not in done]
  stats = {
    'n_docs': len(tokenized),
    'n_resumed': len(tokenized) - len(pending),
  }
  calls, skipped = extractor.plan(pending)
  for i in skipped:
    store.record_skipped(pending[i].doc_id, NO_TARGET_REASON)
  stats['n_skipped'] = len(skipped)
  n_todo = len(pending) - len(skipped)
  logging.info(
    'extracting %d gradients (%d already stored, %d without loss tokens) in '
    '%d calls',
    n_todo,
    stats['n_resumed'],
    len(skipped),
    len(calls),
  )
  start = time.perf_counter()
  n_tokens = 0
  bar = tqdm(total=n_todo, desc='gradients', unit='doc', disable=not progress)
  with store.writer(chunk_size) as writer:
    for index, rows in extractor.run_calls(calls):
      writer.add([pending[i].doc_id for i in index], rows)
      n_tokens += int(sum(pending[i].tokens.shape[0] for i in index))
      bar.update(len(index))
  bar.close()
  seconds = time.perf_counter() - start
  stats.update(
    n_computed=n_todo,
    n_calls=len(calls),
    seconds=seconds,
    docs_per_s=n_todo / seconds if seconds > 0 else 0.0,
    tokens_per_s=n_tokens / seconds if seconds > 0 else 0.0,
  )
  return stats
