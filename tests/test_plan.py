"""The paper-scale plan on the tiny config: every stage compiles abstractly,
its figures are XLA's and consistent with the model's size, and the app's
last stdout line is one JSON object."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
from absl.testing import absltest

from configs import tiny_test
from gatoms_jax.core.models import config as config_lib
from gatoms_jax.core.models import lora as lora_lib
from gatoms_jax.pipeline import plan

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config():
  c = tiny_test.get_config()
  c.data.n_docs = 40
  c.data.max_length = 64
  c.dictionary.n_atoms = 16
  c.steering.max_rows = 8
  c.steering.prompts_per_behavior = 4
  return c


def _matmul_params(mc: config_lib.ModelConfig) -> int:
  """Weights multiplied per token in the decoder layers (no embedding)."""
  d, e = mc.hidden_size, mc.head_dim
  attn = d * e * (2 * mc.num_heads + 2 * mc.num_kv_heads)
  mlp = 3 * d * mc.intermediate_size
  return mc.num_layers * (attn + mlp)


class PlanTest(absltest.TestCase):
  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.config = _config()
    cls.one = plan.plan_run(cls.config, plan.build_mesh({'data': 1}))
    cls.two = plan.plan_run(
      cls.config,
      plan.build_mesh({'data': 2, 'model': 1}),
      stages=('finetune',),
    )

  def test_every_stage_has_figures(self):
    stages = self.one['stages']
    self.assertEqual(tuple(stages), plan.STAGES)
    for name, entry in stages.items():
      self.assertGreater(entry['bytes_per_device'], 0, name)
      self.assertGreater(entry['flops'], 0, name)
      for acc, a in plan.ACCELERATORS.items():
        want = (
          entry['flops']
          * entry['calls']
          / (a.peak_flops * plan.DEFAULT_FLOP_EFFICIENCY)
        )
        self.assertAlmostEqual(entry['projected_seconds'][acc], want)
        self.assertEqual(
          entry['fits'][acc], entry['bytes_per_device'] <= a.memory_bytes
        )
      # A float32 model: no bfloat16 operands for XLA:CPU to copy.
      self.assertEqual(entry['cpu_f32_copies_max_bytes'], 0, name)

  def test_finetune_figures_match_the_model(self):
    mc = config_lib.tiny_llama()
    entry = self.one['stages']['finetune']
    tokens = self.config.finetune.batch_size * self.config.data.max_length
    forward = 2 * _matmul_params(mc) * tokens
    # A LoRA step is a forward and a backward through the activations
    # (≈ 2 forwards; no frozen-weight gradients) plus attention and the LM
    # head: more than 2 and well under 6 forwards of decoder matmuls.
    self.assertGreater(entry['flops'], 2 * forward)
    self.assertLess(entry['flops'], 6 * forward)
    # The arguments alone (frozen base in float32, LoRA and AdamW state) are
    # part of the bytes a device holds.
    mdef, base, lora = plan.abstract_split(mc, self.config)
    nbytes = lambda t: sum(
      x.size * x.dtype.itemsize for x in jax.tree.leaves(t)
    )
    self.assertGreater(
      entry['bytes_per_device'], nbytes(base) + 3 * nbytes(lora)
    )
    self.assertEqual(entry['calls'], self.config.finetune.steps)

  def test_flops_are_per_device(self):
    # Documents split over 2 devices: each runs half the batch. 10 %: the
    # replicated LoRA update and the all-reduce are not split.
    one = self.one['stages']['finetune']['flops']
    two = self.two['stages']['finetune']['flops']
    np.testing.assert_allclose(two, one / 2, rtol=0.1)

  def test_sharded_params_reach_the_compiled_step(self):
    mesh = plan.build_mesh({'data': 2, 'model': 2})
    step = plan.stage_plans(self.config, mesh, shard_params=True)[0]
    self.assertEqual(step.name, 'finetune')
    compiled, _ = plan.compile_stage(step, mesh)
    base = compiled.input_shardings[0][2]
    specs = {
      lora_lib.path_str(p): s.spec
      for p, s in jax.tree_util.tree_flatten_with_path(base)[0]
    }
    self.assertEqual(
      specs['layers.0.self_attn.q_proj.kernel'], jax.P('data', 'model')
    )
    self.assertEqual(specs['embed_tokens'], jax.P('model', 'data'))

  def test_bf16_argument_bytes_count_one_shard(self):
    mesh = plan.build_mesh({'data': 2, 'model': 2})
    split = jax.sharding.NamedSharding(mesh, jax.P('data', 'model'))
    args = (
      jax.ShapeDtypeStruct((8, 6), jax.numpy.bfloat16, sharding=split),
      jax.ShapeDtypeStruct((8, 6), jax.numpy.bfloat16),
      jax.ShapeDtypeStruct((8, 6), jax.numpy.float32, sharding=split),
    )
    self.assertEqual(plan._bf16_argument_bytes(args), 4 * 3 * 2 + 8 * 6 * 2)

  def test_bad_mesh(self):
    with self.assertRaisesRegex(ValueError, 'name:size'):
      plan.parse_mesh('data=2')
    with self.assertRaisesRegex(ValueError, "'data' axis"):
      plan.parse_mesh('model:2')
    with self.assertRaisesRegex(ValueError, 'needs 64 devices'):
      plan.build_mesh({'data': 64})

  def test_app_prints_json_last(self):
    out = subprocess.run(
      [
        sys.executable,
        '-m',
        'experiments.plan',
        '--config=configs/tiny_test.py',
        '--mesh=data:2,model:1',
        '--devices=2',
        '--stages=projection',
      ],
      cwd=_ROOT,
      capture_output=True,
      text=True,
      timeout=300,
      check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    self.assertEqual(result['n_devices'], 2)
    self.assertEqual(list(result['stages']), ['projection'])
    entry = result['stages']['projection']
    self.assertEqual(set(entry['projected_seconds']), set(plan.ACCELERATORS))


if __name__ == '__main__':
  absltest.main()
