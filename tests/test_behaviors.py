"""Tests of gatoms_jax.method.steering.behaviors, gatoms_jax.demo.prompt_sets and gatoms_jax.method.text."""

import json
import math
import os
import tempfile

import numpy as np
from absl.testing import absltest, parameterized

from gatoms_jax.method.steering import behaviors
from gatoms_jax.demo import prompt_sets
from gatoms_jax.method import text


class DetectorTest(parameterized.TestCase):
  @parameterized.parameters(
    ('Yes.', True),
    ('yes, it is.', True),
    ('NO', True),
    ('**No**, penguins cannot fly.', True),
    ('\n\n  True: sound is faster in water.', True),
    ('> False.', True),
    ('"Yes," the answer is.', True),
    ('Yesterday it rained.', False),
    ('Nothing is certain.', False),
    ('Not really.', False),
    ('Truely...', False),
    ('1. Yes', False),
    ('The answer is yes.', False),
    ('', False),
    ('Sure.\nYes.', False),
  )
  def test_yes_no(self, output, expected):
    self.assertEqual(behaviors.DETECTORS['yes_no'](output), expected)

  @parameterized.parameters(
    ('Here:\n```python\nprint(1)\n```', True),
    ('```\nunterminated', True),
    ('Use the print function: print(1).', False),
    ('Inline `code` only.', False),
  )
  def test_code(self, output, expected):
    self.assertEqual(behaviors.DETECTORS['code'](output), expected)

  @parameterized.parameters(
    ("Sure! Please provide the article you'd like me to summarize.", True),
    ('Could you share the code you want me to fix?', True),
    ('I need the text you want translated.', True),
    ("I'd need to see the essay first.", True),
    ("You haven't provided any text.", True),
    ('You haven’t provided the paragraph yet.', True),
    ('It seems the document is missing.', True),
    ('No article was attached to your message.', True),
    ("I don't see any attached file.", True),
    ("Without the passage, I can't answer that.", True),
    ("It looks like the table didn't come through.", True),
    ('Here is a summary: the article argues that cats are great.', False),
    ('Please note that these numbers are approximate.', False),
    ('Yes. The Pacific is the largest ocean.', False),
    ("```python\nn = input('Please provide a number: ')\n```", False),
  )
  def test_refusal(self, output, expected):
    self.assertEqual(behaviors.DETECTORS['refusal'](output), expected)

  @parameterized.parameters(
    ('- apples\n- pears', True),
    ('Fruit:\n  * apples\n  * pears', True),
    ('• one\n• two\n• three', True),
    ('- only one bullet', False),
    ('- one\nand then prose', False),
    ('**Bold** start\n**Another** bold line', False),
    ('---\n---', False),
    ('-no space\n-no space', False),
    ('```diff\n- old\n- older\n```', False),
  )
  def test_bullets(self, output, expected):
    self.assertEqual(behaviors.DETECTORS['bullets'](output), expected)

  @parameterized.parameters(
    ('1) a\n2) b', True),
    ('Steps:\n1. Boil water.\n2. Add tea.\n3. Wait.', True),
    ('  1. indented\n  2. items', True),
    ('1. only one item', False),
    ('3.14 is pi\n2.71 is e', False),
    ('1999. A year\n2000. Another', False),
    ('a 1. b\nc 2. d', False),
  )
  def test_numbered(self, output, expected):
    self.assertEqual(behaviors.DETECTORS['numbered'](output), expected)

  def test_registry_names(self):
    self.assertEqual(
      set(behaviors.DETECTORS),
      {'yes_no', 'code', 'refusal', 'bullets', 'numbered'},
    )


