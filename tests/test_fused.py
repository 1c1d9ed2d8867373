"""Tests for gatoms_jax.method.fused: gradients and factors in one pass."""

import os
import tempfile

import jax
import numpy as np
from absl.testing import absltest

from gatoms_jax.core import sharding
from gatoms_jax.core.data import make_batches
from gatoms_jax.core.store import GradientStore, layout_from_tree
from gatoms_jax.method import curvature, fused
from gatoms_jax.method import gradients as grads
from test_grads import make_docs, make_split, rel_err


def _mat_rel(a, b):
  return np.linalg.norm(a - b) / np.linalg.norm(b)


class FusedTest(absltest.TestCase):
  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    # Lengths spread so the planner makes several slab shapes; a small slab
    # budget and 2 slabs per call exercise the scan and its empty slabs; 2
    # devices exercise the cross-device sums of the factors.
    cls.docs = make_docs(11, seed=1, lengths=(9, 17, 30, 40))
    cls.mdef, cls.base, cls.lora = make_split('llama')
    cls.mesh = sharding.make_mesh(devices=jax.devices()[:2])
    kw = dict(mesh=cls.mesh, tokens_per_slab=96, slabs_per_call=2)
    cls.extractor = fused.FusedExtractor(cls.mdef, cls.base, cls.lora, **kw)
    cls.n_calls = len(cls.extractor.plan(cls.docs)[0])
    cls.tmp = tempfile.TemporaryDirectory()
    store = GradientStore.create(
      cls.tmp.name + '/s', layout_from_tree(cls.lora)
    )
    cls.stats = grads.extract_to_store(
      cls.extractor, cls.docs, store, chunk_size=4, progress=False
    )
    cls.store = GradientStore.open(cls.tmp.name + '/s')
    cls.ref_rows = grads.GradientExtractor(
      cls.mdef, cls.base, cls.lora, **kw
    ).gradients(cls.docs)
    cls.separate = curvature.fit_factors(
      cls.mdef, cls.base, cls.lora, make_batches(cls.docs, 4, 16),
      fisher='empirical', token_scope='loss', mesh=cls.mesh, progress=False,
    )  # fmt: skip

  @classmethod
  def tearDownClass(cls):
    cls.tmp.cleanup()
    super().tearDownClass()

  def test_stored_rows_equal_the_separate_pass(self):
    self.assertGreater(self.n_calls, 1)
    self.assertEqual(self.stats['n_computed'], len(self.docs))
    self.assertEqual(self.extractor.n_docs, len(self.docs))
    got = self.store.rows([d.doc_id for d in self.docs])
    # The same forward/backward and per-document sums, compiled into a
    # module with more outputs: at most fp32 round-off (observed 0).
    self.assertLess(rel_err(got, self.ref_rows).max(), 1e-6)

  def test_factors_equal_the_separate_pass(self):
    fac, sep = self.extractor.factors(), self.separate
    self.assertEqual(fac.n_tokens, sep.n_tokens)  # exact: a count
    self.assertEqual(fac.modules, sep.modules)
    self.assertEqual((fac.fisher, fac.token_scope), ('empirical', 'loss'))
    for leaf in sep.modules:
      # Same products, other slab shapes and summation order than the
      # factor pass's padded batches: fp32 round-off of sums of ~200
      # positive terms (observed ≤ 1e-6); a wrong mask or label is > 1 %.
      self.assertLess(_mat_rel(fac.a_cov[leaf], sep.a_cov[leaf]), 1e-5)
      self.assertLess(_mat_rel(fac.s_cov[leaf], sep.s_cov[leaf]), 1e-5)

  def test_correction_streams_the_store(self):
    mesh = self.mesh
    factors = curvature.eigendecompose(self.extractor.factors())
    factors = curvature.correct_eigenvalues(
      factors, self.store.iter_chunks(4), self.store.layout, mesh=mesh,
      progress=False,
    )  # fmt: skip
    self.assertEqual(factors.n_corrected_docs, len(self.docs))
    sep = curvature.eigendecompose(self.separate)
    sep = curvature.correct_eigenvalues(
      sep, [([d.doc_id for d in self.docs], self.ref_rows)],
      self.store.layout, mesh=mesh, progress=False,
    )  # fmt: skip
    for leaf in sep.modules:
      # Eigenbases of factors equal to ~1e-6: the corrected eigenvalues
      # agree to fp32 eigensolver accuracy (relative to the largest).
      scale = sep.corrected[leaf].max()
      np.testing.assert_allclose(
        factors.corrected[leaf], sep.corrected[leaf], rtol=1e-3,
        atol=1e-4 * scale,
      )  # fmt: skip

  def test_applies_only_where_exact(self):
    ok = dict(
      enabled=True, fisher='empirical', token_scope='loss', max_docs=0,
      n_docs=10, compute_dtype='float32', model_dtype='float32',
      process_count=1,
    )  # fmt: skip
    self.assertTrue(fused.fused_applies(**ok)[0])
    self.assertTrue(fused.fused_applies(**{**ok, 'max_docs': 10})[0])
    for change, word in (
      ({'enabled': False}, 'off'),
      ({'fisher': 'true'}, 'sampled'),
      ({'token_scope': 'all'}, 'token_scope'),
      ({'max_docs': 5}, 'max_docs'),
      ({'compute_dtype': 'bfloat16'}, 'compute_dtype'),
      ({'process_count': 2}, 'single-process'),
    ):
      applies, reason = fused.fused_applies(**{**ok, **change})
      self.assertFalse(applies)
      self.assertIn(word, reason)

  def test_rejects_vmap(self):
    with self.assertRaisesRegex(ValueError, 'taps'):
      fused.FusedExtractor(self.mdef, self.base, self.lora, method='vmap')


