"""EK-FAC curvature for every LoRA matrix (paper step 2; George et al. 2018).

Every LoRA matrix is its own linear module m: lora_a maps x (i) → h (r) and
lora_b maps h (r) → o. In our (in, out) layout a per-document gradient is
G = Σ_t a_t s_tᵀ (i × o), with a_t the module input and s_t the gradient of the
loss w.r.t. the module output at token t. K-FAC approximates the Fisher of G
by A ⊗ S with

  A_m = E_t[a aᵀ]  (i × i),        S_m = E_t[s sᵀ]  (o × o),

expectations over tokens (the `token_scope`: the positions whose logits are
scored, or every non-padding position as kronfluence does). With
A = Q_A diag(λ_A) Q_Aᵀ and S = Q_S diag(λ_S) Q_Sᵀ the K-FAC eigenvalue of basis
entry (p, q) is λ_A[p]·λ_S[q]; EK-FAC replaces it by the corrected

  Λ_m[p, q] = E_i[(Q_Aᵀ G_i Q_S)[p, q]²]     (mean over documents).

Output gradients s come from zero "probes" added to each LoRA output (see
`LoraTaps`): the gradient w.r.t. a probe is s. Labels are either sampled from
the model (true Fisher, the usual EK-FAC default) or the data (empirical).

Sharding: the factor pass shards documents over mesh axis "data" and XLA
sums the per-device partial covariances; the eigensolver buckets factors by
shape, stacks each bucket and shards the stack over mesh axis "modules".
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from typing import Any, Iterable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from tqdm import tqdm

from gatoms_jax.core import sharding
from gatoms_jax.core.io import save_safetensors, write_json
from gatoms_jax.core.losses import token_nll
from gatoms_jax.core.models import lora as lora_lib
from gatoms_jax.core.models.transformer import LoraTaps

Array = jax.Array
PyTree = Any

FISHER_TYPES = ('true', 'empirical')
TOKEN_SCOPES = ('loss', 'all')


class CurvatureError(ValueError):
  """Curvature could not be computed; the message names the module."""


@dataclasses.dataclass
class Factors:
  """Kronecker factors and their eigendecomposition for every LoRA matrix.

  All dicts are keyed by the LoRA leaf path ('layers.0.self_attn.q_proj.lora_a').

  Attributes:
    a_cov: A_m (i × i), input covariance.
    s_cov: S_m (o × o), output-gradient covariance.
    n_tokens: tokens averaged over.
    q_a, lam_a, q_s, lam_s: eigenvectors (columns) and eigenvalues.
    corrected: Λ_m (i × o), EK-FAC eigenvalues, once corrected.
    n_corrected_docs: documents averaged over for Λ.
    fisher: 'true' or 'empirical'.
    token_scope: 'loss' or 'all'.
  """

  a_cov: dict
  s_cov: dict
  n_tokens: float
  fisher: str
  token_scope: str
  q_a: dict = dataclasses.field(default_factory=dict)
  lam_a: dict = dataclasses.field(default_factory=dict)
  q_s: dict = dataclasses.field(default_factory=dict)
  lam_s: dict = dataclasses.field(default_factory=dict)
  corrected: dict = dataclasses.field(default_factory=dict)
  n_corrected_docs: int = 0

  @property
  def modules(self) -> list[str]:
    return list(self.a_cov)

  def kfac_eigenvalues(self, module: str) -> np.ndarray:
    """λ_A ⊗ λ_S as an (i × o) float64 array."""
    # float64 so a ProjectionSpec's scales do not change when it is saved
    # (as float64) and loaded again.
    return np.outer(
      np.asarray(self.lam_a[module], np.float64),
      np.asarray(self.lam_s[module], np.float64),
    )

  def save(self, directory: str) -> None:
    """Writes factors.safetensors + factors.json (atomically)."""
    os.makedirs(directory, exist_ok=True)
    tensors = {}
    for name, table in (
      ('A', self.a_cov),
      ('S', self.s_cov),
      ('QA', self.q_a),
      ('lamA', self.lam_a),
      ('QS', self.q_s),
      ('lamS', self.lam_s),
      ('Lambda', self.corrected),
    ):
      for module, value in table.items():
        tensors[f'{module}/{name}'] = np.ascontiguousarray(value, np.float32)
    meta = {
      'n_tokens': float(self.n_tokens),
      'fisher': self.fisher,
      'token_scope': self.token_scope,
      'n_corrected_docs': int(self.n_corrected_docs),
      'modules': self.modules,
    }
    save_safetensors(os.path.join(directory, 'factors.safetensors'), tensors)
    write_json(os.path.join(directory, 'factors.json'), meta)

  @classmethod
  def load(cls, directory: str) -> 'Factors':
    from safetensors.numpy import load_file

    path = os.path.join(directory, 'factors.safetensors')
    if not os.path.exists(path):
      raise FileNotFoundError(f'No factors at {path}')
    with open(os.path.join(directory, 'factors.json')) as f:
      meta = json.load(f)
    tensors = load_file(path)
    tables = {n: {} for n in ('A', 'S', 'QA', 'lamA', 'QS', 'lamS', 'Lambda')}
    for key, value in tensors.items():
      module, name = key.rsplit('/', 1)
      tables[name][module] = value
    return cls(
      a_cov={m: tables['A'][m] for m in meta['modules']},
      s_cov={m: tables['S'][m] for m in meta['modules']},
      n_tokens=meta['n_tokens'],
      fisher=meta['fisher'],
      token_scope=meta['token_scope'],
      q_a=tables['QA'],
      lam_a=tables['lamA'],
      q_s=tables['QS'],
      lam_s=tables['lamS'],
      corrected=tables['Lambda'],
      n_corrected_docs=meta['n_corrected_docs'],
    )


# ---------------------------------------------------------------------------
# Factor pass.


def _zero_probes(mdef, lora, batch: int, length: int, dtype) -> dict:
  probes = {}
  for module, a, b in lora_lib.iter_module_pairs(lora):
    probes[module] = {
      'a': jnp.zeros((batch, length, a.shape[1]), dtype),
      'b': jnp.zeros((batch, length, b.shape[1]), dtype),
    }
  return probes


def scope_weights(
  loss_mask: np.ndarray, token_scope: str, valid: Optional[np.ndarray] = None
) -> np.ndarray:
  """Per-position weights of the factor averages, (b, t) float32.

  'loss': the positions whose logits are scored (loss_mask shifted left by
  one). 'all': every real token (`valid`; without it, every position up to
  and including the last loss token, since right padding can only follow
  it — real tokens after the last loss token are then missed).
  """
  loss_mask = np.asarray(loss_mask, np.float32)
  scored = np.zeros_like(loss_mask)
  scored[:, :-1] = loss_mask[:, 1:] > 0
  if token_scope == 'loss':
    return scored
  if valid is not None:
    return np.asarray(valid, np.float32)
  t = loss_mask.shape[1]
  # The last loss token itself is a real token (its input and output feed the
  # factors even though its own logits are not scored).
  last = np.max(np.where(loss_mask > 0, np.arange(t)[None], -1), axis=1)
  return (np.arange(t)[None] <= last[:, None]).astype(np.float32)


def _factor_batch(lora, mdef, base, tokens, index, weight, scope, key, fisher):
  """Per-batch sums Σ w_t a aᵀ and Σ w_t s sᵀ for every LoRA matrix.

  The LM head runs only on the gathered loss positions `index` (b, m), as in
  `losses.batch_loss`: logits elsewhere carry no loss.
  """
  b, t = tokens.shape
  probes = _zero_probes(mdef, lora, b, t, jnp.float32)

  def loss_fn(probes):
    taps = LoraTaps(probes=probes, record=True)
    model = lora_lib.merge(mdef, base, lora)
    hidden, _ = model.hidden_states(tokens, taps=taps)
    gathered = jnp.take_along_axis(hidden, index[..., None], axis=1)  # b m d
    logits = model.logits(gathered)
    if fisher == 'true':
      targets = jax.random.categorical(key, jax.lax.stop_gradient(logits))
    else:
      targets = jnp.take_along_axis(tokens, index + 1, axis=1)
    loss = jnp.sum(token_nll(logits, targets) * weight)
    return loss, taps.record

  out_grads, record = jax.grad(loss_fn, has_aux=True)(probes)
  sums = {}
  for module in probes:
    rec, g = record[module], out_grads[module]
    for side, inp, out in (
      ('a', rec['a_in'], g['a']),
      ('b', rec['b_in'], g['b']),
    ):
      leaf = f'{module}.lora_{side}'
      inp = inp.astype(jnp.float32) * jnp.sqrt(scope)[..., None]
      out = out.astype(jnp.float32) * jnp.sqrt(scope)[..., None]
      sums[leaf] = (
        jnp.einsum('bti,btj->ij', inp, inp),
        jnp.einsum('bto,btp->op', out, out),
      )
  return sums, jnp.sum(scope)


class FactorAccumulator:
  """optax-style (init / update / finalize) accumulation of (sum, count).

  Sums are kept in fp32 (not an EMA) so one pass gives exact means; the batch
  axis is sharded over mesh axis "data" and XLA all-reduces the partial sums.
  """

  def __init__(
    self,
    mdef,
    base,
    lora,
    *,
    fisher: str = 'true',
    token_scope: str = 'loss',
    mesh: Optional[jax.sharding.Mesh] = None,
    seed: int = 0,
  ):
    if fisher not in FISHER_TYPES:
      raise ValueError(f'fisher must be one of {FISHER_TYPES}, got {fisher!r}')
    if token_scope not in TOKEN_SCOPES:
      raise ValueError(f'token_scope must be one of {TOKEN_SCOPES}')
    self.mesh = mesh or sharding.make_mesh()
    self.mdef, self.fisher, self.token_scope = mdef, fisher, token_scope
    rep = sharding.replicated(self.mesh)
    rows = sharding.row_sharding(self.mesh, 2)
    self.base = jax.device_put(base, rep)
    self.lora = jax.device_put(lora, rep)
    self._step = jax.jit(
      _factor_batch,
      static_argnums=(1, 8),
      in_shardings=(rep, rep, rows, rows, rows, rows, rep),
      out_shardings=rep,
    )
    self._key = jax.random.key(seed)
    self.n_devices = sharding.axis_size(self.mesh, sharding.DATA_AXIS)
    self.sums = None
    self.count = 0.0
    self.n_batches = 0

  def update(
    self,
    tokens: np.ndarray,
    loss_mask: np.ndarray,
    valid: Optional[np.ndarray] = None,
  ) -> None:
    """Adds one batch; `valid` marks real tokens (for token_scope 'all')."""
    from gatoms_jax.core.losses import loss_positions

    scope = scope_weights(loss_mask, self.token_scope, valid)
    index, weight = loss_positions(loss_mask)
    pad = lambda x: sharding.shard_rows(x, self.mesh)[0]
    key = jax.random.fold_in(self._key, self.n_batches)
    sums, count = self._step(
      self.lora, self.mdef, self.base, pad(tokens), pad(index), pad(weight),
      pad(scope), key, self.fisher,
    )  # fmt: skip
    if self.sums is None:
      self.sums = sums
    else:
      self.sums = jax.tree.map(jnp.add, self.sums, sums)
    self.count += float(count)
    self.n_batches += 1

  def finalize(self) -> Factors:
    return factors_from_sums(
      self.sums,
      self.count,
      fisher=self.fisher,
      token_scope=self.token_scope,
      source='factor pass',
    )


def factors_from_sums(
  sums: Any, count: float, *, fisher: str, token_scope: str, source: str
) -> Factors:
  """Mean factors A = Σ a aᵀ / n, S = Σ s sᵀ / n from device-side sums.

  Args:
    sums: {leaf: (Σ a aᵀ, Σ s sᵀ)} (None when nothing was accumulated).
    count: n, the number of tokens summed.
    fisher, token_scope: how the sums were taken (recorded in the Factors).
    source: what accumulated them, for the error message.

  Raises:
    CurvatureError: when no token was accumulated.
  """
  if sums is None or count == 0:
    raise CurvatureError(f'No tokens were accumulated: empty {source}')
  a_cov, s_cov = {}, {}
  for leaf, (a_sum, s_sum) in sums.items():
    a_cov[leaf] = sharding.to_host(a_sum).astype(np.float64) / count
    s_cov[leaf] = sharding.to_host(s_sum).astype(np.float64) / count
  return Factors(
    a_cov=a_cov,
    s_cov=s_cov,
    n_tokens=count,
    fisher=fisher,
    token_scope=token_scope,
  )


def fit_factors(
  mdef,
  base,
  lora,
  batches: Iterable[Any],
  *,
  fisher: str = 'true',
  token_scope: str = 'loss',
  mesh=None,
  seed: int = 0,
  n_batches: Optional[int] = None,
  progress: bool = True,
) -> Factors:
  """Covariance pass over `batches` (objects with .tokens and .loss_mask).

  A batch may also carry `.valid` (real-token mask), used by token_scope
  'all'; without it see `scope_weights`.
  """
  acc = FactorAccumulator(
    mdef,
    base,
    lora,
    fisher=fisher,
    token_scope=token_scope,
    mesh=mesh,
    seed=seed,
  )
  for batch in tqdm(
    batches, total=n_batches, desc='factors', disable=not progress
  ):
    acc.update(batch.tokens, batch.loss_mask, getattr(batch, 'valid', None))
  return acc.finalize()


# ---------------------------------------------------------------------------
# Sharded eigensolver.


def safe_psd_eigh(matrix: Array) -> tuple[Array, Array]:
  """Symmetrised eigh with eigenvalues clipped at 0 (kfac-jax semantics).

  NaN/inf inputs give NaN outputs; callers check finiteness beforehand and
  name the module.
  """
  sym = 0.5 * (matrix + jnp.swapaxes(matrix, -1, -2))
  vals, vecs = jnp.linalg.eigh(sym)
  return jnp.maximum(vals, 0.0), vecs


@functools.lru_cache(maxsize=16)
def _eigh_fn(mesh: jax.sharding.Mesh):
  """The jitted, sharded stack eigensolver of a mesh (built once: a new
  jax.vmap object per call would miss the compilation cache)."""
  axis = mesh.axis_names[0]
  spec = NamedSharding(mesh, jax.P(axis, None, None))
  spec_vals = NamedSharding(mesh, jax.P(axis, None))
  solve = jax.jit(
    jax.vmap(safe_psd_eigh), in_shardings=spec, out_shardings=(spec_vals, spec)
  )
  return solve, spec


def batched_eigh(
  matrices: dict[str, np.ndarray], mesh: Optional[jax.sharding.Mesh] = None
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Eigendecomposes many symmetric PSD matrices, sharded over modules.

  Matrices are bucketed by size, each bucket stacked and padded with identity
  matrices to a multiple of the mesh size, and the stack axis is sharded over
  mesh axis "modules" (jax.jit with NamedSharding in and out). Bitwise-equal
  matrices are solved once and share the result: the A factors of lora_a on
  q_proj/k_proj/v_proj (or gate/up_proj) of one layer see the same input.

  Returns:
    name → (eigenvalues ascending, eigenvectors as columns).
  """
  mesh = mesh or sharding.make_mesh(sharding.MODULE_AXIS)
  axis = mesh.axis_names[0]
  n_dev = mesh.shape[axis]
  solve, spec = _eigh_fn(mesh)
  for name, m in matrices.items():
    if not np.all(np.isfinite(m)):
      raise CurvatureError(
        f'Kronecker factor of {name} has non-finite entries '
        f'({int(np.sum(~np.isfinite(m)))} of {m.size}); check the inputs/loss '
        'of this module (fp32 accumulation overflow or NaN activations)'
      )
  buckets: dict[int, list[str]] = {}
  same_as: dict[str, str] = {}  # duplicate name → the name that is solved
  seen: dict[tuple, list[str]] = {}
  for name, m in matrices.items():
    m32 = np.ascontiguousarray(m, np.float32)
    key = (m32.shape, hashlib.blake2b(m32.tobytes(), digest_size=16).digest())
    twin = next(
      (n for n in seen.get(key, ()) if np.array_equal(matrices[n], m)), None
    )
    if twin is not None:
      same_as[name] = twin
      continue
    seen.setdefault(key, []).append(name)
    buckets.setdefault(m.shape[0], []).append(name)
  out = {}
  for size, names in sorted(buckets.items()):
    stack = np.stack([np.asarray(matrices[n], np.float32) for n in names])
    pad = (-len(names)) % n_dev
    if pad:
      stack = np.concatenate(
        [
          stack,
          np.broadcast_to(np.eye(size, dtype=np.float32), (pad, size, size)),
        ]
      )
    vals, vecs = solve(jax.device_put(stack, spec))
    vals, vecs = sharding.to_host(vals), sharding.to_host(vecs)
    for k, name in enumerate(names):
      out[name] = (vals[k], vecs[k])
  for name, twin in same_as.items():
    out[name] = tuple(np.copy(x) for x in out[twin])
  return {name: out[name] for name in matrices}


