"""Pipeline stage 'dictionary' alone (its inputs must be complete for the config).

python -m experiments.dictionary --config=configs/smollm2_demo.py [--config.x=y]
"""

from experiments import _app

main = _app.stage_app('dictionary')

if __name__ == '__main__':
  _app.launch(main)
