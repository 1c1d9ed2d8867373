"""Stage resources: the memory estimate, its refusal, the compile cache and
compile accounting."""

import json
import os
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
from absl.testing import absltest, parameterized

from configs import tiny_test
from gatoms_jax import pipeline
from gatoms_jax.core import compilation
from gatoms_jax.pipeline import memory

import tiny_tokenizer

# Measures one forward/backward of a fine-tuning call in a fresh process
# (so RSS is not polluted by other tests): compiles first, then runs it under
# PeakRss and prints the peak above the resident memory before the run, and
# the estimate of the same call.
_CHILD = r"""
import json, sys
import jax, jax.numpy as jnp, numpy as np
from flax import nnx
from gatoms_jax.core.models import config as config_lib, lora as lora_lib
from gatoms_jax.core.models.transformer import LoraConfig, Transformer
from gatoms_jax.method import finetune as ft_lib
from gatoms_jax.pipeline import memory

rows, length, d, ff = (int(x) for x in sys.argv[1:5])
arch = config_lib.tiny_llama(
  vocab_size=256, max_position_embeddings=2048, hidden_size=d,
  intermediate_size=ff, head_dim=d // 4,
)
model = Transformer(arch, lora=LoraConfig(rank=4, alpha=8.0), rngs=nnx.Rngs(0))
mdef, base, lora = lora_lib.split(model)
step = ft_lib.make_grad_step(mdef)
rng = np.random.default_rng(0)
batch = {
  'tokens': jnp.asarray(rng.integers(1, 256, (rows, length)), jnp.int32),
  'index': jnp.tile(jnp.arange(length - 1, dtype=jnp.int32), (rows, 1)),
  'weight': jnp.ones((rows, length - 1), jnp.float32),
  'scale': jnp.float32(1.0),
}
acc = jax.tree.map(jnp.zeros_like, lora)
compiled = step.lower(lora, acc, base, batch).compile()
before = memory.rss_bytes()
with memory.PeakRss(interval=0.005) as peak:
  acc, total = compiled(lora, acc, base, batch)
  jax.block_until_ready(acc)
estimate = memory.train_call_bytes(arch, rows, length, dtype_bytes=4)
print(json.dumps({'measured': peak.peak - before, 'estimate': estimate}))
"""


class EstimateTest(parameterized.TestCase):
  # Attention-dominated (8 × 1024 tokens, 4 heads: 128 MB of scores per
  # layer) and token-dominated (32 × 128 tokens at SmolLM2's widths), both
  # with working sets far above RSS noise.
  @parameterized.parameters(
    ('8', '1024', '64', '128'), ('32', '128', '576', '1536')
  )
  def test_estimate_bounds_measured_call(self, rows, length, d, ff):
    out = subprocess.run(
      [sys.executable, '-c', _CHILD, rows, length, d, ff],
      capture_output=True,
      text=True,
      timeout=600,
      check=True,
    )
    got = json.loads(out.stdout.strip().splitlines()[-1])
    measured, estimate = got['measured'], got['estimate']
    # An upper bound with the slack the stages add (calibrated coefficients:
    # 0.83-1.13 of the count measured on these shapes) ...
    self.assertLessEqual(measured, estimate * memory.XLA_OVERHEAD)
    # ... and not a useless one: more than half of it is really used.
    self.assertGreater(measured, estimate / 2)


class RefusalTest(absltest.TestCase):
  def test_stage_refuses_to_start_beyond_the_limit(self):
    tmp = tempfile.mkdtemp()
    c = tiny_test.get_config()
    c.results_dir = tmp
    c.model.tokenizer = tiny_tokenizer.save(os.path.join(tmp, 'tok'))
    c.data.max_length = 2048
    c.finetune.tokens_per_batch = 16384
    c.memory_limit_gb = 0.05  # far below the resident process alone
    with self.assertRaisesRegex(
      memory.MemoryBudgetError,
      r'finetune\.tokens_per_batch=16384 with data\.max_length=2048 needs '
      r'~[\d.]+ GB .*> the limit 0\.05 GB: lower finetune\.tokens_per_batch '
      r'or data\.max_length',
    ):
      pipeline.run(c, 'finetune')
    # Nothing was trained: no manifest, no checkpoint.
    self.assertFalse(
      os.path.exists(os.path.join(tmp, c.run_name, 'finetune', 'checkpoints'))
    )

  def test_estimate_grows_with_the_knobs(self):
    c = tiny_test.get_config()
    from gatoms_jax.core.models import config as config_lib

    arch = config_lib.tiny_llama(vocab_size=256)
    lora = {'w': jnp.zeros((64, 4))}
    c.finetune.batch_size = 64  # rows capped by the budget, not by this
    small = memory.estimate_stage('finetune', c, arch, lora, baseline=0)
    c.finetune.tokens_per_batch = 8 * c.finetune.tokens_per_batch
    big = memory.estimate_stage('finetune', c, arch, lora, baseline=0)
    self.assertGreater(big.peak, small.peak)
    c.data.max_length = 1024
    longer = memory.estimate_stage('finetune', c, arch, lora, baseline=0)
    self.assertGreater(longer.peak, big.peak)
    self.assertIsNone(
      memory.estimate_stage('dictionary', c, arch, lora, baseline=0)
    )


class CompileCacheTest(absltest.TestCase):
  def tearDown(self):
    compilation.setup_compile_cache('')
    super().tearDown()

  def test_second_compile_is_a_cache_hit(self):
    tmp = tempfile.mkdtemp()
    self.assertEqual(
      compilation.setup_compile_cache(tmp, min_compile_seconds=0), tmp
    )

    def f(x):
      return jnp.sin(x) @ jnp.cos(x).T + 1.2345

    x = jnp.ones((7, 5))
    start = compilation.CompileCounter.snapshot()
    jax.jit(f)(x).block_until_ready()
    first = compilation.CompileCounter.since(start)
    self.assertGreaterEqual(first['n_compilations'], 1)
    self.assertGreater(first['compile_seconds'], 0)
    self.assertTrue(os.listdir(tmp))  # written to disk
    jax.clear_caches()  # forget the in-memory executables
    start = compilation.CompileCounter.snapshot()
    jax.jit(f)(x).block_until_ready()
    second = compilation.CompileCounter.since(start)
    self.assertGreaterEqual(second['n_cache_hits'], 1)

  def test_empty_dir_disables(self):
    self.assertIsNone(compilation.setup_compile_cache(''))
    self.assertFalse(jax.config.jax_enable_compilation_cache)


if __name__ == '__main__':
  absltest.main()