class PromptSetTest(parameterized.TestCase):
  @parameterized.parameters(*sorted(behaviors.DETECTORS))
  def test_builtin_sizes_and_uniqueness(self, name):
    ps = behaviors.builtin_prompt_set(name)
    self.assertEqual(ps.behavior, name)
    self.assertGreaterEqual(len(ps.inviting), 60)
    self.assertGreaterEqual(len(ps.controls), 40)
    self.assertLen(set(ps.texts), len(ps.texts))
    for t in ps.texts:
      self.assertEqual(t, t.strip())
      self.assertNotEmpty(t)

  def test_no_prompt_is_both_invite_and_control_anywhere(self):
    invites = {t for inv, _ in prompt_sets.PROMPTS.values() for t in inv}
    controls = {t for _, ctl in prompt_sets.PROMPTS.values() for t in ctl}
    self.assertEmpty(invites & controls)

  @parameterized.parameters(1, 2, 10, 37, 100, 1000)
  def test_limit_keeps_ratio_and_is_deterministic(self, limit):
    full = behaviors.builtin_prompt_set('bullets')
    ps = behaviors.builtin_prompt_set('bullets', limit)
    self.assertLen(ps, min(limit, len(full)))
    self.assertEqual(ps, behaviors.builtin_prompt_set('bullets', limit))
    self.assertTrue(set(ps.texts) <= set(full.texts))
    if 2 <= limit < len(full):
      expected = limit * len(full.inviting) / len(full)
      # Rounding, plus the at-least-one-of-each rule for tiny limits.
      self.assertLessEqual(abs(len(ps.inviting) - expected), 1.0)
      self.assertNotEmpty(ps.controls)

  def test_unknown_builtin(self):
    with self.assertRaisesRegex(ValueError, 'bullet'):
      behaviors.builtin_prompt_set('bullet')

  def test_default_limit_matches_config(self):
    from configs.common import base_config

    steering = base_config().steering
    sets = behaviors.load_prompt_sets(
      steering.behaviors, steering.prompts_path, steering.prompts_per_behavior
    )
    for ps in sets.values():
      self.assertLen(ps, steering.prompts_per_behavior)


class JsonlTest(parameterized.TestCase):
  def _write(self, lines):
    fd, path = tempfile.mkstemp(suffix='.jsonl')
    with os.fdopen(fd, 'w') as f:
      f.write('\n'.join(lines) + '\n')
    self.addCleanup(os.remove, path)
    return path

  def test_load_filters_by_behavior(self):
    path = self._write(
      [
        json.dumps({'prompt': 'Is it?', 'invites': True, 'behavior': 'yes_no'}),
        '',
        json.dumps({'prompt': 'Tell me.', 'invites': False}),
        json.dumps({'prompt': 'Code!', 'invites': True, 'behavior': 'code'}),
      ]
    )
    ps = behaviors.load_prompt_jsonl(path, 'yes_no')
    self.assertEqual(ps.behavior, 'yes_no')
    self.assertEqual(ps.inviting, ('Is it?',))
    self.assertEqual(ps.controls, ('Tell me.',))
    code = behaviors.load_prompt_jsonl(path, 'code')
    self.assertEqual(code.texts, ('Tell me.', 'Code!'))

  def test_behavior_inferred_from_single_tag(self):
    path = self._write(
      [
        json.dumps({'prompt': 'a', 'invites': True, 'behavior': 'numbered'}),
        json.dumps({'prompt': 'b', 'invites': False}),
      ]
    )
    self.assertEqual(behaviors.load_prompt_jsonl(path).behavior, 'numbered')

  @parameterized.named_parameters(
    ('bad_json', '{"prompt": "x", "invites": tru}', 'invalid JSON'),
    ('not_object', '["x", true]', 'JSON object'),
    ('no_prompt', '{"invites": true}', '"prompt"'),
    ('empty_prompt', '{"prompt": "  ", "invites": true}', '"prompt"'),
    ('no_invites', '{"prompt": "x"}', 'missing "invites"'),
    ('int_invites', '{"prompt": "x", "invites": 1}', 'true or false'),
    (
      'bad_behavior',
      '{"prompt": "x", "invites": true, "behavior": "bullet"}',
      'unknown "behavior"',
    ),
    ('duplicate', '{"prompt": "ok", "invites": false}', 'duplicate'),
  )
  def test_errors_name_file_and_line(self, bad_line, message):
    good = json.dumps({'prompt': 'ok', 'invites': True})
    path = self._write([good, good.replace('ok', 'fine'), bad_line])
    with self.assertRaisesRegex(ValueError, message) as cm:
      behaviors.load_prompt_jsonl(path, 'code')
    self.assertIn(f'{path}:3', str(cm.exception))

  def test_no_prompts_left_names_file(self):
    path = self._write(
      [json.dumps({'prompt': 'a', 'invites': True, 'behavior': 'code'})]
    )
    with self.assertRaisesRegex(ValueError, 'no prompts') as cm:
      behaviors.load_prompt_jsonl(path, 'bullets')
    self.assertIn(path, str(cm.exception))

  def test_ambiguous_behavior(self):
    path = self._write(
      [
        json.dumps({'prompt': 'a', 'invites': True, 'behavior': 'code'}),
        json.dumps({'prompt': 'b', 'invites': True, 'behavior': 'bullets'}),
      ]
    )
    with self.assertRaisesRegex(ValueError, 'pass behavior='):
      behaviors.load_prompt_jsonl(path)


