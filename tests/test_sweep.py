"""Steering sweeps: step calibration, and a planted direction end to end."""

import math

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized

import tiny_tokenizer
from gatoms_jax.method.steering import behaviors, sweep
from gatoms_jax.method import gradients as grads
from gatoms_jax.core.models import config as config_lib
from gatoms_jax.core.models import lora as lora_lib
from gatoms_jax.core.models.generate import Generator
from gatoms_jax.core.models.transformer import LoraConfig


class CalibrateTest(parameterized.TestCase):
  @parameterized.parameters(2.0, 1.0, 3.0)
  def test_power_laws_converge_in_few_evaluations(self, power):
    gains = np.array([1e-4, 0.3, 7.0, 5e3])
    calls = []

    def kl_of(scales, idx):
      calls.append(len(idx))
      return gains[idx] * np.asarray(scales) ** power

    scales, kls, history = sweep.calibrate_scales(kl_of, [0.1] * 4)
    # rel_tol 0.1: |log(KL / target)| < 0.1, i.e. within ~10%.
    np.testing.assert_array_less(np.abs(np.log(kls / 0.1)), 0.1)
    np.testing.assert_allclose(gains * scales**power, kls, rtol=1e-12)
    # Slope 2 is the first guess, exact after one step except where that
    # step exceeds the ÷100 jump cap (gain 5e3 needs ÷224); other powers
    # need a secant step or two more.
    self.assertLessEqual(max(len(h) for h in history), 3 if power == 2 else 6)
    self.assertEqual(calls[0], 4)  # all directions evaluated together

  def test_per_direction_initial_scales(self):
    def kl_of(scales, idx):
      return np.asarray(scales) ** 2

    scales, _, history = sweep.calibrate_scales(
      kl_of, [4.0, 0.25], initial=[2.0, 0.5]
    )
    np.testing.assert_allclose(scales, [2.0, 0.5])
    self.assertEqual([len(h) for h in history], [1, 1])  # already there
    with self.assertRaisesRegex(ValueError, 'finite and > 0'):
      sweep.calibrate_scales(kl_of, [1.0, 1.0], initial=[1.0, 0.0])

  def test_zero_and_non_finite_kl_are_handled(self):
    def kl_of(scales, idx):
      out = []
      for s, j in zip(scales, idx):
        if j == 0:
          out.append(0.0)  # a direction that changes nothing
        else:
          out.append(math.inf if s > 200 else 1e-3 * s * s)
      return np.array(out)

    scales, kls, history = sweep.calibrate_scales(
      kl_of, [1.0, 1.0], initial=1000.0, max_evals=8
    )
    self.assertLen(history[0], 8)  # never converges, stops at max_evals
    self.assertEqual(kls[0], 0.0)
    self.assertTrue(math.isinf(history[1][0][1]))  # 1000 → inf, then ÷10
    self.assertLess(abs(math.log(kls[1])), 0.1)


def _first_byte_is(char):
  return lambda text: text[:1] == char


