"""Tests of gatoms_jax.method.atoms: characterisation, label recovery, k-means."""

import json
import os
import tempfile

import numpy as np
from absl.testing import absltest, parameterized

from gatoms_jax.method import atoms
from gatoms_jax.method.steering import behaviors


def _fixture():
  """8 documents whose raw gradients have known pairwise cosines.

  Docs 0-3 have gradient e0 + e_{i+1}: norm √2, pairwise dot 1, so every
  pairwise cosine is exactly 1/2. Doc 5 = 2·doc 4 (cosine 1). Docs 6, 7 are
  orthogonal to everything.
  """
  grads = np.zeros((8, 8))
  for i in range(4):
    grads[i, 0] = 1.0
    grads[i, i + 1] = 1.0
  grads[4, 5] = 1.0
  grads[5, 5] = 2.0
  grads[6, 6] = 1.0
  grads[7, 7] = 1.0
  codes = np.zeros((8, 4))
  # Atom 0: docs 0-3 by |coef| (one negative), plus a weak doc 6.
  codes[[0, 1, 2, 3, 6], 0] = [0.9, -0.8, 0.5, 0.3, 0.1]
  codes[[4, 5], 1] = [0.4, 0.6]  # atom 1: coherence 1
  codes[7, 2] = 1.0  # atom 2: one active doc, no coherence
  codes[[0, 4], 3] = [0.2, -0.2]  # atom 3: coherence 0
  doc_ids = [f'doc{i}' for i in range(8)]
  responses = [
    'The volcano erupted and lava covered the valley.',
    'A volcano forms where magma reaches the surface.',
    'Lava from the volcano cooled into basalt.',
    'Volcano eruptions release ash and gas.',
    '- bread\n- butter',
    '- milk\n- eggs',
    'Paris is the capital of France.',
    'Yes. ' + 'Water boils at one hundred degrees at sea level. ' * 3,
  ]
  labels = ['geo', 'geo', 'geo', 'food', 'list', 'list', 'city', 'city']
  return grads, codes, doc_ids, responses, labels


class CosineTest(absltest.TestCase):
  def test_mean_pairwise_cosine(self):
    rows = np.array([[1.0, 0.0], [0.0, 3.0], [2.0, 2.0]])
    # cos pairs: 0, 1/√2, 1/√2.
    expected = (0.0 + 2 * 2**-0.5) / 3
    # float64 with a handful of operations: agreement to ~1e-15.
    self.assertAlmostEqual(atoms.mean_pairwise_cosine(rows), expected, 12)
    self.assertEqual(atoms.mean_pairwise_cosine(np.zeros((2, 3))), 0.0)
    with self.assertRaises(ValueError):
      atoms.mean_pairwise_cosine(rows[:1])