def eigendecompose(factors: Factors, mesh=None) -> Factors:
  """Fills q_a, lam_a, q_s, lam_s of `factors` (sharded eigensolver)."""
  matrices = {}
  for leaf in factors.modules:
    matrices[f'{leaf}/A'] = factors.a_cov[leaf]
    matrices[f'{leaf}/S'] = factors.s_cov[leaf]
  solved = batched_eigh(matrices, mesh)
  for leaf in factors.modules:
    factors.lam_a[leaf], factors.q_a[leaf] = solved[f'{leaf}/A']
    factors.lam_s[leaf], factors.q_s[leaf] = solved[f'{leaf}/S']
  return factors


# ---------------------------------------------------------------------------
# Eigenvalue correction from stored per-document gradients.


def _rotate(rows: Array, layout, q_a: dict, q_s: dict) -> dict:
  """Per leaf: Q_Aᵀ G Q_S for each row G (n, i, o)."""
  out, offset = {}, 0
  for leaf in layout:
    i, o = leaf.shape
    g = rows[:, offset : offset + i * o].reshape(-1, i, o)
    offset += i * o
    out[leaf.path] = jnp.einsum(
      'ip,nio,oq->npq', q_a[leaf.path], g, q_s[leaf.path]
    )
  return out


def _square_sums(rows, q_a, q_s, *, layout):
  rotated = _rotate(rows, layout, q_a, q_s)
  return {k: jnp.sum(v * v, axis=0) for k, v in rotated.items()}


