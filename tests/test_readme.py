"""The README's library example runs as written (on a tiny random model)."""

import os
import re
from unittest import mock

import numpy as np
from absl.testing import absltest

import gatoms_jax as ga
from gatoms_jax.core.models import config as config_lib
from gatoms_jax.core.models import lora as lora_lib

README = os.path.join(os.path.dirname(__file__), '..', 'README.md')


def _example() -> str:
  with open(README, encoding='utf-8') as f:
    text = f.read()
  section = text[text.index('## For JAX users') :]
  return re.search(r'```python\n(.*?)```', section, re.DOTALL).group(1)


def _tiny_model(path, lora):
  del path  # the README loads the embedded model; tests stay tiny and local
  model = lora_lib.make_model(config_lib.tiny_llama(), lora)
  mdef, base, tree = lora_lib.split(model)
  # A trained-like adapter: at B = 0 every lora_a gradient is exactly zero.
  return lora_lib.merge(mdef, base, lora_lib.init_lora(tree, 0, b_std=0.1))


class ReadmeTest(absltest.TestCase):
  def test_library_example_runs(self):
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 256, (24, 16)).astype(np.int32)
    loss_mask = np.zeros((24, 16), np.float32)
    loss_mask[:, 8:] = 1.0
    namespace = {'tokens': tokens, 'loss_mask': loss_mask}
    with mock.patch.object(ga, 'load_model', _tiny_model):
      exec(_example(), namespace)
    self.assertEqual(namespace['rows'].shape[0], 24)
    self.assertEqual(namespace['logits'].shape, (24, 16, 256))
    diff = [
      float(np.abs(np.asarray(a) - np.asarray(b)).max())
      for (_, a), (_, b) in zip(
        lora_lib.lora_leaves(namespace['steered']),
        lora_lib.lora_leaves(namespace['lora']),
      )
    ]
    self.assertGreater(max(diff), 0)  # steering changed the adapter


if __name__ == '__main__':
  absltest.main()
