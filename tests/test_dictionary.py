"""Tests of sparse dictionary learning (gatoms_jax/dictionary.py)."""

import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized

from configs import common
from gatoms_jax.method import dictionary, lasso
from gatoms_jax.core import sharding


def _planted(seed, n=601, d=48, k=12, noise=0.02):
  """Rows = random mixes of 1–3 of k random unit atoms + small noise."""
  rng = np.random.default_rng(seed)
  P = rng.standard_normal((k, d))
  P /= np.linalg.norm(P, axis=1, keepdims=True)
  C = np.zeros((n, k))
  for i in range(n):
    m = rng.integers(1, 4)
    idx = rng.choice(k, m, replace=False)
    C[i, idx] = rng.uniform(0.5, 1.5, m) * rng.choice([-1, 1], m)
  X = C @ P + noise * rng.standard_normal((n, d))
  return X.astype(np.float32), P


def _mesh(n_dev):
  return sharding.make_mesh(devices=jax.devices()[:n_dev])


def _recovered(P, D, threshold=0.9):
  """Fraction of planted atoms with a learned atom at |cos| ≥ threshold."""
  Dn = D / np.maximum(np.linalg.norm(D, axis=1, keepdims=True), 1e-12)
  return float((np.abs(P @ Dn.T).max(axis=1) >= threshold).mean())


def _bcd_reference(D, A, B, sweeps):
  """Sequential numpy (float64) version of scikit-learn's _update_dict loop."""
  D = D.astype(np.float64).copy()
  for _ in range(sweeps):
    for k in range(D.shape[0]):
      if A[k, k] > 1e-12:
        D[k] += (B[k] - A[k] @ D) / A[k, k]
        D[k] /= max(np.linalg.norm(D[k]), 1.0)
  return D


# Settings and shapes (601 rows: padded on 4 devices) shared by the learning
# tests, so that they share compiled steps (one per mesh and mode).
_KW = dict(n_atoms=12, alpha=0.05, progress=False)


class BuildingBlocksTest(parameterized.TestCase):
  def _stats(self, seed=0, n=80, k=10, d=30):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    A = rng.standard_normal((n, k)) * (rng.random((n, k)) < 0.3)
    D = rng.standard_normal((k, d))
    D /= np.linalg.norm(D, axis=1, keepdims=True)
    return X, A, D, A.T @ A, A.T @ X

  @parameterized.parameters(1, 3, 4, 64)
  def test_bcd_matches_sequential_reference(self, block):
    X, A, D, a_stat, b_stat = self._stats()
    got = dictionary.bcd_update(
      jnp.asarray(D, jnp.float32),
      jnp.asarray(a_stat, jnp.float32),
      jnp.asarray(b_stat, jnp.float32),
      sweeps=2,
      block=block,
    )
    want = _bcd_reference(D, a_stat, b_stat, sweeps=2)
    # fp32 vs float64 of the same 20 sequential O(1) updates (entries O(0.2),
    # A_stat entries O(10)): a few 1e-6 of accumulated rounding.
    np.testing.assert_allclose(np.asarray(got), want, atol=2e-5)

  def test_bcd_decreases_fit_and_keeps_atoms_in_ball(self):
    X, A, D, a_stat, b_stat = self._stats(seed=1)
    fit = lambda D: 0.5 * np.sum((X - A @ D) ** 2)
    prev = fit(D)
    d = jnp.asarray(D, jnp.float32)
    for _ in range(4):
      d = dictionary.bcd_update(
        d, jnp.asarray(a_stat, jnp.float32), jnp.asarray(b_stat, jnp.float32)
      )
      cur = fit(np.asarray(d, np.float64))
      # Each atom update is an exact minimisation: monotone up to fp32
      # rounding of a fit of size ~1e3 (1e-3 absolute slack).
      self.assertLessEqual(cur, prev + 1e-3)
      prev = cur
    # Projection onto the unit ball, up to fp32 rounding of the norm.
    self.assertLessEqual(float(jnp.max(jnp.linalg.norm(d, axis=1))), 1 + 1e-6)

  def test_objective_from_stats(self):
    X, A, D, a_stat, b_stat = self._stats(seed=2)
    got = dictionary.objective_from_stats(
      jnp.float32(np.sum(X * X)),
      jnp.asarray(D, jnp.float32),
      jnp.asarray(a_stat, jnp.float32),
      jnp.asarray(b_stat, jnp.float32),
      jnp.float32(np.abs(A).sum()),
      0.1,
    )
    # The expansion ‖X‖² − 2⟨D, AᵀX⟩ + ⟨AᵀA, DDᵀ⟩ loses digits to
    # cancellation in fp32: 1e-5 relative on an objective of ~1e3.
    np.testing.assert_allclose(
      float(got), lasso.objective(X, D, A, 0.1), rtol=1e-5
    )

  def test_resample_replaces_only_dead_atoms_with_residual_rows(self):
    mesh = _mesh(4)
    rng = np.random.default_rng(3)
    X = rng.standard_normal((16, 5)).astype(np.float32)
    resid = np.zeros(16, np.float32)
    resid[[3, 7, 12]] = [1.0, 2.0, 3.0]  # only these rows may be chosen
    D = np.eye(6, 5, dtype=np.float32)
    dead = np.array([False, True, False, True, False, False])
    xs, _ = sharding.shard_rows(X, mesh)
    rs = jax.device_put(resid, sharding.row_sharding(mesh, 1))
    fn = jax.jit(
      lambda d, dead, x, r, key: dictionary._resample_dead(
        mesh, d, dead, x, r, key
      )
    )
    key = jax.random.key(0)
    out = np.asarray(fn(D, dead, xs, rs, key))
    np.testing.assert_array_equal(out[~dead], D[~dead])
    unit = X[[3, 7, 12]] / np.linalg.norm(X[[3, 7, 12]], axis=1, keepdims=True)
    for k in np.flatnonzero(dead):
      # Exactly a normalised candidate row, up to fp32 rounding of the norm.
      self.assertLess(np.abs(unit - out[k]).max(axis=1).min(), 1e-6)
    self.assertFalse(np.allclose(out[1], out[3]))  # distinct rows
    np.testing.assert_array_equal(out, np.asarray(fn(D, dead, xs, rs, key)))