@functools.lru_cache(maxsize=16)
def _correction_fn(layout, mesh: jax.sharding.Mesh):
  """Jitted Σ_rows (Q_Aᵀ G Q_S)² for a layout and mesh, built once (a new
  lambda per call would recompile on every call)."""
  rep = sharding.replicated(mesh)
  return jax.jit(
    functools.partial(_square_sums, layout=layout),
    in_shardings=(sharding.row_sharding(mesh, 2), rep, rep),
    out_shardings=rep,
  )


def correct_eigenvalues(
  factors: Factors,
  chunks: Iterable[tuple[Sequence[str], np.ndarray]],
  layout,
  *,
  mesh=None,
  n_chunks: Optional[int] = None,
  progress: bool = True,
) -> Factors:
  """Λ_m = mean_i (Q_Aᵀ G_i Q_S)² streamed over chunks of gradient rows.

  Args:
    factors: eigendecomposed factors.
    chunks: iterator of (ids, rows n × d) — e.g. `GradientStore.iter_chunks`.
    layout: the rows' leaf layout (`GradientStore.layout`).
    mesh: rows are sharded over its "data" axis.
  """
  from gatoms_jax.core import store as store_lib

  mesh = mesh or sharding.make_mesh()
  rep = sharding.replicated(mesh)
  # Accept every layout form make_spec accepts ((path, shape) pairs, dicts).
  layout = store_lib.normalize_layout(layout)
  dim = store_lib.layout_dim(layout)
  q_a = jax.device_put(
    {k: jnp.asarray(v, jnp.float32) for k, v in factors.q_a.items()}, rep
  )
  q_s = jax.device_put(
    {k: jnp.asarray(v, jnp.float32) for k, v in factors.q_s.items()}, rep
  )
  fn = _correction_fn(layout, mesh)
  total, n = None, 0
  for ids, rows in tqdm(
    chunks, total=n_chunks, desc='eigenvalue correction', disable=not progress
  ):
    if np.ndim(rows) != 2 or np.shape(rows)[1] != dim or len(ids) != len(rows):
      raise CurvatureError(
        f'gradient chunk has shape {np.shape(rows)} for {len(ids)} ids; the '
        f'layout needs rows of width {dim}'
      )
    padded, _ = sharding.shard_rows(np.asarray(rows, np.float32), mesh)
    sums = fn(padded, q_a, q_s)
    total = sums if total is None else jax.tree.map(jnp.add, total, sums)
    n += len(ids)
  if n == 0:
    raise CurvatureError('No gradient rows to correct eigenvalues with')
  factors.corrected = {
    k: sharding.to_host(v).astype(np.float64) / n for k, v in total.items()
  }
  factors.n_corrected_docs = n
  return factors
