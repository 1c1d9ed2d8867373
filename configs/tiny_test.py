r"""Tiny random model for tests and quick smoke runs (seconds on a CPU).

  python -m experiments.finetune --config=configs/tiny_test.py \
    --workdir=/tmp/tiny_results

The model is the `tiny_llama` preset (2 layers, width 64) with random
weights, its vocabulary resized to the tokenizer's
(`gatoms_jax.core.loading.load_model_and_tokenizer`): with the embedded SmolLM2
tokenizer that is 49,152 ids, a 3.1M-parameter embedding, still fast. Tests
pass a small byte-level tokenizer instead (`--config.model.tokenizer=DIR`).
"""

from configs import common


def get_config():
  c = common.base_config()
  c.run_name = 'tiny_test'
  c.model.path = 'random:tiny_llama'
  c.model.tokenizer = 'embedded'
  c.lora.rank = 4
  c.lora.alpha = 8.0
  c.lora.targets = ('all',)
  c.data.n_docs = 24
  c.data.max_length = 256
  c.data.heldout_fraction = 0.25
  c.finetune.steps = 8
  c.finetune.batch_size = 8
  c.finetune.learning_rate = 3e-2
  c.finetune.warmup_steps = 2
  c.finetune.checkpoint_every = 2
  c.finetune.eval_every = 4
  c.finetune.max_eval_docs = 16
  # One padded shape (T = 256, 255 loss positions): a single compilation.
  c.finetune.bucket_multiple = 256
  c.finetune.loss_multiple = 256
  return c
