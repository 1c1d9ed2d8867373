"""Tests for gatoms_jax.method.projection (eigenbasis projection and its inverse).

Factors are synthetic (random SPD A and S with distinct eigenvalues, random
positive Λ), so every expected value is computed here in float64 numpy from
the definitions: R = Q_Aᵀ G Q_S, keep the top-k entries by eigenvalue, scale by
1/sqrt(|λ| + ε); unproject scatters back, rescales per mode and rotates with
Q_A · R · Q_Sᵀ.
"""

from __future__ import annotations

import os
import tempfile

import jax
import numpy as np
from absl.testing import absltest, parameterized

from gatoms_jax.method import curvature, projection
from gatoms_jax.core import sharding
from gatoms_jax.core import store as store_lib

LAYOUT = [
  ('layers.0.self_attn.q_proj.lora_a', (8, 3)),
  ('layers.0.self_attn.q_proj.lora_b', (3, 8)),
  ('layers.1.self_attn.v_proj.lora_a', (8, 3)),
  ('layers.1.self_attn.v_proj.lora_b', (3, 5)),
]
DIM = sum(i * o for _, (i, o) in LAYOUT)
EPS = 1e-3  # large enough that a dropped ε would show in the scaling checks


def _spd(rng, n):
  q, _ = np.linalg.qr(rng.standard_normal((n, n)))
  return (q * rng.uniform(0.05, 3.0, n)) @ q.T


def _factors(seed=0, corrected=True):
  rng = np.random.default_rng(seed)
  a_cov = {p: _spd(rng, i) for p, (i, o) in LAYOUT}
  s_cov = {p: _spd(rng, o) for p, (i, o) in LAYOUT}
  factors = curvature.Factors(a_cov, s_cov, 50.0, 'empirical', 'loss')
  mesh = sharding.make_mesh(sharding.MODULE_AXIS, jax.devices()[:1])
  factors = curvature.eigendecompose(factors, mesh)
  if corrected:
    factors.corrected = {
      p: rng.uniform(0.01, 2.0, (i, o)) for p, (i, o) in LAYOUT
    }
    factors.n_corrected_docs = 7
  return factors


def _rows(n, seed=1):
  return (
    np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
  )


def _blocks(row):
  out, start = {}, 0
  for path, (i, o) in LAYOUT:
    out[path] = np.asarray(row[start : start + i * o], np.float64).reshape(i, o)
    start += i * o
  return out


def _one_device():
  return sharding.make_mesh(devices=jax.devices()[:1])


def _expected(factors, row, top_k, select_by, scale_by, mode):
  """(projected k_total vector, unprojected {path: i × o}) in float64."""
  projected, unprojected = [], {}
  for path, g in _blocks(row).items():
    q_a = np.asarray(factors.q_a[path], np.float64)
    q_s = np.asarray(factors.q_s[path], np.float64)
    kfac = np.outer(factors.lam_a[path], factors.lam_s[path])
    lam = {'kfac': kfac, 'ekfac': factors.corrected.get(path)}
    rank, scale_lam = lam[select_by].ravel(), lam[scale_by].ravel()
    k = rank.size if top_k <= 0 else min(top_k, rank.size)
    keep = np.argsort(-rank)[:k]  # distinct eigenvalues: no ties
    r = (q_a.T @ g @ q_s).ravel()
    scale = 1.0 / np.sqrt(np.abs(scale_lam[keep]) + EPS)
    z = r[keep] * scale
    projected.append(z)
    back = {'paper': z / scale, 'natural': z * scale, 'none': z}[mode]
    kept = np.zeros(r.size)
    kept[keep] = back
    unprojected[path] = q_a @ kept.reshape(g.shape) @ q_s.T
  return np.concatenate(projected), unprojected