class CharacterizeTest(absltest.TestCase):
  def setUp(self):
    super().setUp()
    grads, codes, self.doc_ids, self.responses, labels = _fixture()
    self.summaries = atoms.characterize_atoms(
      codes,
      self.doc_ids,
      self.responses,
      labels,
      mean_pairwise_cosine=atoms.cosine_fn_from_rows(grads, self.doc_ids),
      top_n=4,
      n_keywords=3,
      excerpt_chars=20,
      purity_threshold=0.7,
      show_progress=False,
    )
    self.by_atom = {s['atom']: s for s in self.summaries}

  def test_ranking_and_coherence(self):
    self.assertEqual([s['atom'] for s in self.summaries], [1, 0, 3, 2])
    # Exact constructions (see _fixture); float64 rounding only.
    self.assertAlmostEqual(self.by_atom[1]['coherence'], 1.0, 12)
    self.assertAlmostEqual(self.by_atom[0]['coherence'], 0.5, 12)
    self.assertAlmostEqual(self.by_atom[3]['coherence'], 0.0, 12)
    self.assertIsNone(self.by_atom[2]['coherence'])

  def test_sides_and_counts(self):
    s = self.by_atom[0]
    self.assertEqual(s['n_active'], 5)
    self.assertEqual(s['top_doc_ids'], ['doc0', 'doc1', 'doc2', 'doc3'])
    self.assertEqual(
      [d['doc_id'] for d in s['top_positive']], ['doc0', 'doc2', 'doc3', 'doc6']
    )
    self.assertEqual([d['doc_id'] for d in s['top_negative']], ['doc1'])
    self.assertEqual(s['top_negative'][0]['coef'], -0.8)
    self.assertTrue(all(d['coef'] > 0 for d in s['top_positive']))
    self.assertEqual(self.by_atom[2]['n_active'], 1)
    for d in s['top_positive']:
      self.assertLessEqual(len(d['excerpt']), 20)
    self.assertTrue(s['top_positive'][0]['excerpt'].endswith('…'))

  def test_purity_and_keywords(self):
    s = self.by_atom[0]
    self.assertEqual(s['majority_label'], 'geo')
    self.assertEqual(s['purity'], 0.75)
    self.assertTrue(s['pure'])  # threshold 0.7
    self.assertEqual(s['label_counts'], {'food': 1, 'geo': 3})
    self.assertEqual(s['n_label_values'], 4)
    self.assertEqual(s['keywords'][0], 'volcano')
    self.assertIn('lava', s['keywords'])
    self.assertEqual(self.by_atom[1]['purity'], 1.0)

  def test_label_recovery(self):
    self.assertEqual(
      atoms.label_recovery(self.summaries, 1, 0.7), (4, {'list'})
    )
    self.assertEqual(
      atoms.label_recovery(self.summaries, 4, 0.7), (4, {'list', 'geo', 'city'})
    )
    self.assertEqual(
      atoms.label_recovery(self.summaries, 4, 0.8), (4, {'list', 'city'})
    )

  def test_save_and_load(self):
    path = os.path.join(tempfile.mkdtemp(), 'sub', 'atoms.json')
    atoms.save_atom_summaries(path, self.summaries, meta={'top_n': 4})
    with open(path) as f:
      payload = json.load(f)
    self.assertEqual(payload['meta'], {'top_n': 4})
    self.assertEqual(atoms.load_atom_summaries(path), self.summaries)
    self.assertEqual(os.listdir(os.path.dirname(path)), ['atoms.json'])

  def test_matching_uses_full_responses(self):
    tops = atoms.atom_top_responses(
      self.summaries, self.doc_ids, self.responses
    )
    coherence = {s['atom']: s['coherence'] for s in self.summaries}
    ranked = behaviors.match_atoms_to_behaviors(
      tops, ['bullets', 'yes_no'], tiebreak=coherence
    )
    self.assertEqual(ranked['bullets'][0], (1, 1.0))
    self.assertEqual(ranked['yes_no'][0], (2, 1.0))
    neg = atoms.atom_top_responses(
      self.summaries, self.doc_ids, self.responses, side='negative'
    )
    self.assertEqual(neg[0], [self.responses[1]])

  def test_without_labels_or_responses(self):
    grads, codes, *_ = _fixture()
    summaries = atoms.characterize_atoms(
      codes,
      None,
      None,
      mean_pairwise_cosine=atoms.cosine_fn_from_rows(grads),
      top_n=4,
      show_progress=False,
    )
    s = {x['atom']: x for x in summaries}[0]
    self.assertEqual(s['top_doc_ids'], [0, 1, 2, 3])
    self.assertIsNone(s['purity'])
    self.assertEqual(s['keywords'], [])
    with self.assertRaisesRegex(ValueError, 'n_label_values'):
      atoms.label_recovery(summaries)


def _blobs(seed=0, per=30, dim=6):
  rng = np.random.default_rng(seed)
  centers = np.eye(dim)[:3] * 5.0
  x = np.concatenate(
    [c + rng.normal(scale=0.5, size=(per, dim)) for c in centers]
  )
  labels = np.repeat(['x', 'y', 'z'], per)
  return x, labels


