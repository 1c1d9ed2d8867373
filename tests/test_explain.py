"""Explaining a query through atoms (gatoms_jax.method.explain).

Planted codes: the threshold-algorithm ranking equals exhaustive scoring of
every code; a query built from planted atoms is routed to the documents
planted on them; a query equal to a training document ranks it first under
exact influence and within the top tie group under atoms.
"""

import json
import os
import subprocess
import sys
import tempfile
from unittest import mock

import numpy as np
from absl.testing import absltest

from configs import tiny_test
import gatoms_jax as ga
from gatoms_jax import pipeline
from gatoms_jax.method import explain, lasso
from gatoms_jax.pipeline import explain as pipeline_explain
from gatoms_jax.pipeline import report

import tiny_tokenizer  # noqa: E402

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# configs/tiny_test.py made smaller still: few shapes, few steps.
_TINY = {
  'data.n_docs': 16,
  'data.max_length': 192,
  'data.bucket_multiple': 192,
  'finetune.steps': 2,
  'finetune.bucket_multiple': 192,
  'finetune.loss_multiple': 192,
  'curvature.max_docs': 4,
  'projection.top_k': 8,
  'dictionary.n_iter': 3,
  'explain.max_new_tokens': 6,
}


def _random_codes(rng, n, k, max_nnz):
  codes = np.zeros((n, k), np.float32)
  for i in range(n):
    atoms = rng.choice(k, rng.integers(1, max_nnz + 1), replace=False)
    codes[i, atoms] = rng.normal(size=len(atoms))
  return codes


