"""Steering: pytree add semantics, atom directions, and a planted direction."""

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest

from gatoms_jax.method import curvature, gradients as grads, projection
from gatoms_jax.method.steering import directions as steer
from gatoms_jax.core.models import config as config_lib
from gatoms_jax.core.models import lora as lora_lib
from gatoms_jax.core.models.generate import Generator
from gatoms_jax.core.models.transformer import LoraConfig
from gatoms_jax.core.store import layout_from_tree


class _Batch:
  def __init__(self, tokens, loss_mask):
    self.tokens, self.loss_mask = tokens, loss_mask


def _tiny():
  model = lora_lib.make_model(
    config_lib.tiny_llama(), LoraConfig(rank=4, targets=('q_proj', 'v_proj'))
  )
  mdef, base, lora = lora_lib.split(model)
  return mdef, base, lora_lib.init_lora(lora, 0, b_std=0.1)


def _spec(mdef, base, lora, top_k=0):
  rng = np.random.RandomState(0)
  tokens = rng.randint(1, 256, (8, 16)).astype(np.int32)
  mask = np.ones((8, 16), np.float32)
  mask[:, 0] = 0
  factors = curvature.fit_factors(
    mdef, base, lora, [_Batch(tokens, mask)], fisher='empirical', progress=False
  )
  factors = curvature.eigendecompose(factors)
  return projection.make_spec(factors, layout_from_tree(lora), top_k=top_k)


class SteerTest(absltest.TestCase):
  @classmethod
  def setUpClass(cls):
    cls.mdef, cls.base, cls.lora = _tiny()
    cls.spec = _spec(cls.mdef, cls.base, cls.lora)

  def test_zero_coefficients_are_identity(self):
    D = np.random.RandomState(1).randn(3, self.spec.k_total)
    dirs = steer.AtomDirections(self.spec, D, self.lora)
    out = steer.steer(self.lora, {0: 0.0, 2: 0.0}, dirs)
    jax.tree.map(np.testing.assert_array_equal, out, self.lora)
    out = steer.steer(self.lora, {}, dirs)
    jax.tree.map(np.testing.assert_array_equal, out, self.lora)

  def test_steer_is_lora_minus_sum_of_scaled_deltas(self):
    D = np.random.RandomState(2).randn(3, self.spec.k_total)
    dirs = steer.AtomDirections(self.spec, D, self.lora)
    out = steer.steer(self.lora, {0: 0.5, 2: -1.5}, dirs)
    expected = jax.tree.map(
      lambda p, a, b: p - 0.5 * a + 1.5 * b,
      self.lora,
      dirs.delta(0),
      dirs.delta(2),
    )
    # Same float ops in a different order: fp32 rounding only.
    jax.tree.map(
      lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7),
      out,
      expected,
    )

  def test_deltas_are_unit_norm_and_unproject_the_atom(self):
    D = np.random.RandomState(3).randn(2, self.spec.k_total)
    dirs = steer.AtomDirections(self.spec, D, self.lora, mode='paper')
    delta = dirs.delta(1)
    self.assertAlmostEqual(steer.tree_norm(delta), 1.0, places=5)
    row = projection.unproject_row(self.spec, D[1], 'paper')
    flat = np.asarray(lora_lib.flatten(delta))
    # Same direction as the unprojected atom (cosine 1 up to fp32 rounding).
    cos = flat @ row / np.linalg.norm(row)
    self.assertAlmostEqual(float(cos), 1.0, places=5)

  def test_orientation_follows_top_codes(self):
    codes = np.zeros((5, 2))
    codes[:, 0] = [-3, -2, 0.1, 0, 0]
    codes[:, 1] = [3, -0.5, 0, 0, 0]
    self.assertEqual(steer.orientation(codes[:, 0]), -1.0)
    self.assertEqual(steer.orientation(codes[:, 1]), 1.0)
    D = np.random.RandomState(4).randn(2, self.spec.k_total)
    dirs = steer.AtomDirections(self.spec, D, self.lora, codes=codes)
    plain = steer.AtomDirections(self.spec, D, self.lora)
    jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, -b, rtol=1e-6),
      dirs.delta(0),
      plain.delta(0),
    )

  def test_combined_is_normalised_sum_of_deltas(self):
    D = np.random.RandomState(5).randn(3, self.spec.k_total)
    dirs = steer.AtomDirections(self.spec, D, self.lora)
    both = dirs.combined([0, 2])
    self.assertAlmostEqual(steer.tree_norm(both), 1.0, places=5)
    total = jax.tree.map(jnp.add, dirs.delta(0), dirs.delta(2))
    norm = steer.tree_norm(total)
    jax.tree.map(
      lambda a, b: np.testing.assert_allclose(
        a, b / norm, rtol=1e-5, atol=1e-8
      ),
      both,
      total,
    )
    with self.assertRaises(ValueError):
      dirs.combined([])

  def test_random_direction_is_deterministic_and_unit(self):
    D = np.zeros((1, self.spec.k_total))
    dirs = steer.AtomDirections(self.spec, D, self.lora)
    a, b = (
      dirs.random(7),
      steer.AtomDirections(self.spec, D, self.lora).random(7),
    )
    jax.tree.map(np.testing.assert_array_equal, a, b)
    self.assertAlmostEqual(steer.tree_norm(a), 1.0, places=5)

  def test_planted_direction_moves_outputs_as_predicted(self):
    """Steering along the gradient g of −log p(target | prompt): to first
    order log p(target) changes by +c‖g‖ toward (θ − c·ĝ) and −c‖g‖ away."""
    prompt = [5, 17, 42, 9, 77]
    gen = Generator(self.mdef, self.base, eos_ids=(), progress=False)
    logp = gen.next_token_logprobs(self.lora, [prompt])[0]
    target = int(np.argsort(logp)[len(logp) // 2])  # a mid-ranked token
    tokens = np.array([prompt + [target]], np.int32)
    mask = np.zeros_like(tokens, np.float32)
    mask[0, -1] = 1.0
    row = grads.GradientExtractor(self.mdef, self.base, self.lora)(
      tokens, mask
    )[0]
    norm = float(np.linalg.norm(row))
    planted = lora_lib.unflatten(jnp.asarray(row / norm), self.lora)
    c = 0.05 / norm  # predicted change: 0.05 nats
    toward = gen.next_token_logprobs(
      steer.add_scaled(self.lora, planted, c), [prompt]
    )[0]
    away = gen.next_token_logprobs(
      steer.add_scaled(self.lora, planted, -c), [prompt]
    )[0]
    # First-order prediction; the second-order term at 0.05 nats is far below
    # 20% of it for this smooth tiny model (measured ~1%).
    np.testing.assert_allclose(toward[target] - logp[target], 0.05, rtol=0.2)
    np.testing.assert_allclose(away[target] - logp[target], -0.05, rtol=0.2)


if __name__ == '__main__':
  absltest.main()