class KMeansTest(parameterized.TestCase):
  @parameterized.parameters('cosine', 'euclidean')
  def test_recovers_blobs(self, metric):
    x, labels = _blobs()
    res = atoms.kmeans(x, 3, seed=0, metric=metric)
    for c in range(3):
      self.assertLen(set(labels[res.assignments == c]), 1)
    self.assertLen(set(res.assignments), 3)
    again = atoms.kmeans(x, 3, seed=0, metric=metric)
    np.testing.assert_array_equal(res.assignments, again.assignments)
    if metric == 'cosine':
      # Unit centroids up to float64 rounding.
      np.testing.assert_allclose(np.linalg.norm(res.centroids, axis=1), 1.0)

  def test_more_restarts_never_worse(self):
    x, _ = _blobs(seed=1)
    one = atoms.kmeans(x, 5, n_init=1, seed=3)
    many = atoms.kmeans(x, 5, n_init=4, seed=3)
    self.assertLessEqual(many.inertia, one.inertia)

  def test_bad_k(self):
    with self.assertRaises(ValueError):
      atoms.kmeans(np.ones((3, 2)), 4)

  def test_kmeans_label_recovery(self):
    x, labels = _blobs()
    res = atoms.kmeans(x, 3, seed=0)
    raw = atoms.cosine_fn_from_rows(x)
    n_values, recovered = atoms.kmeans_label_recovery(
      res.assignments, x, labels, raw, top_n=10, n_top=3
    )
    self.assertEqual((n_values, recovered), (3, {'x', 'y', 'z'}))

  def test_cluster_summaries_read_nearest_members(self):
    x, labels = _blobs(per=12)
    assign = np.repeat([0, 1, 2], 12)
    # Put one far-off point in cluster 0: it must not be among the top.
    x[0] = x[0] * 0.2 + np.eye(6)[1] * 4
    summaries = atoms.kmeans_cluster_summaries(
      assign, x, labels, atoms.cosine_fn_from_rows(x), top_n=5
    )
    c0 = {s['atom']: s for s in summaries}[0]
    self.assertEqual(c0['n_active'], 12)
    self.assertLen(c0['top_doc_ids'], 5)
    self.assertNotIn(0, c0['top_doc_ids'])
    coefs = [d['coef'] for d in c0['top_positive']]
    self.assertEqual(coefs, sorted(coefs, reverse=True))
    self.assertEqual(c0['top_negative'], [])


class KnnAgreementTest(absltest.TestCase):
  def test_separated_clusters_agree_and_random_labels_do_not(self):
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((3, 16)) * 10
    x = np.repeat(centers, 40, axis=0) + rng.standard_normal((120, 16))
    labels = np.repeat(['a', 'b', 'c'], 40)
    mean, per = atoms.knn_label_agreement(x, labels, k=5, chunk=7)
    self.assertEqual(mean, 1.0)
    self.assertEqual(per, {'a': 1.0, 'b': 1.0, 'c': 1.0})
    shuffled = rng.permutation(labels)
    mean, _ = atoms.knn_label_agreement(x, shuffled, k=5)
    # Chance is ~1/3 (39 of 119 others share a row's label); 120 rows × 5
    # neighbours give a standard error of ~0.02 around it.
    self.assertLess(abs(mean - 39 / 119), 0.1)

  def test_subsample_and_tiny_inputs(self):
    x = np.eye(6)[[0, 0, 1, 1, 2, 2]] + 0.01 * np.arange(6)[:, None]
    labels = list('aabbcc')
    got = atoms.knn_label_agreement(x, labels, k=1, max_rows=4, seed=3)
    keep = np.sort(np.random.default_rng(3).choice(6, 4, replace=False))
    want = atoms.knn_label_agreement(x[keep], [labels[i] for i in keep], k=1)
    self.assertEqual(got, want)
    with self.assertRaisesRegex(ValueError, 'at least 2 rows'):
      atoms.knn_label_agreement(x[:1], ['a'])


if __name__ == '__main__':
  absltest.main()