class LearnTest(parameterized.TestCase):
  def test_recovers_planted_atoms(self):
    X, P = _planted(seed=0)
    res = dictionary.learn_dictionary(
      X, n_iter=200, init='data', seed=0, mesh=_mesh(1), **_KW
    )
    self.assertGreaterEqual(_recovered(P, res.dictionary), 0.9)
    # The learned pair is at least as good as the planted atoms with their
    # own lasso codes (the planted dictionary is one feasible point).
    A_p, _ = lasso.sparse_encode(X, P, 0.05, mesh=_mesh(1))
    self.assertLessEqual(res.objective, lasso.objective(X, P, A_p, 0.05))
    # Codes are lasso-optimal for the returned dictionary: the final pass
    # runs to coder_tol=1e-6; 1e-3 allows its fp32 and tolerance slack.
    kkt = lasso.kkt_residual(
      jnp.asarray(X), jnp.asarray(res.dictionary), jnp.asarray(res.codes), 0.05
    )
    self.assertLess(float(jnp.max(kkt)), 1e-3)
    objs = [h['objective'] for h in res.history]
    # Alternating exact-ish minimisation: non-increasing, up to fp32 noise of
    # the statistics-based objective (~1e-5 relative of ~60).
    self.assertTrue(all(b <= a + 1e-3 for a, b in zip(objs, objs[1:])))
    secs = [h['seconds'] for h in res.history]
    self.assertEqual(secs, sorted(secs))

  @parameterized.named_parameters(
    ('full_data', 'full', 'data'),
    ('full_svd', 'full', 'svd'),
    ('minibatch_data', 'minibatch', 'data'),
  )
  def test_sharded_equals_unsharded(self, mode, init):
    X, _ = _planted(seed=1)
    kw = dict(_KW, n_iter=4, init=init, mode=mode, batch_size=64, seed=3)
    r1 = dictionary.learn_dictionary(X, mesh=_mesh(1), **kw)
    r4 = dictionary.learn_dictionary(X, mesh=_mesh(4), **kw)
    # Same algorithm, only the reduction order of the psum-ed statistics and
    # of the matmuls differs: fp32 rounding amplified by a few alternations.
    np.testing.assert_allclose(r1.dictionary, r4.dictionary, atol=1e-4)
    np.testing.assert_allclose(r1.codes, r4.codes, atol=1e-4)
    for h1, h4 in zip(r1.history, r4.history):
      self.assertAlmostEqual(h1['objective'], h4['objective'], delta=1e-3)
      # The coder stops on a global relative tolerance; its rounding-level
      # difference can move the stopping step by one (seen in CI: 5 vs 6).
      # A per-device stopping rule would differ by far more.
      self.assertLessEqual(abs(h1['coder_iters'] - h4['coder_iters']), 1)

  def test_minibatch_streams_from_chunk_iterator_and_memmap(self):
    X, P = _planted(seed=2)
    kw = dict(_KW, n_iter=30, mode='minibatch', batch_size=64, init='data')

    def chunks():  # irregular chunk sizes; re-batched to 64 rows inside
      for s in range(0, X.shape[0], 37):
        yield X[s : s + 37]

    res = dictionary.learn_dictionary(chunks, mesh=_mesh(1), **kw)
    self.assertEqual(res.codes.shape, (X.shape[0], 12))
    self.assertLen(res.history, 30)
    A_p, _ = lasso.sparse_encode(X, P, 0.05, mesh=_mesh(1))
    planted = lasso.objective(X, P, A_p, 0.05)
    # Within 30 % of the planted atoms' objective after 30 streaming epochs
    # (observed ~20 %; scikit-learn's MiniBatchDictionaryLearning with the
    # same batch size and epochs is ~65 % above, all-zero codes ~4× worse).
    self.assertLess(res.objective, 1.3 * planted)
    np.testing.assert_allclose(
      res.objective, lasso.objective(X, res.dictionary, res.codes, 0.05)
    )
    with tempfile.TemporaryDirectory() as tmp:
      path = os.path.join(tmp, 'x.npy')
      np.save(path, X)
      mm = np.load(path, mmap_mode='r')
      r_mm = dictionary.learn_dictionary(mm, mesh=_mesh(1), **kw)
      r_np = dictionary.learn_dictionary(X, mesh=_mesh(1), **kw)
    # Same rows, same chunking, same seed: bit-identical.
    np.testing.assert_array_equal(r_mm.dictionary, r_np.dictionary)
    self.assertLess(r_np.objective, 1.3 * planted)

  def test_deterministic_by_seed(self):
    X, _ = _planted(seed=4)
    kw = dict(_KW, n_iter=4, init='data', mesh=_mesh(1))
    a = dictionary.learn_dictionary(X, seed=7, **kw)
    b = dictionary.learn_dictionary(X, seed=7, **kw)
    c = dictionary.learn_dictionary(X, seed=8, **kw)
    np.testing.assert_array_equal(a.dictionary, b.dictionary)
    np.testing.assert_array_equal(a.codes, b.codes)
    self.assertFalse(np.allclose(a.dictionary, c.dictionary))

  def test_more_atoms_than_rows_and_resampling(self):
    rng = np.random.default_rng(5)
    two = rng.standard_normal((2, 48)).astype(np.float32)
    X = np.repeat(two / np.linalg.norm(two, axis=1, keepdims=True), 5, axis=0)
    # 16 atoms > 10 rows of rank 2: the SVD init supplies 10 atoms (8 of them
    # orthogonal to every row, hence unused and re-sampled), data rows the
    # other 6.
    res = dictionary.learn_dictionary(
      X, n_atoms=16, alpha=0.05, n_iter=3, init='svd', mesh=_mesh(1),
      progress=False,
    )  # fmt: skip
    self.assertEqual(res.dictionary.shape, (16, 48))
    self.assertGreater(sum(h['n_resampled'] for h in res.history), 0)
    self.assertTrue(np.all(np.isfinite(res.dictionary)))
    # Unit-ball constraint, up to fp32 rounding of the norm.
    self.assertLessEqual(np.linalg.norm(res.dictionary, axis=1).max(), 1 + 1e-6)

  def test_from_config_and_callback(self):
    cfg = common.base_config()
    cfg.dictionary.n_atoms = 12
    cfg.dictionary.alpha = 0.05
    cfg.dictionary.n_iter = 4
    cfg.dictionary.init = 'data'
    cfg.dictionary.tol = 0.0
    X, _ = _planted(seed=6)
    seen = []
    res = dictionary.learn_dictionary_from_config(
      X,
      cfg,
      mesh=_mesh(1),
      callback=lambda h: seen.append(h['iter']) or h['iter'] >= 2,
      progress=False,
    )
    self.assertEqual(seen, [1, 2])  # returning True stopped after iter 2
    self.assertLen(res.history, 2)

  def test_bad_arguments(self):
    X = np.ones((4, 3), np.float32)
    with self.assertRaisesRegex(ValueError, 'mode'):
      dictionary.learn_dictionary(X, n_atoms=2, alpha=0.1, mode='online')
    with self.assertRaisesRegex(ValueError, 'init'):
      dictionary.learn_dictionary(X, n_atoms=2, alpha=0.1, init='kmeans')
    with self.assertRaisesRegex(TypeError, 'callable'):
      dictionary.learn_dictionary(
        iter([X]), n_atoms=2, alpha=0.1, mode='minibatch'
      )


if __name__ == '__main__':
  absltest.main()