if __name__ == '__main__':
  absltest.main()


class PipelineFusedTest(absltest.TestCase):
  def test_curvature_artefacts_equal_with_and_without_fusion(self):
    from gatoms_jax import pipeline
    from gatoms_jax.pipeline import manifest
    import test_pipeline
    import tiny_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
      tok = tiny_tokenizer.save(os.path.join(tmp, 'tok'))
      config = test_pipeline.tiny_config(os.path.join(tmp, 'results'), tok)
      config.curvature.fisher = 'empirical'
      # Smaller than test_pipeline's run: only three stages are compared.
      config.data.n_docs = 24
      config.finetune.steps = 2
      config.finetune.checkpoint_every = 2
      config.finetune.eval_every = 2
      stages = 'finetune,gradients,curvature'
      done = pipeline.run(config, stages)
      run_dir = os.path.join(tmp, 'results', 'tiny')
      self.assertTrue(done['gradients']['results']['fused_factors'])
      self.assertTrue(done['curvature']['results']['fused_factor_pass'])
      fused_factors = curvature.Factors.load(os.path.join(run_dir, 'curvature'))

      config.curvature.fused = False  # reruns curvature only, separately
      done = pipeline.run(config, stages)
      self.assertFalse(done['curvature']['results']['fused_factor_pass'])
      separate = curvature.Factors.load(os.path.join(run_dir, 'curvature'))
      self.assertTrue(
        manifest.is_complete(
          os.path.join(run_dir, 'curvature'),
          manifest.stage_keys(config)['curvature'],
        )
      )
    self.assertEqual(fused_factors.n_tokens, separate.n_tokens)
    self.assertEqual(fused_factors.n_corrected_docs, separate.n_corrected_docs)
    for leaf in separate.modules:
      # fp32 round-off of two summation orders (see FusedTest); the
      # corrected eigenvalues then agree to eigensolver accuracy.
      self.assertLess(
        _mat_rel(fused_factors.a_cov[leaf], separate.a_cov[leaf]), 1e-5
      )
      self.assertLess(
        _mat_rel(fused_factors.s_cov[leaf], separate.s_cov[leaf]), 1e-5
      )
      self.assertLess(
        _mat_rel(fused_factors.corrected[leaf], separate.corrected[leaf]),
        1e-3,
      )
