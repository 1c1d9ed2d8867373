"""Pipeline stage 'atoms' alone (its inputs must be complete for the config).

python -m experiments.atoms --config=configs/smollm2_demo.py [--config.x=y]
"""

from experiments import _app

main = _app.stage_app('atoms')

if __name__ == '__main__':
  _app.launch(main)
