"""Pipeline stage 'gradients' alone (its inputs must be complete for the config).

python -m experiments.gradients --config=configs/smollm2_demo.py [--config.x=y]
"""

from experiments import _app

main = _app.stage_app('gradients')

if __name__ == '__main__':
  _app.launch(main)