class ProjectionTest(parameterized.TestCase):
  def test_full_k_round_trip_is_identity(self):
    factors = _factors()
    spec = projection.make_spec(factors, LAYOUT, top_k=0, epsilon=EPS)
    self.assertEqual(spec.k_total, DIM)
    rows = _rows(5)
    projected = projection.Projector(spec, _one_device())(rows)
    for row, z in zip(rows, projected):
      back = projection.unproject_row(spec, z, 'paper')
      # Orthogonal fp32 rotations there and back: ~1e-6 relative.
      np.testing.assert_allclose(back, row, rtol=1e-4, atol=1e-5)

  @parameterized.product(
    select_by=('kfac', 'ekfac'), scale_by=('kfac', 'ekfac')
  )
  def test_top_k_matches_definition(self, select_by, scale_by):
    factors = _factors()
    top_k = 7  # < every leaf size (15 … 24)
    spec = projection.make_spec(
      factors, store_lib.normalize_layout(LAYOUT), top_k=top_k,
      select_by=select_by, scale_by=scale_by, epsilon=EPS,
    )  # fmt: skip
    self.assertEqual(spec.k_total, top_k * len(LAYOUT))
    rows = _rows(3)
    projected = projection.Projector(spec, _one_device())(rows)
    for mode in ('paper', 'natural', 'none'):
      for row, z in zip(rows, projected):
        want_z, want_back = _expected(
          factors, row, top_k, select_by, scale_by, mode
        )
        # fp32 projection vs float64 reference: ~1e-6 relative.
        np.testing.assert_allclose(z, want_z, rtol=1e-4, atol=1e-5)
        back = projection.unproject(spec, z, mode)
        for path, (i, o) in LAYOUT:
          self.assertEqual(back[path].shape, (i, o))
          # Rescaling by up to 1/ε ('natural'): error relative to the max.
          err = np.max(np.abs(back[path] - want_back[path]))
          self.assertLess(err, 1e-4 * np.max(np.abs(want_back[path])), path)

  def test_modes_scale_as_documented(self):
    factors = _factors()
    spec = projection.make_spec(factors, LAYOUT, top_k=6, epsilon=EPS)
    z = np.random.default_rng(3).standard_normal(spec.k_total)
    start = 0
    for path, (i, o) in LAYOUT:
      k = len(spec.index[path])
      block = np.zeros(spec.k_total)
      block[start : start + k] = z[start : start + k]
      start += k
      q_a = np.asarray(spec.q_a[path], np.float64)
      q_s = np.asarray(spec.q_s[path], np.float64)
      entries = {}
      for mode in ('paper', 'natural', 'none'):
        r = q_a.T @ projection.unproject(spec, block, mode)[path] @ q_s
        entries[mode] = r.ravel()[spec.index[path]]
      lam = np.abs(spec.eigenvalues[path]) + EPS
      # paper = z·sqrt(λ+ε), natural = z/sqrt(λ+ε), none = z (fp32 output).
      np.testing.assert_allclose(
        entries['none'], z[start - k : start], rtol=1e-5
      )
      np.testing.assert_allclose(
        entries['paper'], entries['none'] * np.sqrt(lam), rtol=1e-5
      )
      np.testing.assert_allclose(
        entries['natural'], entries['none'] / np.sqrt(lam), rtol=1e-5
      )

  def test_ekfac_needs_correction_and_bad_inputs_raise(self):
    factors = _factors(corrected=False)
    with self.assertRaisesRegex(ValueError, 'corrected'):
      projection.make_spec(factors, LAYOUT, select_by='ekfac')
    with self.assertRaisesRegex(ValueError, 'select_by'):
      projection.make_spec(factors, LAYOUT, select_by='eig')
    spec = projection.make_spec(factors, LAYOUT, top_k=2)
    with self.assertRaisesRegex(ValueError, 'mode'):
      projection.unproject(spec, np.zeros(spec.k_total), 'inverse')
    with self.assertRaisesRegex(ValueError, r'\(8,\)'):
      projection.unproject(spec, np.zeros(spec.k_total + 1))

  def test_spec_save_load_round_trip(self):
    factors = _factors()
    spec = projection.make_spec(
      factors, LAYOUT, top_k=5, select_by='ekfac', scale_by='kfac', epsilon=EPS
    )
    with tempfile.TemporaryDirectory() as d:
      spec.save(d)
      self.assertTrue(os.path.exists(os.path.join(d, 'projection.json')))
      loaded = projection.ProjectionSpec.load(d)
    self.assertEqual(loaded.leaves, spec.leaves)
    self.assertEqual(loaded.k_total, spec.k_total)
    self.assertEqual(
      (loaded.epsilon, loaded.select_by, loaded.scale_by),
      (spec.epsilon, spec.select_by, spec.scale_by),
    )
    for path, _ in LAYOUT:
      np.testing.assert_array_equal(loaded.index[path], spec.index[path])
      np.testing.assert_array_equal(
        loaded.eigenvalues[path], spec.eigenvalues[path]
      )
      # Q's are stored as float32 (the precision projection uses).
      np.testing.assert_array_equal(
        loaded.q_a[path], np.float32(spec.q_a[path])
      )
      np.testing.assert_array_equal(
        loaded.q_s[path], np.float32(spec.q_s[path])
      )
    rows = _rows(4)
    np.testing.assert_array_equal(
      projection.Projector(loaded, _one_device())(rows),
      projection.Projector(spec, _one_device())(rows),
    )

  def test_factors_save_load_round_trip(self):
    factors = _factors()
    with tempfile.TemporaryDirectory() as d:
      factors.save(d)
      loaded = curvature.Factors.load(d)
      with self.assertRaises(FileNotFoundError):
        curvature.Factors.load(os.path.join(d, 'missing'))
    self.assertEqual(loaded.modules, factors.modules)
    self.assertEqual(
      (
        loaded.n_tokens,
        loaded.fisher,
        loaded.token_scope,
        loaded.n_corrected_docs,
      ),
      (factors.n_tokens, factors.fisher, factors.token_scope, 7),
    )
    for table in (
      'a_cov',
      's_cov',
      'q_a',
      'lam_a',
      'q_s',
      'lam_s',
      'corrected',
    ):
      ours, theirs = getattr(factors, table), getattr(loaded, table)
      self.assertEqual(set(ours), set(theirs), table)
      for m in ours:
        # Stored as float32: exact after the same cast.
        np.testing.assert_array_equal(
          theirs[m], np.float32(ours[m]), f'{table} {m}'
        )

  def test_projector_sharded_equals_one_device(self):
    factors = _factors()
    spec = projection.make_spec(factors, LAYOUT, top_k=9, epsilon=EPS)
    rows = _rows(10)  # padded to 12 rows on 4 devices
    one = projection.Projector(spec, _one_device())(rows)
    mesh = sharding.make_mesh()
    self.assertEqual(sharding.axis_size(mesh, sharding.DATA_AXIS), 4)
    four = projection.Projector(spec, mesh)(rows)
    self.assertEqual(four.shape, (10, spec.k_total))
    # Same per-row math on another device layout: fp32 rounding at most.
    np.testing.assert_allclose(four, one, rtol=1e-5, atol=1e-6)
    ids = [f'd{i}' for i in range(10)]
    chunk_ids, chunked = projection.project_chunks(
      spec,
      [(ids[:6], rows[:6]), (ids[6:], rows[6:])],
      mesh=mesh,
      progress=False,
    )
    self.assertEqual(chunk_ids, ids)
    np.testing.assert_allclose(chunked, one, rtol=1e-5, atol=1e-6)
    empty_ids, empty = projection.project_chunks(spec, [], progress=False)
    self.assertEqual((empty_ids, empty.shape), ([], (0, spec.k_total)))


if __name__ == '__main__':
  absltest.main()
