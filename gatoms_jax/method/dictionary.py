"""Sparse dictionary learning over projected gradients (the "atoms").

Minimises, with scikit-learn's scaling of α,

  ½‖X − A D‖²_F + α‖A‖₁   subject to ‖d_k‖₂ ≤ 1,

over the dictionary D (K×d, one atom per row) and the codes A (N×K), by
alternating a lasso coding step (`gatoms_jax.method.lasso`, Gram-form FISTA) with
block-coordinate descent over the atoms from the sufficient statistics
A_stat = Σ a aᵀ (K×K) and B_stat = Σ a xᵀ (K×d) (Mairal, Bach, Ponce & Sapiro
2010, "Online learning for matrix factorization and sparse coding", Alg. 2),
each atom projected onto the unit ball.

Two modes:

* 'full': every outer iteration codes all rows (warm-started from the previous
  codes), recomputes the statistics and runs a few BCD sweeps. X lives on the
  devices, rows sharded over the mesh axis "data"; codes are per shard and the
  statistics are `psum`-reduced, so any number of devices gives the same
  result as one (to fp32 rounding).
* 'minibatch': streams fixed-size chunks of rows (an array, a
  `np.load(mmap_mode='r')` memmap, or a callable returning an iterable of
  chunks), codes each chunk and updates the statistics with scikit-learn's
  forgetting factor (Mairal et al. §3.4) before one dictionary update per
  chunk. A forgetting factor rather than plain per-epoch sums: codes computed
  against an early, poor dictionary should fade instead of weighing as much as
  fresh ones until the end of the pass, and the dictionary moves after every
  chunk instead of once per pass (plain per-epoch sums with a fixed dictionary
  would just be 'full' mode re-reading the data for every update, which is the
  I/O the streaming mode exists to save).

Atoms nobody uses are re-sampled from rows that the current dictionary
reconstructs poorly (sampled ∝ squared residual, Gumbel top-k, deterministic
by seed). Every random choice derives from `seed`.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Any, Callable, Iterable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm
from absl import logging
from jax import lax

from gatoms_jax.core import io as io_lib
from gatoms_jax.core.data.tokenize import round_up
from gatoms_jax.method import lasso
from gatoms_jax.core import sharding

Array = jax.Array
PyTree = Any

MODES = ('full', 'minibatch')
INITS = ('svd', 'data')

# A BCD update divides by A_stat[k, k]; below this the atom is left alone
# (an unused atom: re-sampling, not BCD, handles it).
_BCD_EPS = 1e-12
# Mini-batch mode only: atoms whose per-row-normalised A_stat[k, k] falls below
# this are re-sampled; scikit-learn's / SPAMS' threshold, meant for rows of
# roughly unit norm.
_ONLINE_DEAD = 1e-6
# Randomized-SVD oversampling (Halko, Martinsson & Tropp 2011).
_SVD_OVERSAMPLE = 10

sparse_encode = lasso.sparse_encode
objective = lasso.objective


@dataclasses.dataclass
class DictionaryResult:
  """What `learn_dictionary` returns.

  Attributes:
    dictionary: (K, d) float32 atoms, ‖d_k‖ ≤ 1.
    codes: (N, K) float32 lasso codes of every row for `dictionary` (one final
      warm-started coder pass after the last update).
    history: one dict per outer iteration (full) / epoch (minibatch) with
      iter, seconds (wall time since the start, compile excluded), objective,
      mean_nnz, coder_iters, n_resampled. In 'full' mode `objective` is
      exactly that of the (dictionary, codes) pair at that point; in
      'minibatch' mode it is the online estimate (each row scored with the
      dictionary it was coded against, before that chunk's update).
    compile_seconds: JIT/AOT compile time, excluded from `seconds`.
    objective: objective of the returned (dictionary, codes) pair.
    seconds: total wall time, compile excluded, final coding pass included.
  """

  dictionary: np.ndarray
  codes: np.ndarray
  history: list[dict]
  compile_seconds: float
  objective: float
  seconds: float

  def save(self, directory: str) -> None:
    """Writes dictionary.npy, codes.npy and dictionary.json (atomically)."""
    io_lib.save_npy(os.path.join(directory, 'dictionary.npy'), self.dictionary)
    io_lib.save_npy(os.path.join(directory, 'codes.npy'), self.codes)
    io_lib.write_json(
      os.path.join(directory, 'dictionary.json'),
      {
        'history': self.history,
        'compile_seconds': self.compile_seconds,
        'objective': self.objective,
        'seconds': self.seconds,
      },
    )

  @classmethod
  def load(cls, directory: str, mmap: bool = False) -> 'DictionaryResult':
    """Reads what `save` wrote (`mmap`: codes memory-mapped)."""
    meta = io_lib.read_json(os.path.join(directory, 'dictionary.json'))
    return cls(
      dictionary=np.load(os.path.join(directory, 'dictionary.npy')),
      codes=np.load(
        os.path.join(directory, 'codes.npy'), mmap_mode='r' if mmap else None
      ),
      history=meta['history'],
      compile_seconds=meta['compile_seconds'],
      objective=meta['objective'],
      seconds=meta['seconds'],
    )


# ----------------------------------------------------------------------------
# Pure building blocks.


def bcd_update(
  D: Array, a_stat: Array, b_stat: Array, *, sweeps: int = 1, block: int = 64
) -> Array:
  """Block-coordinate descent over atoms (Mairal et al. 2010, Alg. 2).

  For each atom k in turn: d_k ← Π(d_k + (b_k − Σ_j A_kj d_j) / A_kk), Π the
  projection onto the unit ball. Atoms are visited in blocks of `block`: the
  contribution of the atoms outside a block is one (block×K)·(K×d) matmul,
  and only the in-block part is sequential, which keeps the exact sequential
  update order while doing the K²·d flops as matrix products.

  Args:
    D: (K, d) atoms.
    a_stat: (K, K) Σ a aᵀ.
    b_stat: (K, d) Σ a xᵀ.
    sweeps: passes over all atoms.
    block: atoms per block (a speed knob; the result does not depend on it
      beyond rounding).

  Returns:
    The updated (K, d) atoms.
  """
  k, _ = D.shape
  b = max(1, min(block, k))
  n_blocks = -(-k // b)
  pad = n_blocks * b - k
  if pad:  # zero atoms with zero statistics are skipped by the update
    D = jnp.pad(D, ((0, pad), (0, 0)))
    a_stat = jnp.pad(a_stat, ((0, pad), (0, pad)))
    b_stat = jnp.pad(b_stat, ((0, pad), (0, 0)))

  def block_step(i, D):
    s = (i % n_blocks) * b
    d_s = lax.dynamic_slice_in_dim(D, s, b, 0)
    a_rows = lax.dynamic_slice_in_dim(a_stat, s, b, 0)
    a_ss = lax.dynamic_slice_in_dim(a_rows, s, b, 1)
    # e_k = b_k − Σ_{j ∉ block} A_kj d_j, fixed while the block is updated.
    e = lax.dynamic_slice_in_dim(b_stat, s, b, 0) - a_rows @ D + a_ss @ d_s

    def atom_step(j, d_s):
      akk = a_ss[j, j]
      used = akk > _BCD_EPS
      u = d_s[j] + (e[j] - a_ss[j] @ d_s) / jnp.where(used, akk, 1.0)
      u = u / jnp.maximum(jnp.linalg.norm(u), 1.0)
      u = jnp.where(used, u, d_s[j])
      return lax.dynamic_update_slice_in_dim(d_s, u[None], j, 0)

    d_s = lax.fori_loop(0, b, atom_step, d_s)
    return lax.dynamic_update_slice_in_dim(D, d_s, s, 0)

  D = lax.fori_loop(0, sweeps * n_blocks, block_step, D)
  return D[:k]


def objective_from_stats(
  xx: Array, D: Array, a_stat: Array, b_stat: Array, l1: Array, alpha: float
) -> Array:
  """½‖X − A D‖² + α‖A‖₁ from ‖X‖², A_stat = AᵀA, B_stat = AᵀX and ‖A‖₁."""
  fit = xx - 2.0 * jnp.vdot(D, b_stat) + jnp.vdot(a_stat, D @ D.T)
  return 0.5 * fit + alpha * l1


def _code_and_stats(x, a0, d, gram, lip, alpha, *, coder, max_iter, tol):
  """Per-shard body: codes, iterations and psum-reduced statistics."""
  axis = sharding.DATA_AXIS
  c = x @ d.T
  # No momentum restart here: in the short (learn_coder_max_iter) warm-started
  # coding steps it was measured to cost time without lowering the objective
  # reached per outer iteration; it pays off when coding to convergence.
  a, n_it = lasso.lasso_gram(
    c,
    gram,
    alpha,
    init=a0,
    lipschitz=lip,
    method=coder,
    max_iter=max_iter,
    tol=tol,
    restart=False,
    axis_name=axis,
  )
  nz = (a != 0).astype(a.dtype)
  stats = dict(
    a_stat=lax.psum(a.T @ a, axis),
    b_stat=lax.psum(a.T @ x, axis),
    l1=lax.psum(jnp.sum(jnp.abs(a)), axis),
    nnz=lax.psum(jnp.sum(nz), axis),
    usage=lax.psum(jnp.sum(nz, axis=0), axis),
  )
  # Squared residual of every row, ‖x‖² − 2 a·c + a G aᵀ (no N×d residual).
  resid = (
    jnp.sum(x * x, axis=1)
    - 2.0 * jnp.sum(a * c, axis=1)
    + jnp.sum((a @ gram) * a, axis=1)
  )
  return a, n_it, stats, jnp.maximum(resid, 0.0)


def _sharded_code_and_stats(mesh, **kw):
  rows = jax.P(sharding.DATA_AXIS, None)
  rep = jax.P()
  return jax.shard_map(
    functools.partial(_code_and_stats, **kw),
    mesh=mesh,
    in_specs=(rows, rows, rep, rep, rep, rep),
    out_specs=(rows, rep, rep, jax.P(sharding.DATA_AXIS)),
  )


def _gather_rows(mesh, x, idx):
  """x[idx] for row-sharded x and replicated idx, as a replicated array."""
  axis = sharding.DATA_AXIS

  def local(x, idx):
    n_loc = x.shape[0]
    li = idx - lax.axis_index(axis) * n_loc
    ok = (li >= 0) & (li < n_loc)
    rows = jnp.take(x, jnp.clip(li, 0, n_loc - 1), axis=0)
    return lax.psum(jnp.where(ok[:, None], rows, 0.0), axis)

  return jax.shard_map(
    local,
    mesh=mesh,
    in_specs=(jax.P(axis, None), jax.P()),
    out_specs=jax.P(),
  )(x, idx)


def _resample_dead(mesh, D, dead, x, resid, key):
  """Replaces dead atoms by poorly reconstructed rows (∝ residual energy)."""
  n = resid.shape[0]
  k = min(D.shape[0], n)
  # Gumbel top-k = sampling k rows without replacement with p ∝ resid.
  g = jax.random.gumbel(key, (n,), resid.dtype)
  score = jnp.where(resid > 0, jnp.log(jnp.maximum(resid, 1e-30)) + g, -jnp.inf)
  top, idx = lax.top_k(score, k)
  rows = _gather_rows(mesh, x, idx)
  norms = jnp.linalg.norm(rows, axis=1)
  valid = (norms > 0) & (top > -jnp.inf)
  j = jnp.clip(jnp.cumsum(dead) - 1, 0, k - 1)
  new = rows[j] / jnp.where(valid[j], norms[j], 1.0)[:, None]
  return jnp.where((dead & valid[j])[:, None], new, D)


def _maybe_resample(mesh, D, dead, x, resid, key):
  return lax.cond(
    jnp.any(dead),
    lambda: _resample_dead(mesh, D, dead, x, resid, key),
    lambda: D,
  )


# ----------------------------------------------------------------------------
# Jitted steps (one compile per mesh / static settings / shapes).


@functools.lru_cache(maxsize=16)
def _full_step_fn(mesh, coder, max_iter, tol, sweeps, block):
  """(D, A, X, ‖X‖², α, seed, it) -> (D, A, obj, nnz, coder iters, n_dead)."""
  code = _sharded_code_and_stats(mesh, coder=coder, max_iter=max_iter, tol=tol)

  def step(d, a0, x, xx, alpha, seed, it):
    gram = d @ d.T
    lip = lasso.lipschitz_constant(gram)
    a, n_it, st, resid = code(x, a0, d, gram, lip, alpha)
    dead = st['usage'] == 0
    key = jax.random.fold_in(jax.random.key(seed), it)
    d = _maybe_resample(mesh, d, dead, x, resid, key)
    d = bcd_update(d, st['a_stat'], st['b_stat'], sweeps=sweeps, block=block)
    obj = objective_from_stats(
      xx, d, st['a_stat'], st['b_stat'], st['l1'], alpha
    )
    return d, a, obj, st['nnz'], n_it, jnp.sum(dead)

  rep, rows = sharding.replicated(mesh), sharding.row_sharding(mesh, 2)
  return jax.jit(
    step,
    in_shardings=(rep, rows, rows, rep, rep, rep, rep),
    out_shardings=(rep, rows, rep, rep, rep, rep),
    donate_argnums=(1,),
  )


@functools.lru_cache(maxsize=16)
def _online_step_fn(mesh, coder, max_iter, tol, sweeps, block):
  """(D, A_stat, B_stat, X_b, n_b, t, α, seed) -> (D, A_stat, B_stat, ...)."""
  code = _sharded_code_and_stats(mesh, coder=coder, max_iter=max_iter, tol=tol)

  def step(d, a_stat, b_stat, x, n_b, t, alpha, seed):
    gram = d @ d.T
    a0 = jnp.zeros((x.shape[0], d.shape[0]), x.dtype)
    lip = lasso.lipschitz_constant(gram)
    _, n_it, st, resid = code(x, a0, d, gram, lip, alpha)
    batch_obj = 0.5 * jnp.sum(resid) + alpha * st['l1']
    # scikit-learn's schedule (MiniBatchDictionaryLearning._update_inner_stats):
    # a running mean for the first n_b steps, then a slowly forgetting one.
    nb = n_b.astype(x.dtype)
    tf = t.astype(x.dtype)
    theta = jnp.where(t < n_b - 1, (tf + 1) * nb, nb * nb + tf + 1 - nb)
    beta = (theta + 1 - nb) / (theta + 1)
    a_stat = beta * a_stat + st['a_stat'] / nb
    b_stat = beta * b_stat + st['b_stat'] / nb
    dead = jnp.diagonal(a_stat) < _ONLINE_DEAD
    key = jax.random.fold_in(jax.random.key(seed), t)
    d = _maybe_resample(mesh, d, dead, x, resid, key)
    # A re-sampled atom starts afresh: its stale statistics are dropped, which
    # also keeps this update's BCD (A_kk = 0 is skipped) from overwriting it.
    keep = jnp.logical_not(dead).astype(x.dtype)
    a_stat = a_stat * keep[:, None] * keep[None, :]
    b_stat = b_stat * keep[:, None]
    d = bcd_update(d, a_stat, b_stat, sweeps=sweeps, block=block)
    return d, a_stat, b_stat, batch_obj, st['nnz'], n_it, jnp.sum(dead)

  rep, rows = sharding.replicated(mesh), sharding.row_sharding(mesh, 2)
  return jax.jit(
    step,
    in_shardings=(rep, rep, rep, rows, rep, rep, rep, rep),
    out_shardings=(rep,) * 7,
  )


@functools.lru_cache(maxsize=16)
def _svd_fn(mesh, rank, power_iters):
  """Randomized SVD (Rayleigh–Ritz on XᵀX) of row-sharded X: (S, Vᵀ)."""
  axis = sharding.DATA_AXIS

  def xtx_times(x, q):  # Xᵀ X q, reduced over shards
    return lax.psum(x.T @ (x @ q), axis)

  def gram_of(x, q):  # (X q)ᵀ (X q)
    y = x @ q
    return lax.psum(y.T @ y, axis)

  sm = functools.partial(
    jax.shard_map, mesh=mesh, in_specs=(jax.P(axis, None), jax.P())
  )
  xtx_times = sm(xtx_times, out_specs=jax.P())
  gram_of = sm(gram_of, out_specs=jax.P())

  def svd(x, seed):
    d = x.shape[1]
    omega = jax.random.normal(jax.random.key(seed), (d, rank), x.dtype)
    z = xtx_times(x, omega)
    for _ in range(power_iters):
      z = xtx_times(x, jnp.linalg.qr(z)[0])
    q = jnp.linalg.qr(z)[0]
    evals, w = jnp.linalg.eigh(gram_of(x, q))
    evals, w = evals[::-1], w[:, ::-1]
    return jnp.sqrt(jnp.maximum(evals, 0.0)), (q @ w).T

  return jax.jit(
    svd,
    in_shardings=(sharding.row_sharding(mesh, 2), sharding.replicated(mesh)),
    out_shardings=(sharding.replicated(mesh),) * 2,
  )


def _sum_squares_fn(mesh):
  return jax.jit(
    lambda x: jnp.sum(x * x),
    in_shardings=(sharding.row_sharding(mesh, 2),),
    out_shardings=sharding.replicated(mesh),
  )


# ----------------------------------------------------------------------------
# Host-side helpers.


def _spec(shape, mesh, rows: bool, dtype=jnp.float32):
  shard = (
    sharding.row_sharding(mesh, len(shape))
    if rows
    else sharding.replicated(mesh)
  )
  return jax.ShapeDtypeStruct(shape, dtype, sharding=shard)


_COMPILED: dict = {}


def _compile(fn, *specs):
  """AOT-compiles `fn` for `specs` (memoised); returns (compiled, seconds)."""
  key = (fn, tuple((s.shape, s.dtype, s.sharding) for s in specs))
  if key in _COMPILED:
    return _COMPILED[key], 0.0
  t0 = time.perf_counter()
  compiled = fn.lower(*specs).compile()
  if len(_COMPILED) > 64:  # bound memory in long-lived processes
    _COMPILED.clear()
  _COMPILED[key] = compiled
  return compiled, time.perf_counter() - t0


def _data_rows(X: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
  """k random rows of X (without replacement when possible), unit norm."""
  n, d = X.shape
  idx = np.sort(rng.choice(n, size=k, replace=k > n))
  rows = np.asarray(X[idx], np.float32)
  norms = np.linalg.norm(rows, axis=1, keepdims=True)
  zero = norms[:, 0] == 0
  if zero.any():  # an all-zero row makes a useless atom: use a random one
    rows[zero] = rng.standard_normal((int(zero.sum()), d)).astype(np.float32)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
  return rows / norms


def _init_dictionary(
  X: np.ndarray, n_atoms: int, init: str, seed: int, mesh, power_iters: int
) -> tuple[np.ndarray, float]:
  """Initial atoms; returns (D0, compile seconds)."""
  rng = np.random.default_rng(seed)
  n, d = X.shape
  if init == 'data':
    return _data_rows(X, n_atoms, rng), 0.0
  rank = min(n_atoms + _SVD_OVERSAMPLE, n, d)
  n_dev = sharding.axis_size(mesh, sharding.DATA_AXIS)
  fn = _svd_fn(mesh, rank, power_iters)
  fn, secs = _compile(
    fn,
    _spec((round_up(n, n_dev), d), mesh, True),
    _spec((), mesh, False, jnp.int32),
  )
  t0 = time.perf_counter()
  xs, _ = sharding.shard_rows(X, mesh)
  s, vt = fn(xs, jnp.int32(seed))
  k = min(n_atoms, n, d)
  # Unit-norm top right singular vectors. scikit-learn multiplies them by σ
  # and the unit-ball projection then only shortens the σ < 1 atoms, which
  # makes them costlier for the lasso to use without changing directions.
  del s
  D = np.array(vt[:k])
  D /= np.maximum(np.linalg.norm(D, axis=1, keepdims=True), 1e-30)
  if k < n_atoms:  # more atoms than the rank: fill with data rows
    D = np.concatenate([D, _data_rows(X, n_atoms - k, rng)])
  logging.info('svd init: %.2fs', time.perf_counter() - t0)
  return D.astype(np.float32), secs


def _chunks(source, rows: int, order_rng=None) -> Iterator[np.ndarray]:
  """Yields float32 chunks of `rows` rows (the last may be shorter).

  Args:
    source: an array-like with `.shape` and row slicing (np.ndarray, memmap),
      or a zero-argument callable returning an iterable of 2-D chunks.
    rows: rows per yielded chunk.
    order_rng: array-likes only: shuffles the order of the contiguous chunks.

  Raises:
    TypeError: for any other kind of source.
    ValueError: for a chunk that is not 2-D.
  """
  if hasattr(source, 'shape') and hasattr(source, '__getitem__'):
    starts = np.arange(0, source.shape[0], rows)
    if order_rng is not None:
      order_rng.shuffle(starts)
    for s in starts:
      yield np.asarray(source[s : s + rows], np.float32)
    return
  if not callable(source):
    raise TypeError(
      'X must be an array (or memmap) of shape (N, d) or a callable returning '
      f'an iterable of (rows, d) chunks; got {type(source).__name__}.'
    )
  buf: list[np.ndarray] = []
  count = 0
  for i, chunk in enumerate(source()):
    chunk = np.asarray(chunk, np.float32)
    if chunk.ndim != 2:
      raise ValueError(f'chunk {i} from X() has shape {chunk.shape}; need 2-D.')
    buf.append(chunk)
    count += chunk.shape[0]
    while count >= rows:
      cat = np.concatenate(buf)
      yield cat[:rows]
      buf, count = [cat[rows:]], count - rows
  if count:
    yield np.concatenate(buf)


def _as_matrix(X) -> np.ndarray:
  if hasattr(X, 'shape') and hasattr(X, '__getitem__'):
    return np.asarray(X, np.float32)
  return np.concatenate(list(_chunks(X, 1 << 16)))


# ----------------------------------------------------------------------------
# Public entry points.


def learn_dictionary(
  X: np.ndarray | Callable[[], Iterable[np.ndarray]],
  *,
  n_atoms: int,
  alpha: float,
  n_iter: int = 30,
  mode: str = 'full',
  batch_size: int = 1024,
  init: str = 'svd',
  coder: str = 'fista',
  coder_max_iter: int = 200,
  coder_tol: float = 1e-6,
  learn_coder_max_iter: int = 20,
  bcd_sweeps: int = 3,
  bcd_block: int = 64,
  svd_power_iters: int = 1,
  tol: float = 0.0,
  seed: int = 0,
  mesh: jax.sharding.Mesh | None = None,
  callback: Callable[[dict], bool | None] | None = None,
  progress: bool = True,
) -> DictionaryResult:
  """Learns K atoms and the sparse codes of the rows of X.

  Args:
    X: (N, d) rows: an array or memmap; in 'minibatch' mode also a
      zero-argument callable returning an iterable of (rows, d) chunks (called
      once per epoch plus once for the final codes).
    n_atoms: K.
    alpha: l1 weight (scikit-learn's scaling, see `lasso.objective`).
    n_iter: outer iterations ('full') or epochs ('minibatch').
    mode: 'full' or 'minibatch'.
    batch_size: rows per chunk ('minibatch'; rounded up to the device count).
    init: 'svd' (randomized SVD; in 'minibatch' mode of the first
      max(batch_size, n_atoms) rows) or 'data' (random rows).
    coder: 'fista' or 'ista'.
    coder_max_iter: coder iteration cap of the final coding pass.
    coder_tol: coder relative tolerance (max code change / max code), used by
      every coding step.
    learn_coder_max_iter: coder iteration cap of each coding step while
      learning (full mode warm-starts it from the previous codes).
    bcd_sweeps: BCD sweeps over the atoms per dictionary update.
    bcd_block: atoms per BCD block (speed only).
    svd_power_iters: power iterations of the randomized SVD init.
    tol: stop early once an outer iteration lowers the recorded objective by
      less than tol·objective (0: run all n_iter).
    seed: seeds the initialisation and atom re-sampling.
    mesh: 1-D mesh with axis "data" (default: all devices).
    callback: called with each history entry; returning True stops early.
    progress: show a tqdm bar over outer iterations.

  Returns:
    A `DictionaryResult`.

  Raises:
    ValueError: for an unknown mode, init or coder, or bad sizes.
  """
  if mode not in MODES:
    raise ValueError(f'dictionary.mode={mode!r}; expected one of {MODES}.')
  if init not in INITS:
    raise ValueError(f'dictionary.init={init!r}; expected one of {INITS}.')
  if coder not in lasso.CODERS:
    raise ValueError(f'dictionary.coder={coder!r}; expected {lasso.CODERS}.')
  if n_atoms < 1 or n_iter < 0 or batch_size < 1:
    raise ValueError(
      f'need n_atoms ≥ 1, n_iter ≥ 0, batch_size ≥ 1; got {n_atoms}, '
      f'{n_iter}, {batch_size}.'
    )
  mesh = mesh if mesh is not None else sharding.make_mesh()
  kw = dict(
    n_atoms=n_atoms,
    alpha=float(alpha),
    n_iter=n_iter,
    coder=coder,
    coder_max_iter=int(coder_max_iter),
    coder_tol=float(coder_tol),
    learn_coder_max_iter=int(learn_coder_max_iter),
    bcd_sweeps=int(bcd_sweeps),
    bcd_block=int(bcd_block),
    init=init,
    svd_power_iters=int(svd_power_iters),
    tol=float(tol),
    seed=int(seed),
    mesh=mesh,
    callback=callback,
    progress=progress,
  )
  if mode == 'full':
    return _learn_full(_as_matrix(X), **kw)
  return _learn_minibatch(X, batch_size=int(batch_size), **kw)


def _record(history, entry, bar, callback, tol) -> bool:
  """Appends a history entry; returns True when learning should stop."""
  history.append(entry)
  bar.set_postfix(
    obj=f'{entry["objective"]:.4g}', nnz=f'{entry["mean_nnz"]:.3g}'
  )
  stop = bool(callback(entry)) if callback is not None else False
  if tol > 0 and len(history) > 1:
    prev = history[-2]['objective']
    stop |= prev - entry['objective'] <= tol * abs(entry['objective'])
  return stop


def _learn_full(
  X,
  *,
  n_atoms,
  alpha,
  n_iter,
  coder,
  coder_max_iter,
  coder_tol,
  learn_coder_max_iter,
  bcd_sweeps,
  bcd_block,
  init,
  svd_power_iters,
  tol,
  seed,
  mesh,
  callback,
  progress,
) -> DictionaryResult:
  n, d = X.shape
  n_dev = sharding.axis_size(mesh, sharding.DATA_AXIS)
  n_pad = round_up(n, n_dev)
  step = _full_step_fn(
    mesh, coder, learn_coder_max_iter, coder_tol, bcd_sweeps, bcd_block
  )
  rep = functools.partial(_spec, mesh=mesh, rows=False)
  row = functools.partial(_spec, mesh=mesh, rows=True)
  step, c_step = _compile(
    step,
    rep((n_atoms, d)),
    row((n_pad, n_atoms)),
    row((n_pad, d)),
    rep(()),
    rep(()),
    rep((), dtype=jnp.int32),
    rep((), dtype=jnp.int32),
  )
  sumsq, c_sum = _compile(_sum_squares_fn(mesh), row((n_pad, d)))
  encode = lasso._encode_fn(mesh, coder, coder_max_iter, coder_tol)
  encode, c_enc = _compile(
    encode, row((n_pad, d)), rep((n_atoms, d)), rep(()), row((n_pad, n_atoms))
  )
  compile_s = c_step + c_sum + c_enc
  clock = time.perf_counter()
  D0, c_svd = _init_dictionary(X, n_atoms, init, seed, mesh, svd_power_iters)
  compile_s += c_svd  # the SVD is compiled inside the init
  logging.info('dictionary compile: %.2fs', compile_s)
  elapsed = lambda: time.perf_counter() - clock - c_svd

  xs, _ = sharding.shard_rows(X, mesh)
  xx = sumsq(xs)
  D = jax.device_put(D0, sharding.replicated(mesh))
  A = jax.device_put(
    np.zeros((n_pad, n_atoms), np.float32), sharding.row_sharding(mesh, 2)
  )
  history: list[dict] = []
  bar = tqdm.trange(n_iter, desc='dictionary (full)', disable=not progress)
  for it in bar:
    D, A, obj, nnz, n_it, n_dead = step(
      D, A, xs, xx, jnp.float32(alpha), jnp.int32(seed), jnp.int32(it)
    )
    entry = dict(
      iter=it + 1,
      seconds=None,
      objective=float(obj),
      mean_nnz=float(nnz) / n,
      coder_iters=int(n_it),
      n_resampled=int(n_dead),
    )
    entry['seconds'] = elapsed()
    if _record(history, entry, bar, callback, tol):
      break
  bar.close()
  codes, _ = encode(xs, D, jnp.float32(alpha), A)
  codes = sharding.to_host(codes)[:n]
  D = sharding.to_host(D)
  seconds = elapsed()
  return DictionaryResult(
    dictionary=D,
    codes=codes,
    history=history,
    compile_seconds=compile_s,
    objective=lasso.objective(X, D, codes, alpha),
    seconds=seconds,
  )


def _learn_minibatch(
  source,
  *,
  n_atoms,
  alpha,
  n_iter,
  batch_size,
  coder,
  coder_max_iter,
  coder_tol,
  learn_coder_max_iter,
  bcd_sweeps,
  bcd_block,
  init,
  svd_power_iters,
  tol,
  seed,
  mesh,
  callback,
  progress,
) -> DictionaryResult:
  n_dev = sharding.axis_size(mesh, sharding.DATA_AXIS)
  # Chunks of batch_size rows whatever the device count (so results do not
  # depend on it), zero-padded to bsz rows for sharding; zero rows have zero
  # codes and add nothing to the statistics.
  bsz = round_up(batch_size, n_dev)
  rng = np.random.default_rng(seed)
  clock = time.perf_counter()
  # Initial atoms from the first max(batch, K) rows of the stream.
  sample, got = [], 0
  for chunk in _chunks(source, batch_size):
    sample.append(chunk)
    got += chunk.shape[0]
    if got >= max(batch_size, n_atoms):
      break
  sample = np.concatenate(sample)
  d = sample.shape[1]
  D0, compile_s = _init_dictionary(
    sample, n_atoms, init, seed, mesh, svd_power_iters
  )
  del sample
  step = _online_step_fn(
    mesh, coder, learn_coder_max_iter, coder_tol, bcd_sweeps, bcd_block
  )
  rep = functools.partial(_spec, mesh=mesh, rows=False)
  row = functools.partial(_spec, mesh=mesh, rows=True)
  i32 = jnp.int32
  step, c_step = _compile(
    step,
    rep((n_atoms, d)),
    rep((n_atoms, n_atoms)),
    rep((n_atoms, d)),
    row((bsz, d)),
    rep((), dtype=i32),
    rep((), dtype=i32),
    rep(()),
    rep((), dtype=i32),
  )
  encode = lasso._encode_fn(mesh, coder, coder_max_iter, coder_tol)
  encode, c_enc = _compile(
    encode, row((bsz, d)), rep((n_atoms, d)), rep(()), row((bsz, n_atoms))
  )
  compile_s += c_step + c_enc
  logging.info('dictionary compile: %.2fs', compile_s)
  elapsed = lambda: time.perf_counter() - clock - compile_s

  rows_sh = sharding.row_sharding(mesh, 2)
  zeros_codes = jax.device_put(np.zeros((bsz, n_atoms), np.float32), rows_sh)

  def put(chunk):
    m = chunk.shape[0]
    if m < bsz:
      chunk = np.pad(chunk, ((0, bsz - m), (0, 0)))
    return jax.device_put(chunk, rows_sh), m

  D = jax.device_put(D0, sharding.replicated(mesh))
  a_stat = jnp.zeros((n_atoms, n_atoms), jnp.float32)
  b_stat = jnp.zeros((n_atoms, d), jnp.float32)
  t = 0
  history: list[dict] = []
  bar = tqdm.trange(n_iter, desc='dictionary (minibatch)', disable=not progress)
  for epoch in bar:
    obj_sum = jnp.zeros((), jnp.float32)
    nnz_sum = jnp.zeros((), jnp.float32)
    n_rows, max_it, dead_sum = 0, 0, 0
    for chunk in _chunks(source, batch_size, order_rng=rng):
      xb, m = put(chunk)
      D, a_stat, b_stat, bobj, bnnz, n_it, n_dead = step(
        D, a_stat, b_stat, xb, i32(m), i32(t), jnp.float32(alpha), i32(seed)
      )
      obj_sum, nnz_sum = obj_sum + bobj, nnz_sum + bnnz
      max_it = jnp.maximum(max_it, n_it)
      dead_sum = dead_sum + n_dead
      n_rows += m
      t += 1
    entry = dict(
      iter=epoch + 1,
      seconds=None,
      objective=float(obj_sum),
      mean_nnz=float(nnz_sum) / max(n_rows, 1),
      coder_iters=int(max_it),
      n_resampled=int(dead_sum),
    )
    entry['seconds'] = elapsed()
    if _record(history, entry, bar, callback, tol):
      break
  bar.close()

  codes = []
  for chunk in _chunks(source, batch_size):
    xb, m = put(chunk)
    a, _ = encode(xb, D, jnp.float32(alpha), zeros_codes)
    codes.append(sharding.to_host(a)[:m])
  codes = np.concatenate(codes)
  D = np.asarray(D)
  seconds = elapsed()
  obj = 0.0
  row0 = 0
  for chunk in _chunks(source, batch_size):
    m = chunk.shape[0]
    obj += lasso.objective(chunk, D, codes[row0 : row0 + m], alpha)
    row0 += m
  return DictionaryResult(
    dictionary=D,
    codes=codes,
    history=history,
    compile_seconds=compile_s,
    objective=obj,
    seconds=seconds,
  )


def learn_dictionary_from_config(
  X,
  cfg: ml_collections.ConfigDict,
  *,
  mesh: jax.sharding.Mesh | None = None,
  callback: Callable[[dict], bool | None] | None = None,
  progress: bool = True,
) -> DictionaryResult:
  """`learn_dictionary` with every knob read from the `dictionary` section.

  Args:
    X: as for `learn_dictionary`.
    cfg: the full pipeline config (its `dictionary` section is used) or the
      `dictionary` section itself.
    mesh: 1-D mesh with axis "data" (default: all devices).
    callback: as for `learn_dictionary`.
    progress: show a tqdm bar.

  Returns:
    A `DictionaryResult`.
  """
  c = cfg.dictionary if 'dictionary' in cfg else cfg
  return learn_dictionary(
    X,
    n_atoms=c.n_atoms,
    alpha=c.alpha,
    n_iter=c.n_iter,
    mode=c.mode,
    batch_size=c.batch_size,
    init=c.init,
    coder=c.coder,
    coder_max_iter=c.coder_max_iter,
    coder_tol=c.coder_tol,
    learn_coder_max_iter=c.get('learn_coder_max_iter', 20),
    bcd_sweeps=c.get('bcd_sweeps', 3),
    bcd_block=c.get('bcd_block', 64),
    svd_power_iters=c.get('svd_power_iters', 1),
    tol=c.get('tol', 1e-4),
    seed=c.seed,
    mesh=mesh,
    callback=callback,
    progress=progress,
  )
