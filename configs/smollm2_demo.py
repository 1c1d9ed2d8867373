r"""The CPU demo: SmolLM2-135M-Instruct (embedded GGUF) on the generated mixture.

The whole pipeline (`make demo`, ≤ 30 min on 2 CPU cores):

  python -m experiments.pipeline --config=configs/smollm2_demo.py \
    --config.run_name=demo

Fine-tune only:

  python -m experiments.finetune --config=configs/smollm2_demo.py

Every knob is in configs/common.py, whose defaults are this demo's except the
few below, which keep the CPU run short.
"""

from configs import common


def get_config():
  c = common.base_config()
  c.run_name = 'demo'
  # 1,200 docs → ~1,080 train docs; 120 atoms ≈ 9 docs per atom, the
  # paper's ratio (5,000 docs, 500 atoms).
  c.dictionary.n_atoms = 120
  # Kronecker factors from a 256-doc sample (the correction uses every doc).
  c.ekfac.max_docs = 256
  # Steering on 2 CPU cores: 30 prompts per behaviour (18 inviting, 12
  # controls), two step sizes, one random control.
  c.steering.prompts_per_behavior = 30
  c.steering.alphas = (1.0, 3.0)
  c.steering.n_random_controls = 1
  return c