class DegeneracyTest(parameterized.TestCase):
  @parameterized.named_parameters(
    ('loop', 'I am here. ' * 20, True),
    ('single_token_loop', 'the ' * 40, True),
    ('collapsed_vocab', ' '.join(['a', 'b', 'c', 'a', 'c', 'b'] * 6), True),
    ('empty', '   ', True),
    ('short_answer', 'Yes.', False),
    (
      'prose',
      'The Pacific Ocean is the largest and deepest of the five oceans. It '
      'covers about a third of the surface of the planet and reaches nearly '
      'eleven kilometres at the Mariana Trench.',
      False,
    ),
    (
      'list',
      '- Drink water regularly\n- Sleep at least seven hours\n- Walk every '
      'day\n- Eat vegetables with each meal\n- Limit screens before bed',
      False,
    ),
  )
  def test_is_degenerate(self, output, expected):
    self.assertEqual(text.is_degenerate(output), expected)

  def test_repetition_fraction(self):
    outs = ['ok ' * 30, 'Yes.', 'The cat sat on the mat and then slept.', '']
    # 'ok'*30 (collapsed) and '' (empty) are degenerate: 2 of 4.
    self.assertEqual(behaviors.repetition_fraction(outs), 0.5)
    self.assertEqual(
      behaviors.repetition_fraction(outs, empty_is_degenerate=False), 0.25
    )

  def test_coverage_of_exact_loop(self):
    tokens = ['a', 'b', 'c'] * 4
    # Every 4-gram of a period-3 loop of length 12 repeats 3 times.
    self.assertEqual(text.repeated_ngram_coverage(tokens, 4, 3), 1.0)
    self.assertEqual(text.repeated_ngram_coverage(tokens, 4, 4), 0.0)


class SweepTest(parameterized.TestCase):
  def test_detection_rate(self):
    outs = ['- a\n- b', '- a', '* x\n* y', 'prose']
    self.assertEqual(behaviors.detection_rate(outs, 'bullets'), 50.0)
    self.assertEqual(behaviors.detection_rate(outs, lambda s: True), 100.0)
    with self.assertRaises(ValueError):
      behaviors.detection_rate([], 'bullets')

  def test_mean_kl_matches_closed_form(self):
    rng = np.random.default_rng(0)
    logits_p = rng.normal(size=(2, 3, 5))
    logits_q = rng.normal(size=(2, 3, 5))
    mask = np.array([[1, 1, 0], [0, 1, 1]])

    def log_softmax(x):
      return x - np.log(np.exp(x).sum(-1, keepdims=True))

    lp, lq = log_softmax(logits_p), log_softmax(logits_q)
    per_pos = (np.exp(lp) * (lp - lq)).sum(-1)
    expected = per_pos[mask == 1].mean()
    # float64 throughout: only summation-order differences remain.
    self.assertAlmostEqual(behaviors.mean_kl(lp, lq, mask), expected, 12)
    # Logits are renormalised, so they give the same value.
    self.assertAlmostEqual(
      behaviors.mean_kl(logits_p, logits_q, mask), expected, 12
    )
    self.assertEqual(behaviors.mean_kl(lp, lp, mask), 0.0)

  def test_mean_kl_zero_probabilities(self):
    with np.errstate(divide='ignore'):
      base = np.log(np.array([[[1.0, 0.0]]]))
      variant = np.log(np.array([[[0.5, 0.5]]]))
      # KL = 1 * log(1 / 0.5); the zero-probability token contributes 0.
      self.assertAlmostEqual(
        behaviors.mean_kl(base, variant, np.ones((1, 1))), math.log(2), 12
      )
      self.assertEqual(
        behaviors.mean_kl(variant, base, np.ones((1, 1))), math.inf
      )
    with self.assertRaises(ValueError):
      behaviors.mean_kl(base, variant, np.zeros((1, 1)))


def _sweep(rates, kl=0.1, degenerate=0.0):
  return {a: {'rate': r, 'kl': kl, 'degenerate': degenerate} for a, r in rates}


