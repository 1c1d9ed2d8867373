"""Held-out steering verdicts: the statistics and the select-then-test rule."""

import numpy as np
from absl.testing import absltest
from scipy import stats as scipy_stats

from gatoms_jax.method.steering import stats, sweep


class StatsTest(absltest.TestCase):
  def test_mcnemar_matches_the_exact_binomial_test(self):
    rng = np.random.default_rng(0)
    for _ in range(20):
      a = rng.random(40) < 0.6
      b = rng.random(40) < 0.3
      n01, n10 = int(np.sum(a & ~b)), int(np.sum(~a & b))
      want = scipy_stats.binomtest(n01, n01 + n10, 0.5).pvalue
      # Both are exact sums of the same binomial terms: only rounding differs.
      self.assertAlmostEqual(stats.mcnemar_exact(a, b), want, places=12)
    self.assertEqual(stats.mcnemar_exact([True, False], [True, False]), 1.0)

  def test_holm_by_hand(self):
    # Sorted: a 0.01·3 = 0.03; c 0.03·2 = 0.06; b max(0.06, 0.04·1) = 0.06.
    got = stats.holm({'a': 0.01, 'b': 0.04, 'c': 0.03, 'd': None})
    self.assertEqual(got['d'], None)
    np.testing.assert_allclose(
      [got['a'], got['b'], got['c']], [0.03, 0.06, 0.06], rtol=1e-12
    )

  def test_wilson_interval(self):
    lo, hi = stats.wilson_interval(0, 10)
    self.assertEqual(lo, 0.0)
    self.assertAlmostEqual(hi, 27.75, places=1)  # the textbook 0/10 bound
    lo, hi = stats.wilson_interval(5, 10)
    self.assertAlmostEqual(lo + hi, 100.0, places=9)  # symmetric at p = 1/2

  def test_split_halves_stratified_and_disjoint(self):
    invites = [True] * 7 + [False] * 5
    sel, test = stats.split_halves(invites)
    self.assertEqual(sorted(np.concatenate([sel, test])), list(range(12)))
    self.assertEqual(sum(invites[i] for i in sel), 4)
    self.assertEqual(sum(invites[i] for i in test), 3)

  def test_paired_interval_holds_the_observed_shift(self):
    a = np.arange(30) % 3 != 0
    b = np.arange(30) % 5 == 0
    lo, hi = stats.paired_shift_interval(a, b)
    shift = 100 * (a.mean() - b.mean())
    self.assertLess(lo, shift)
    self.assertGreater(hi, shift)


def _record(outputs, coefficient=0.0, kl=0.0):
  return {
    'outputs': list(outputs),
    'kl': kl,
    'degenerate': 0.0,
    'coefficient': coefficient,
  }


def _result(n, atom_yes, null_yes):
  """A yes/no sweep of n prompts at one KL level: the baseline never says
  yes/no; the atom's toward variant does on atom_yes prompts, the null's on
  null_yes prompts."""
  no, yes = 'Here is a long answer.', 'Yes.'
  base = [no] * n

  def outs(k):
    return [yes] * k + [no] * (n - k)

  return {
    'behavior': 'yes_no',
    'invites': [True] * n,
    'baseline': _record(base),
    'directions': {
      'atom1': {
        'variants': {
          '+0.5': _record(outs(atom_yes), 1.0, 0.5),
          '-0.5': _record(base, -1.0, 0.5),
        }
      },
      'random0': {
        'variants': {
          '+0.5': _record(outs(null_yes), 1.0, 0.5),
          '-0.5': _record(base, -1.0, 0.5),
        }
      },
    },
  }


class HeldOutTest(absltest.TestCase):
  def test_atom_beyond_null_steers_and_a_matched_null_does_not(self):
    strong = sweep.held_out_verdicts(_result(40, 40, 0), ['atom1'], ['random0'])
    tie = sweep.held_out_verdicts(_result(40, 40, 40), ['atom1'], ['random0'])
    sweep.apply_holm({'a': strong, 'b': tie})
    toward = strong['toward']
    self.assertEqual((toward['atom'], toward['kl_level']), ('atom1', 0.5))
    self.assertEqual(toward['n_test'], 20)
    self.assertAlmostEqual(toward['shift_pp'], 100.0)
    # 20 discordant test prompts all one way: p = 2 · 2^-20; Holm over 2.
    self.assertAlmostEqual(toward['p_value'], 2 * 0.5**20)
    self.assertAlmostEqual(toward['p_holm'], 4 * 0.5**20)
    self.assertTrue(toward['steers'])
    self.assertEqual(tie['toward']['p_value'], 1.0)
    self.assertFalse(tie['toward']['steers'])

  def test_a_variant_moving_the_rate_the_asked_way_is_preferred(self):
    # Baseline 25% yes. "away" at level 0.5: the atom's -0.5 lowers the rate
    # to 0 (margin 0 over a null that does the same); at level 1 its +1
    # raises it to 50% while both nulls raise it to 100% (margin +50 by the
    # numbers alone). Lowering the rate must win over "raising it less".
    no, yes = 'Here is a long answer.', 'Yes.'
    rate = lambda k: _record([yes] * k + [no] * (40 - k))
    res = {
      'behavior': 'yes_no',
      'invites': [True] * 40,
      'baseline': rate(10),
      'directions': {
        'atom1': {'variants': {'-0.5': rate(0), '+1': rate(20)}},
        'random0': {
          'variants': {
            '+0.5': rate(10),
            '-0.5': rate(0),
            '+1': rate(40),
            '-1': rate(40),
          }
        },
      },
    }
    for name in res['directions']:
      for key, rec in res['directions'][name]['variants'].items():
        rec.update(coefficient=float(key), kl=abs(float(key)) / 2)
    away = sweep.held_out_verdicts(res, ['atom1'], ['random0'])['away']
    self.assertEqual(away['coefficient'], -0.5)
    self.assertLess(away['shift_pp'], 0)

  def test_selection_and_test_halves_are_separate(self):
    # The atom says yes on the first half of the prompts in order only: the
    # selection half (even positions) and test half (odd) see the same rate.
    res = _result(40, 20, 0)
    verdict = sweep.held_out_verdicts(res, ['atom1'], ['random0'])['toward']
    self.assertAlmostEqual(verdict['rate'], 50.0)
    self.assertEqual(verdict['n_test'], 20)


if __name__ == '__main__':
  absltest.main()
