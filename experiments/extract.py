"""Pipeline stage 'extract' alone (its inputs must be complete for the config).

python -m experiments.extract --config=configs/smollm2_demo.py [--config.x=y]
"""

from experiments import _app

main = _app.stage_app('extract')

if __name__ == '__main__':
  _app.launch(main)