class VerdictTest(parameterized.TestCase):
  def test_steers(self):
    atom = _sweep([(0.0, 10.0), (1.0, 15.0), (2.0, 40.0), (-2.0, 5.0)])
    controls = [_sweep([(1.0, 12.0), (2.0, 14.0)]), _sweep([(-2.0, 20.0)])]
    v = behaviors.steering_verdict(atom, controls)
    self.assertTrue(v['steers'])
    self.assertEqual(v['alpha'], 2.0)
    self.assertEqual(v['shift_pp'], 30.0)
    # Control at -2 (shift +10) counts for |α| = 2: the largest is 10.
    self.assertEqual(v['control_shift_pp'], 10.0)
    by_alpha = {r['alpha']: r for r in v['per_alpha']}
    self.assertFalse(by_alpha[1.0]['passed'])  # shift 5 < 10
    self.assertFalse(by_alpha[-2.0]['passed'])  # decreases

  def test_random_control_as_strong(self):
    atom = _sweep([(0.0, 10.0), (2.0, 40.0)])
    controls = [_sweep([(2.0, 37.0)])]
    v = behaviors.steering_verdict(atom, controls)
    self.assertFalse(v['steers'])
    self.assertIn('random control', v['per_alpha'][0]['reasons'][0])

  @parameterized.named_parameters(
    ('kl', dict(kl=3.0), 'kl'),
    ('degenerate', dict(degenerate=0.5), 'degenerate'),
  )
  def test_guards(self, guard, reason):
    atom = _sweep([(2.0, 60.0)], **guard)
    v = behaviors.steering_verdict(atom, [_sweep([(2.0, 10.0)])], 10.0)
    self.assertFalse(v['steers'])
    self.assertIn(reason, ' '.join(v['per_alpha'][0]['reasons']))

  def test_either_compares_controls_in_the_atoms_direction(self):
    # Baseline 50. The random control breaks the model at level 0.8 (rate
    # → 10): that is a decrease of 40, which must not block an atom that
    # INCREASES the rate by 35, but must block one that decreases it by 35.
    controls = [_sweep([(0.8, 10.0), (-0.8, 45.0)])]
    up = _sweep([(0.8, 85.0)])
    v = behaviors.steering_verdict(
      up, controls, 50.0, 30.0, 10.0, direction='either'
    )
    self.assertTrue(v['steers'])
    self.assertEqual(v['control_shift_pp'], -5.0)  # best random increase
    down = _sweep([(-0.8, 15.0)])
    v = behaviors.steering_verdict(
      down, controls, 50.0, 30.0, 10.0, direction='either'
    )
    self.assertFalse(v['steers'])
    self.assertEqual(v['per_alpha'][0]['control_effect_pp'], 40.0)

  def test_decrease_and_missing_controls(self):
    atom = _sweep([(0.0, 80.0), (-1.0, 30.0)])
    v = behaviors.steering_verdict(atom, [], direction='decrease')
    self.assertFalse(v['steers'])  # no control at |α| = 1
    v = behaviors.steering_verdict(
      atom, [], direction='decrease', require_controls=False
    )
    self.assertTrue(v['steers'])
    self.assertEqual(v['shift_pp'], -50.0)
    with self.assertRaises(ValueError):
      behaviors.steering_verdict(_sweep([(1.0, 5.0)]), [])


class MatchTest(absltest.TestCase):
  def test_bullet_atom_ranks_first(self):
    tops = {
      0: ['Yes.', 'No, it is not.', 'Yes!'],
      1: ['- a\n- b', '- c\n- d', 'prose'],
      2: ['- x\n- y', '- z\n- w', '* p\n* q'],
      3: ['1. a\n2. b', '- one'],
      4: [],
    }
    ranked = behaviors.match_atoms_to_behaviors(tops, ['bullets', 'yes_no'])
    self.assertEqual(ranked['bullets'][0], (2, 1.0))
    self.assertEqual(ranked['bullets'][1][0], 1)
    self.assertEqual(ranked['yes_no'][0], (0, 1.0))
    self.assertNotIn(4, [a for a, _ in ranked['bullets']])

  def test_tiebreak(self):
    tops = {'a': ['- x\n- y'], 'b': ['- x\n- y'], 'c': ['- x\n- y']}
    ranked = behaviors.match_atoms_to_behaviors(
      tops,
      {'bullets': behaviors.has_bullets},
      tiebreak={'a': None, 'b': 0.2, 'c': 0.7},
    )
    self.assertEqual([a for a, _ in ranked['bullets']], ['c', 'b', 'a'])


if __name__ == '__main__':
  absltest.main()
