"""Documents that teach two behaviours: atoms vs k-means, one measure."""

import random

import numpy as np
from absl.testing import absltest

from gatoms_jax.demo import mixture
from gatoms_jax.demo import mixture_compositions as mc
from gatoms_jax.method import atoms, compositions, dictionary
from gatoms_jax.method.steering import behaviors

_DETECTOR_OF_TASK = {
  'yes_no': 'yes_no',
  'bullets': 'bullets',
  'numbered': 'numbered',
  'code': 'code',
  'missing_input': 'refusal',
}


def _planted(n_dirs=6, dim=48, n_single=40, n_pairs=120, noise=0.05, seed=0):
  """Rows along planted unit directions: single-task rows use one direction,
  compositional rows the sum of two (random positive weights)."""
  rng = np.random.default_rng(seed)
  dirs = np.linalg.qr(rng.standard_normal((dim, n_dirs)))[0].T
  rows, label_sets = [], []
  for i in range(n_dirs):
    for _ in range(n_single):
      rows.append(rng.uniform(0.8, 1.2) * dirs[i])
      label_sets.append((f't{i}',))
  for _ in range(n_pairs):
    i, j = rng.choice(n_dirs, 2, replace=False)
    w = rng.uniform(0.7, 1.3, 2)
    rows.append(w[0] * dirs[i] + w[1] * dirs[j])
    label_sets.append((f't{min(i, j)}', f't{max(i, j)}'))
  X = np.asarray(rows) + noise * rng.standard_normal((len(rows), dim))
  return X.astype(np.float32), label_sets


class CompositionMeasureTest(absltest.TestCase):
  def test_atoms_name_both_directions_and_kmeans_at_most_one(self):
    X, label_sets = _planted()
    ids = list(range(len(X)))
    labels = ['+'.join(s) for s in label_sets]
    cosine = atoms.cosine_fn_from_rows(X, ids)
    result = dictionary.learn_dictionary(
      X, n_atoms=8, alpha=0.1, n_iter=30, init='data', progress=False
    )
    codes = np.asarray(result.codes)
    summaries = atoms.characterize_atoms(
      codes, ids, None, labels, mean_pairwise_cosine=cosine,
      top_n=20, show_progress=False,
    )  # fmt: skip
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    km = atoms.kmeans(Xn, 8, seed=0)
    clusters = atoms.kmeans_cluster_summaries(
      km.assignments, Xn, labels, cosine, doc_ids=ids, top_n=20
    )
    got = compositions.composition_measures(
      codes, km.assignments, ids, label_sets, summaries, clusters
    )
    both = got['both_labels_recovered_fraction']
    self.assertGreaterEqual(both['atoms'], 0.9)
    # One cluster per document names one task type at most.
    self.assertEqual(both['kmeans'], 0.0)
    # Planted rows use exactly their two directions: a third, untaught
    # type is named rarely (6 types: each document has 2 × 4 wrong pairs).
    wrong = got['wrong_type_named_fraction']
    self.assertLess(wrong['atoms'], 0.1)
    self.assertEqual(wrong['kmeans'], 0.0)
    active = got['mean_active_atoms']
    self.assertGreater(active['compositional'], active['single'])
    self.assertEqual(got['n_compositional_docs'], 120)

  def test_wrong_type_named_counts_untaught_types(self):
    labels_of_unit = {0: 'a', 1: 'b', 2: 'c', 3: None}
    sets = [('a', 'b'), ('a', 'b'), ('c',)]
    # Doc 0 uses units a, b, c: (a, c) and (b, c) are named → 2 of 2 pairs.
    # Doc 1 uses a and the unlabelled unit: 0 of 2. Single-type docs skip.
    got = compositions.wrong_type_named(
      [[0, 1, 2], [0, 3], [2]], labels_of_unit, sets
    )
    self.assertAlmostEqual(got, 0.5)
    self.assertIsNone(
      compositions.wrong_type_named([[0]], labels_of_unit, [('a',)])
    )

  def test_unit_label_counts_every_taught_type(self):
    summaries = [
      {'atom': 0, 'top_doc_ids': ['a', 'b', 'c']},
      {'atom': 1, 'top_doc_ids': ['a', 'd']},
    ]
    sets = {'a': ('x', 'y'), 'b': ('x',), 'c': ('x',), 'd': ('z',)}
    got = compositions.unit_labels(summaries, sets, purity_threshold=0.8)
    self.assertEqual(got, {0: 'x', 1: None})  # atom 1: x, y, z at 1/2 each
    self.assertEqual(
      compositions.both_labels_recovered(
        [[0, 1], [0]], {0: 'x', 1: 'y'}, [('x', 'y'), ('x', 'z')]
      ),
      0.5,
    )


class CompositionalMixtureTest(absltest.TestCase):
  def test_both_behaviours_detected_in_every_composition(self):
    for name, (tasks, make) in mc.COMPOSITIONS.items():
      for i in range(30):
        user, answer = make(random.Random(f'{name}:{i}'))
        self.assertTrue(user and answer)
        for task in tasks:
          if task in _DETECTOR_OF_TASK:
            detect = behaviors.get_detector(_DETECTOR_OF_TASK[task])
            self.assertTrue(detect(answer), (name, task, answer))

  def test_fraction_labels_and_prefix_stability(self):
    docs = mixture.generate_mixture(600, seed=1, compositional_fraction=0.25)
    multi = [d for d in docs if len(d.label_set) == 2]
    # 600 seeded Bernoulli(0.25) draws: ~150 ± 11 (sd); 4 sd either side.
    self.assertBetween(len(multi), 105, 195)
    for d in multi:
      self.assertEqual(
        d.label,
        mc.COMPOSITIONS[d.label][0][0] + '+' + mc.COMPOSITIONS[d.label][0][1],
      )
      self.assertEqual(d.label_set, mc.COMPOSITIONS[d.label][0])
    shorter = mixture.generate_mixture(300, seed=1, compositional_fraction=0.25)
    self.assertEqual(shorter, docs[:300])
    plain = mixture.generate_mixture(60, seed=1)
    self.assertTrue(all(len(d.label_set) == 1 for d in plain))


if __name__ == '__main__':
  absltest.main()
