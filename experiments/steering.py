"""Steering sweeps (stage 'steering'), or export of one steered PEFT adapter.

  # sweeps for the five behaviours, atoms matched automatically:
  python -m experiments.steering --config=configs/smollm2_demo.py
  # sweeps with hand-picked atoms for every behaviour, composed as
  # steering.combine says ('sum': one direction; 'each': one per atom):
  python -m experiments.steering --config=configs/smollm2_demo.py --atoms=12,40 \
    --config.steering.combine=each
  # write θ − Σ c_j v_j (unit-norm v_j) as a PEFT adapter and stop:
  python -m experiments.steering --config=configs/smollm2_demo.py \
    --coefficients=12:0.5,40:-0.3 --export=/tmp/steered_adapter
"""

import json

from absl import app, flags

from experiments import _app

_ATOMS = flags.DEFINE_list('atoms', [], 'Atom ids to sweep (default: matched).')
_COEFFICIENTS = flags.DEFINE_list(
  'coefficients', [], 'atom:coefficient pairs for --export.'
)
_EXPORT = flags.DEFINE_string(
  'export', '', 'Write a steered PEFT adapter here.'
)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if _EXPORT.value:
    from gatoms_jax.pipeline import export

    coefficients = {}
    for item in _COEFFICIENTS.value:
      atom, _, value = item.partition(':')
      coefficients[int(atom)] = float(value)
    config = _app.resolved_config()
    path = export.export_steered(config, coefficients, _EXPORT.value)
    print(path)
    return
  config = _app.resolved_config()
  if _ATOMS.value:
    with config.unlocked():
      config.steering.atoms = tuple(int(a) for a in _ATOMS.value)
  _app.log_setup(config)
  from gatoms_jax import pipeline

  done = pipeline.run(config, 'steering', force=bool(_ATOMS.value))
  print(json.dumps(done['steering']['results'], default=str))


if __name__ == '__main__':
  _app.launch(main)
