"""End to end: finetune → curvature → gradients → projection → dictionary →
atoms → steering → report, each stage skipped when complete and current.

  python -m experiments.pipeline --config=configs/smollm2_demo.py \
    [--config.run_name=NAME] [--config.data.path=FILE.jsonl] [--stages=a,b]
"""

import json

from absl import app, flags

from experiments import _app

_STAGES = flags.DEFINE_string('stages', 'all', 'Comma list of stages, or all.')
_FORCE = flags.DEFINE_bool('force', False, 'Rerun stages even if complete.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  done = _app.run_stages(_STAGES.value, force=_FORCE.value)
  config = _app.resolved_config()
  print(f'report: {config.results_dir}/{config.run_name}/report.md')
  seconds = {s: round(m.get('seconds', 0.0), 1) for s, m in done.items()}
  print(json.dumps({'stage_seconds': seconds}))


if __name__ == '__main__':
  _app.launch(main)