class PlantedSweepTest(absltest.TestCase):
  """A direction planted to make answers start with 'A' steers them, at the
  same calibrated KL as a random direction that does not."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    model = lora_lib.make_model(
      config_lib.tiny_llama(), LoraConfig(rank=4, targets=('all',))
    )
    cls.mdef, base, lora = lora_lib.split(model)
    # A 10x embedding (tied: input and LM head) makes the logits peaked
    # enough that a LoRA step can change the argmax (measured: 'A' becomes
    # the first byte of ~90% of answers at ‖Δθ‖ ≈ 1, of 8% unsteered).
    cls.base = jax.tree_util.tree_map_with_path(
      lambda p, x: 10.0 * x if 'embed' in jax.tree_util.keystr(p) else x, base
    )
    cls.lora = lora_lib.init_lora(lora, 0, b_std=0.1)
    cls.tok = tiny_tokenizer.tiny_tokenizer()

  def test_planted_direction_beats_random_at_matched_kl(self):
    texts = [f'question {i}: {w}' for i, w in enumerate('abcdefghijkl')]
    prompts = behaviors.PromptSet(
      'custom',
      tuple(behaviors.Prompt(t, i % 3 != 0) for i, t in enumerate(texts)),
    )
    encode = lambda t: self.tok.encode(t)
    target = self.tok.encode('A')[0]
    # v = ∇ of −Σ log p('A' | prompt) over the LoRA tree: θ − c·v (c > 0)
    # is a descent step that makes 'A' likelier as the first answer byte.
    rows = []
    for t in texts:
      ids = np.array([encode(t) + [target]], np.int32)
      mask = np.zeros_like(ids, np.float32)
      mask[0, -1] = 1.0
      rows.append(
        grads.GradientExtractor(self.mdef, self.base, self.lora)(ids, mask)[0]
      )
    g = np.sum(rows, axis=0)
    planted = lora_lib.unflatten(jnp.asarray(g / np.linalg.norm(g)), self.lora)
    rng = np.random.default_rng(0)
    r = rng.standard_normal(g.shape).astype(np.float32)
    random = lora_lib.unflatten(jnp.asarray(r / np.linalg.norm(r)), self.lora)

    gen = Generator(self.mdef, self.base, eos_ids=(), progress=False)
    runner = sweep.SweepRunner(
      gen,
      self.tok,
      self.lora,
      max_new_tokens=6,
      kl_tokens=4,
      prompt_formatter=encode,
    )
    res = runner.sweep(
      prompts,
      _first_byte_is('A'),
      {'planted': planted, 'random0': random},
      [0.05, 1.3],
    )
    base = res['baseline']
    self.assertEqual(res['n_prompts'], 12)
    self.assertEqual(res['n_invites'], 8)
    self.assertLen(base['outputs'], 12)
    self.assertAlmostEqual(
      base['rate'],
      100 * np.mean([o[:1] == 'A' for o in base['outputs']]),
    )
    for name in ('planted', 'random0'):
      variants = res['directions'][name]['variants']
      self.assertEqual(set(variants), {'+0.05', '-0.05', '+1.3', '-1.3'})
      for key, v in variants.items():
        # Calibrated to its level within calibrate_scales' 10% tolerance.
        self.assertLess(abs(math.log(v['kl'] / v['kl_level'])), 0.1, key)
        self.assertEqual(v['sign'], 'toward' if key[0] == '+' else 'away')
        self.assertEqual(np.sign(v['coefficient']), 1 if key[0] == '+' else -1)
        # The variant uses the calibration point it reports.
        self.assertIn(
          (v['coefficient'], v['kl']), [tuple(p) for p in v['calibration']]
        )
    planted_rates = res['directions']['planted']['variants']
    random_rates = res['directions']['random0']['variants']
    self.assertGreaterEqual(planted_rates['+1.3']['rate'], base['rate'] + 50)
    self.assertLessEqual(planted_rates['-1.3']['rate'], base['rate'])
    for k in ('+1.3', '-1.3'):
      self.assertLess(abs(random_rates[k]['rate'] - base['rate']), 30)
    summary = sweep.summarize_sweep(
      res, ['planted'], ['random0'], max_kl=100.0, max_degenerate_increase=1
    )
    verdict = summary['verdicts']['planted']
    self.assertTrue(verdict['steers'])
    self.assertEqual(verdict['alpha'], 1.3)  # the signed KL level
    self.assertEqual(summary['best_toward']['atom'], 'planted')

    # Warm start: the coefficients of this sweep are first guesses that the
    # same prompts confirm in one evaluation per variant.
    hints = sweep.coefficients_of(res, ['random0', 'absent'])
    self.assertEqual(set(hints), {'random0'})
    again = runner.sweep(
      prompts,
      _first_byte_is('A'),
      {'random0': random},
      [0.05, 1.3],
      initial_coefficients=hints,
    )
    for key, v in again['directions']['random0']['variants'].items():
      self.assertLen(v['calibration'], 1, key)
      self.assertAlmostEqual(v['coefficient'], hints['random0'][key], 5)


if __name__ == '__main__':
  absltest.main()
