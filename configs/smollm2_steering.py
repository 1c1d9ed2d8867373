"""Full steering evaluation on the demo's run: the demo config with a larger
steering section only.

Every upstream stage key is the demo's, so a copy of a finished demo run
directory reuses them and only the steering and report stages run:

  cp -r results/demo results/hp
  python -m experiments.pipeline --config=configs/smollm2_steering.py \\
    --config.run_name=hp [--config.steering.prompts_path=FILE]

Verdicts are selected on one half of each behaviour's prompts and tested on
the other, against 3 random directions and an unmatched-atom null at each KL
level, beside a supervised ceiling and a behaviours × behaviours side-effect
table (see configs/common.py, steering section).
"""

from configs import smollm2_demo


def get_config():
  c = smollm2_demo.get_config()
  c.run_name = 'steering'
  c.steering.prompts_per_behavior = 100
  c.steering.kl_levels = (0.2, 0.4, 0.8)
  c.steering.n_random_controls = 3
  c.steering.n_unmatched_controls = 1
  c.steering.ceiling = True
  c.steering.side_effects = True
  c.steering.compose = ('bullets', 'yes_no')
  return c
