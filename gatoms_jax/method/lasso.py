"""Batched lasso coder in Gram form: ISTA / FISTA with soft-thresholding.

Solves, independently for every row x of X (N×d) and a fixed dictionary D
(K×d, one atom per row),

  min_a  ½‖x − Dᵀa‖² + α‖a‖₁,

which is the coding step of sparse dictionary learning with scikit-learn's
scaling of α (`sklearn.decomposition.MiniBatchDictionaryLearning`: the whole
objective is ½‖X − A D‖²_F + α‖A‖₁, see `objective`).

The coder only needs G = D Dᵀ (K×K) and C = X Dᵀ (N×K): the gradient of the
smooth part for row a is a G − c, so one iteration costs N·K² instead of N·K·d
(Beck & Teboulle 2009, FISTA, with step 1/L, L = λ_max(G) by power iteration;
optional gradient-based adaptive restart of O'Donoghue & Candès 2015, per row,
which helps when coding to convergence).
Rows are independent problems, so they can be sharded over the mesh axis
"data"; only the stopping test (max relative change of the codes) is global,
which keeps a sharded run identical to an unsharded one.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from gatoms_jax.core import sharding

Array = jax.Array
PyTree = Any

CODERS = ('fista', 'ista')

# Relative safety margin on the power-iteration estimate of λ_max(G): the
# Rayleigh quotient never exceeds λ_max, and a step slightly above 1/λ_max can
# make ISTA/FISTA oscillate; 1 % costs ~1 % convergence speed.
_LIPSCHITZ_MARGIN = 1.01


def soft_threshold(x: Array, threshold: Array | float) -> Array:
  """Proximal operator of threshold·‖·‖₁: sign(x)·max(|x| − threshold, 0)."""
  return jnp.sign(x) * jnp.maximum(jnp.abs(x) - threshold, 0.0)


def max_eigenvalue(gram: Array, n_iter: int = 100) -> Array:
  """Largest eigenvalue of a symmetric PSD matrix by power iteration.

  Args:
    gram: (K, K) symmetric positive semi-definite matrix.
    n_iter: power iterations (each costs K²).

  Returns:
    The Rayleigh quotient of the final iterate (≤ λ_max), a scalar.
  """
  k = gram.shape[0]
  # A fixed pseudo-random start (not all-ones, which can be orthogonal to the
  # top eigenvector of a structured Gram matrix); deterministic by design.
  v = jax.random.normal(jax.random.key(0), (k,), gram.dtype)
  v = v / jnp.linalg.norm(v)

  def body(_, v):
    w = gram @ v
    return w / jnp.maximum(jnp.linalg.norm(w), jnp.finfo(gram.dtype).tiny)

  v = lax.fori_loop(0, n_iter, body, v)
  return jnp.maximum(v @ (gram @ v), 0.0)


def lipschitz_constant(gram: Array) -> Array:
  """Step-size constant L ≥ λ_max(D Dᵀ) for the gradient a ↦ a G − c."""
  lmax = max_eigenvalue(gram) * _LIPSCHITZ_MARGIN
  # An all-zero dictionary has L = 0; any positive L then gives zero codes.
  return jnp.maximum(lmax, jnp.finfo(gram.dtype).tiny)


def lasso_gram(
  c: Array,
  gram: Array,
  alpha: float | Array,
  *,
  init: Array | None = None,
  lipschitz: Array | None = None,
  method: str = 'fista',
  max_iter: int | Array = 1000,
  tol: float | Array = 1e-6,
  restart: bool = True,
  axis_name: str | None = None,
) -> tuple[Array, Array]:
  """Proximal-gradient lasso in Gram form for a batch of rows.

  Iterates a ← S_{α/L}(y − (y G − c)/L) (ISTA: y = a; FISTA: y is the
  Nesterov extrapolation) until max|a_new − a| ≤ tol · max|a_new| over the
  whole batch (all shards when `axis_name` is given) or `max_iter` iterations.

  Args:
    c: (n, K) correlations X Dᵀ of the rows with the atoms.
    gram: (K, K) Gram matrix D Dᵀ.
    alpha: l1 weight α (scikit-learn's dictionary-learning scaling).
    init: (n, K) warm start; zeros when None.
    lipschitz: L (scalar); computed from `gram` by power iteration when None.
    method: 'fista' or 'ista'.
    max_iter: iteration cap (may be traced).
    tol: relative tolerance on the largest code change (may be traced).
    restart: FISTA only: per-row gradient-based adaptive momentum restart.
    axis_name: mesh axis the rows are sharded over inside `jax.shard_map`;
      the stopping test is then reduced over it with `lax.pmax`.

  Returns:
    (codes (n, K), number of iterations run (int32 scalar)).

  Raises:
    ValueError: for an unknown `method`.
  """
  if method not in CODERS:
    raise ValueError(f'Unknown coder {method!r}; expected one of {CODERS}.')
  dtype = c.dtype
  if lipschitz is None:
    lipschitz = lipschitz_constant(gram)
  step = (1.0 / lipschitz).astype(dtype)
  thresh = (alpha * step).astype(dtype)
  a0 = jnp.zeros_like(c) if init is None else init.astype(dtype)
  t0 = jnp.ones_like(c[:, 0])  # derived from c so it is "varying" in shard_map

  def global_max(x):
    m = jnp.max(x) if x.size else jnp.zeros((), x.dtype)
    return lax.pmax(m, axis_name) if axis_name is not None else m

  def cond(state):
    k, _, _, _, done = state
    return jnp.logical_and(k < max_iter, jnp.logical_not(done))

  def body(state):
    k, a, y, t, _ = state
    a_new = soft_threshold(y - (y @ gram - c) * step, thresh)
    diff = a_new - a
    change = global_max(jnp.abs(diff))
    scale = global_max(jnp.abs(a_new))
    done = change <= tol * scale
    if method == 'ista':
      return k + 1, a_new, a_new, t, done
    t_new = 0.5 * (1.0 + jnp.sqrt(1.0 + 4.0 * t * t))
    momentum = (t - 1.0) / t_new
    if restart:
      # The step went "uphill" w.r.t. the momentum direction: drop momentum.
      bad = jnp.sum((y - a_new) * diff, axis=1) > 0
      t_new = jnp.where(bad, 1.0, t_new)
      momentum = jnp.where(bad, 0.0, momentum)
    y_new = a_new + momentum[:, None] * diff
    return k + 1, a_new, y_new, t_new, done

  state = (jnp.zeros((), jnp.int32), a0, a0, t0, jnp.zeros((), bool))
  k, a, _, _, _ = lax.while_loop(cond, body, state)
  return a, k


def kkt_residual(X: Array, D: Array, A: Array, alpha: float) -> Array:
  """Element-wise violation of the lasso optimality conditions.

  With g = D x − D Dᵀ a (the negative gradient of the smooth part), a is
  optimal iff g_j = α·sign(a_j) where a_j ≠ 0 and |g_j| ≤ α where a_j = 0.

  Args:
    X: (N, d) rows.
    D: (K, d) atoms.
    A: (N, K) codes.
    alpha: l1 weight.

  Returns:
    (N, K) array: |g_j − α sign(a_j)| on the support, max(|g_j| − α, 0) off it.
  """
  g = X @ D.T - A @ (D @ D.T)
  on = jnp.abs(g - alpha * jnp.sign(A))
  off = jnp.maximum(jnp.abs(g) - alpha, 0.0)
  return jnp.where(A != 0, on, off)


def objective(X, D, A, alpha: float, *, chunk_rows: int = 1024) -> float:
  """Dictionary-learning objective ½‖X − A D‖²_F + α‖A‖₁ in float64.

  Used to score every method (this package and scikit-learn) the same way.
  Works on host arrays (including `np.load(..., mmap_mode='r')`), chunked
  over rows so the N×d residual is never materialised.

  Args:
    X: (N, d) data rows.
    D: (K, d) atoms.
    A: (N, K) codes.
    alpha: l1 weight.
    chunk_rows: rows per chunk.

  Returns:
    The objective as a Python float.
  """
  D = np.asarray(D, np.float64)
  A = np.asarray(A)
  total = 0.0
  for s in range(0, X.shape[0], chunk_rows):
    x = np.asarray(X[s : s + chunk_rows], np.float64)
    a = np.asarray(A[s : s + chunk_rows], np.float64)
    r = x - a @ D
    total += 0.5 * float(np.einsum('ij,ij->', r, r))
    total += alpha * float(np.abs(a).sum())
  return total


@functools.lru_cache(maxsize=32)
def _encode_fn(
  mesh: jax.sharding.Mesh,
  method: str,
  max_iter: int,
  tol: float,
):
  """Jitted (X, D, alpha, init) -> (codes, n_iter) with rows sharded."""
  axis = sharding.DATA_AXIS
  rows = jax.P(axis, None)

  def local(x, d, gram, lip, alpha, a0):
    c = x @ d.T
    return lasso_gram(
      c,
      gram,
      alpha,
      init=a0,
      lipschitz=lip,
      method=method,
      max_iter=max_iter,
      tol=tol,
      axis_name=axis,
    )

  coded = jax.shard_map(
    local,
    mesh=mesh,
    in_specs=(rows, jax.P(), jax.P(), jax.P(), jax.P(), rows),
    out_specs=(rows, jax.P()),
  )

  def encode(x, d, alpha, a0):
    gram = d @ d.T
    return coded(x, d, gram, lipschitz_constant(gram), alpha, a0)

  return jax.jit(
    encode,
    in_shardings=(
      sharding.row_sharding(mesh, 2),
      sharding.replicated(mesh),
      sharding.replicated(mesh),
      sharding.row_sharding(mesh, 2),
    ),
    out_shardings=(sharding.row_sharding(mesh, 2), sharding.replicated(mesh)),
  )


def sparse_encode(
  X,
  D,
  alpha: float,
  *,
  init=None,
  method: str = 'fista',
  max_iter: int = 1000,
  tol: float = 1e-6,
  mesh: jax.sharding.Mesh | None = None,
  chunk_rows: int | None = None,
) -> tuple[np.ndarray, int]:
  """Lasso codes of new rows against a fixed dictionary.

  Args:
    X: (N, d) rows (host array or memmap; cast to float32).
    D: (K, d) dictionary.
    alpha: l1 weight (same scaling as `objective`).
    init: optional (N, K) warm start.
    method: 'fista' or 'ista'.
    max_iter: coder iteration cap (per chunk).
    tol: relative code-change tolerance.
    mesh: 1-D mesh with axis "data" (default: all devices).
    chunk_rows: rows coded per call (None: all at once); bounds memory.

  Returns:
    (codes (N, K) float32, largest iteration count over chunks).
  """
  mesh = mesh if mesh is not None else sharding.make_mesh()
  n_dev = sharding.axis_size(mesh, sharding.DATA_AXIS)
  D = jnp.asarray(np.asarray(D, np.float32))
  n = X.shape[0]
  chunk = n if not chunk_rows else chunk_rows
  chunk = max(n_dev, -(-max(chunk, 1) // n_dev) * n_dev)
  fn = _encode_fn(mesh, method, int(max_iter), float(tol))
  out = np.zeros((n, D.shape[0]), np.float32)
  n_iter = 0
  for s in range(0, n, chunk):
    x = np.asarray(X[s : s + chunk], np.float32)
    m = x.shape[0]
    x = sharding.pad_rows(x, chunk)[0] if m < chunk and n > chunk else x
    xs, _ = sharding.shard_rows(x, mesh)
    if init is not None:
      a0 = np.asarray(init[s : s + chunk], np.float32)
      a0 = sharding.pad_rows(a0, xs.shape[0])[0]
    else:
      a0 = np.zeros((xs.shape[0], D.shape[0]), np.float32)
    a0 = jax.device_put(a0, sharding.row_sharding(mesh, 2))
    codes, k = fn(xs, D, jnp.float32(alpha), a0)
    out[s : s + m] = sharding.to_host(codes)[:m]
    n_iter = max(n_iter, int(k))
  return out, n_iter
