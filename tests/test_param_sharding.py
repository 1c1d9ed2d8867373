"""Parameter sharding over a 2×2 ('data', 'model') mesh of 4 CPU devices
(conftest): the rules, and a fine-tuning step and a forward that equal the
replicated run."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import absltest

from configs import common
from gatoms_jax.core import losses, sharding
from gatoms_jax.core.models import config as config_lib
from gatoms_jax.core.models import lora as lora_lib
from gatoms_jax.core.models.transformer import LoraConfig
from gatoms_jax.method import finetune

P = jax.P


def _setup():
  model = lora_lib.make_model(
    config_lib.tiny_gemma3(),
    LoraConfig(rank=4, alpha=8.0, targets=('all',)),
  )
  mdef, base, lora = lora_lib.split(model)
  lora = lora_lib.init_lora(lora, 0, b_std=0.1)
  rng = np.random.default_rng(0)
  tokens = rng.integers(1, 256, (8, 32)).astype(np.int32)
  index = np.tile(np.arange(8, 31, dtype=np.int32), (8, 1))
  weight = np.ones(index.shape, np.float32)
  return mdef, base, lora, tokens, index, weight


class ParamShardingTest(absltest.TestCase):
  def setUp(self):
    super().setUp()
    self.mesh = sharding.mesh_from_shape({'data': 2, 'model': -1})

  def test_mesh_from_shape(self):
    self.assertEqual(dict(self.mesh.shape), {'data': 2, 'model': 2})
    with self.assertRaisesRegex(ValueError, 'not a multiple'):
      sharding.mesh_from_shape({'data': 3, 'model': -1})
    with self.assertRaisesRegex(ValueError, 'needs 8 devices'):
      sharding.mesh_from_shape({'data': 4, 'model': 2})

  def test_rules(self):
    spec = lambda path, shape: sharding.param_spec(path, shape, self.mesh)
    q = 'layers.0.self_attn.q_proj'
    self.assertEqual(spec(f'{q}.kernel', (64, 64)), P('data', 'model'))
    self.assertEqual(spec(f'{q}.lora_a', (64, 4)), P('data', None))
    self.assertEqual(spec(f'{q}.lora_b', (4, 64)), P(None, 'model'))
    down = 'layers.0.mlp.down_proj'
    self.assertEqual(spec(f'{down}.kernel', (128, 64)), P('model', 'data'))
    self.assertEqual(spec(f'{down}.lora_a', (128, 4)), P('model', None))
    self.assertEqual(spec('embed_tokens', (256, 64)), P('model', 'data'))
    self.assertEqual(spec('norm.weight', (64,)), P(None))
    # A scanned stack's leading layer axis stays whole; an axis the mesh
    # does not divide stays whole.
    self.assertEqual(
      spec(f'layers.{q[9:]}.kernel', (3, 64, 64)), P(None, 'data', 'model')
    )
    self.assertEqual(spec(f'{q}.kernel', (63, 64)), P(None, 'model'))

  def test_sharded_step_equals_replicated(self):
    mdef, base, lora, tokens, index, weight = _setup()
    ft = common.base_config().finetune
    optimizer = finetune.make_optimizer(ft)
    step = finetune.make_train_step(mdef, optimizer)
    rows = sharding.row_sharding(self.mesh, 2)
    batch = {
      'tokens': jax.device_put(tokens, rows),
      'index': jax.device_put(index, rows),
      'weight': jax.device_put(weight, rows),
      'scale': jnp.float32(1 / weight.sum()),
    }
    rep = sharding.replicated(self.mesh)
    opt_state = optimizer.init(lora)

    def run(place):
      out = step(place(lora), place(opt_state), place(base), batch)
      return jax.tree.map(np.asarray, out)

    def sharded(tree):
      return jax.device_put(tree, sharding.param_shardings(tree, self.mesh))

    placed_base = sharded(base)
    q = placed_base['layers'][0]['self_attn']['q_proj']['kernel'][...]
    self.assertEqual(q.sharding.spec, P('data', 'model'))
    self.assertEqual(q.addressable_shards[0].data.shape, (32, 32))

    want = run(functools.partial(jax.device_put, device=rep))
    got = run(sharded)
    # Sharded matmuls sum partial products in another order: float32
    # rounding of a few ulps, far below the 1e-5 relative tolerance.
    jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
      want,
      got,
    )
    # The step moved the adapter (the comparison is not of two no-ops).
    self.assertGreater(
      float(optax.tree.norm(jax.tree.map(jnp.subtract, got[0], lora))), 0
    )

  def test_sharded_loss_equals_replicated(self):
    mdef, base, lora, tokens, index, weight = _setup()
    fn = jax.jit(losses.batch_loss, static_argnums=(1,))
    want = fn(lora, mdef, base, tokens, index, weight)
    shard = lambda t: jax.device_put(t, sharding.param_shardings(t, self.mesh))
    rows = sharding.row_sharding(self.mesh, 2)
    got = fn(
      shard(lora),
      mdef,
      shard(base),
      *(jax.device_put(x, rows) for x in (tokens, index, weight)),
    )
    np.testing.assert_allclose(float(got), float(want), rtol=1e-5)


if __name__ == '__main__':
  absltest.main()