def _planted(rng, n_atoms=12, dim=64, per_atom=6):
  """Orthonormal atoms; docs on one atom, or one main + one minor atom."""
  D = np.linalg.qr(rng.normal(size=(dim, n_atoms)))[0].T.astype(np.float32)
  plan = []
  for j in range(n_atoms):
    plan += [((j, 1.0),)] * (per_atom // 2)
    for t in range(per_atom - per_atom // 2):
      plan.append(((j, 1.0), ((j + 1 + t) % n_atoms, 0.4)))
  codes = np.zeros((len(plan), n_atoms), np.float32)
  for i, terms in enumerate(plan):
    for j, value in terms:
      codes[i, j] = value
  X = explain.normalize_rows(codes @ D)
  main = np.array([terms[0][0] for terms in plan])
  return D, X, main


class ExplainTest(absltest.TestCase):
  def test_threshold_ranking_equals_exhaustive_scores(self):
    rng = np.random.default_rng(0)
    codes = _random_codes(rng, 3000, 40, 5)
    index = explain.build_index(codes)
    np.testing.assert_array_equal(index.dense_codes(np.arange(3000)), codes)
    for trial in range(30):
      q = np.zeros(40, np.float32)
      q[rng.choice(40, 4, replace=False)] = rng.normal(size=4)
      full = codes @ q
      for budget in (None, 200):
        r = explain.rank_by_atoms(index, q, 10, budget=budget, block=16)
        if budget is None:
          self.assertTrue(r.certified)
        if r.certified:
          # float32 scores summed in different orders.
          np.testing.assert_allclose(
            r.scores, np.sort(full)[::-1][:10], atol=1e-5
          )
          np.testing.assert_allclose(full[r.docs], r.scores, atol=1e-5)
        else:
          self.assertLessEqual(r.n_read, 200 + 16 * 4)
      if trial == 0:
        # Stopping early is the point: far fewer docs scored than N.
        r = explain.rank_by_atoms(index, q, 10)
        self.assertLess(r.n_scored, 1500)

  def test_planted_codes_route_to_planted_sources(self):
    rng = np.random.default_rng(1)
    D, X, main = _planted(rng)
    alpha = 0.05
    codes, _ = lasso.sparse_encode(X, D, alpha, max_iter=2000, tol=1e-8)
    index = explain.build_index(codes)
    gram = D @ D.T
    for j in (0, 5, 11):
      # A query mostly on atom j, a little on j + 6 (no doc has that pair).
      row = 0.9 * D[j] + 0.3 * D[(j + 6) % 12]
      q = explain.code_queries(row[None], D, alpha, max_iter=2000, tol=1e-8)[0]
      self.assertEqual(explain.top_atoms(q, 1)[0][0], j)
      r = explain.rank_by_atoms(index, q, 6, gram=gram)
      self.assertTrue(r.certified)
      # The six documents planted on atom j, and only they, come first.
      self.assertEqual(set(main[r.docs]), {j})
      exact = explain.rank_exact(X, explain.normalize_rows(row[None])[0], 6)
      self.assertEqual(explain.recall_at(r.docs, exact.docs, 6), 1.0)
      # The library entry point gives the same answer.
      (whole,) = ga.explain(
        row[None], D, index, alpha=alpha, X=X, k=6, max_iter=2000, tol=1e-8
      )
      np.testing.assert_array_equal(whole['atoms'].docs, r.docs)
      np.testing.assert_array_equal(whole['exact'].docs, exact.docs)
      self.assertEqual(whole['top_atoms'][0][0], j)

  def test_query_equal_to_a_document(self):
    rng = np.random.default_rng(2)
    D, X, main = _planted(rng)
    alpha = 0.05
    codes, _ = lasso.sparse_encode(X, D, alpha, max_iter=2000, tol=1e-8)
    index = explain.build_index(codes)
    for doc in (0, 4, 40):
      exact = explain.rank_exact(X, X[doc], 5)
      self.assertEqual(exact.docs[0], doc)
      q = explain.code_queries(X[doc : doc + 1], D, alpha, max_iter=2000)[0]
      r = explain.rank_by_atoms(index, q, 5, gram=D @ D.T)
      full = codes @ q
      # Top tie group: every doc whose score equals the best (docs 0..2 share
      # one planted code); 1e-5 covers the coder's tolerance.
      tie = np.nonzero(full >= full.max() - 1e-5)[0]
      self.assertIn(doc, tie)
      self.assertIn(doc, r.docs[: len(tie)])
      self.assertEqual(set(r.docs[: len(tie)]), set(tie))

  def test_metrics(self):
    labels = ['a', 'a', 'b', 'c']
    self.assertEqual(explain.label_agreement([0, 1, 2], labels, 'a'), 2 / 3)
    self.assertIsNone(explain.label_agreement([], labels, 'a'))
    self.assertEqual(explain.recall_at([3, 1, 0], [0, 1, 2], 3), 2 / 3)
    exact = np.array([4.0, 3.0, 2.0, 1.0, 0.0])
    self.assertAlmostEqual(
      explain.spearman_on_union([0, 1, 2], [3.0, 2.0, 1.0], exact), 1.0
    )
    self.assertLess(
      explain.spearman_on_union([3, 2, 1], [3.0, 2.0, 1.0], exact), 0
    )
    X = explain.normalize_rows(np.array([[1, 0], [0.9, 0.1], [0, 1.0]]))
    docs = explain.kmeans_route(X, np.array([0, 0, 1]), np.array([1.0, 0]), 5)
    self.assertEqual(list(docs), [0, 1])

  def test_bad_input(self):
    index = explain.build_index(np.eye(3, dtype=np.float32))
    with self.assertRaisesRegex(ValueError, 'query_code'):
      explain.rank_by_atoms(index, np.ones(4), 2)
    with self.assertRaisesRegex(ValueError, 'atoms must lie'):
      explain.index_from_csr([0, 1], [5], [1.0], 3)


class ExplainAppTest(absltest.TestCase):
  """The app on a tiny finished run (finetune … atoms)."""

  @classmethod
  def setUpClass(cls):
    tmp = tempfile.mkdtemp()
    cls.overrides = {
      'results_dir': os.path.join(tmp, 'results'),
      'model.tokenizer': tiny_tokenizer.save(os.path.join(tmp, 'tok')),
      **_TINY,
    }
    cls.config = tiny_test.get_config()
    for dotted, value in cls.overrides.items():
      *section, key = dotted.split('.')
      (cls.config[section[0]] if section else cls.config)[key] = value
    pipeline.run(
      cls.config, 'finetune,gradients,curvature,projection,dictionary,atoms'
    )
    cls.run_dir = os.path.join(cls.overrides['results_dir'], 'tiny_test')

  def test_heldout_app_prints_metrics(self):
    flags = [f'--config.{k}={v}' for k, v in self.overrides.items()]
    out = subprocess.run(
      [sys.executable, '-m', 'experiments.explain',
       '--config=configs/tiny_test.py', '--queries=heldout', *flags],
      cwd=_ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    self.assertEqual(out.returncode, 0, out.stderr[-3000:])
    metrics = json.loads(out.stdout.strip().splitlines()[-1])
    for key in (
      'atoms_top10_label_agreement',
      'exact_top10_label_agreement',
      'kmeans_top10_label_agreement',
      'recall_at_10',
      'recall_at_100',
      'spearman',
      'atoms_ms_per_query',
      'exact_ms_per_query',
    ):
      self.assertIn(key, metrics)
    # The held-out split (25 % of 16 documents by a hash of the id).
    self.assertEqual(metrics['n_queries'], 16 - metrics['n_docs'])
    for key in ('atoms', 'exact', 'kmeans'):
      self.assertBetween(metrics[f'{key}_top10_label_agreement'], 0, 1)
    with open(
      os.path.join(self.run_dir, 'explain', 'explained_heldout.json')
    ) as f:
      saved = json.load(f)
    self.assertLen(saved['queries'], 3)
    # The report (artefacts only) shows the saved queries.
    report.write_report(self.run_dir, self.config)
    with open(os.path.join(self.run_dir, 'report.md')) as f:
      text = f.read()
    self.assertIn('## Explaining held-out answers', text)
    for query in saved['queries']:
      self.assertIn(f'**{query["query_id"]}**', text)

  def test_prompt_and_pairs(self):
    # The tiny random model may stop at once (an empty answer is refused
    # with a clear error), so the generated answer is checked to be text and
    # a fixed answer stands in for it.
    ctx = pipeline_explain.RunContext(self.config)
    self.assertIsInstance(pipeline_explain.generate_response(ctx, 'Hi?'), str)
    with mock.patch.object(
      pipeline_explain, 'generate_response', return_value='Yes, 7 is odd.'
    ):
      result = pipeline_explain.run_explain(self.config, prompt='Is 7 odd?')
    (query,) = result['queries']
    self.assertEqual(query['prompt'], 'Is 7 odd?')
    self.assertEqual(query['response'], 'Yes, 7 is odd.')
    self.assertNotEmpty(query['top_atoms'])
    self.assertLen(query['exact_top_docs'], self.config.explain.k)
    path = os.path.join(tempfile.mkdtemp(), 'q.jsonl')
    with open(path, 'w') as f:
      f.write(json.dumps({'prompt': 'Say hi.', 'response': 'Hi!'}) + '\n')
      f.write(json.dumps({'prompt': 'Add 2 and 3.', 'response': '5'}) + '\n')
    result = pipeline_explain.run_explain(self.config, path)
    self.assertEqual(result['metrics']['n_queries'], 2)
    with open(path, 'w') as f:
      f.write(json.dumps({'prompt': 'no response'}) + '\n')
    with self.assertRaisesRegex(ValueError, 'response'):
      pipeline_explain.run_explain(self.config, path)


if __name__ == '__main__':
  absltest.main()
