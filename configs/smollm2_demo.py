r"""The CPU demo: SmolLM2-135M-Instruct (embedded GGUF) on the generated mixture.

Fine-tune only (this stage; a few minutes on 2 CPU cores):

  python -m experiments.finetune --config=configs/smollm2_demo.py

The whole pipeline (`make demo`):

  python -m experiments.pipeline --config=configs/smollm2_demo.py

Every knob is in configs/common.py, whose defaults are this demo's.
"""

from configs import common


def get_config():
  c = common.base_config()
  c.run_name = 'demo'
  return c
