"""Shared plumbing of the thin absl apps: flags, logging, one library call."""

from __future__ import annotations

import json
import os
import sys

# Runnable as `python experiments/x.py` as well as `python -m experiments.x`.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

import jax  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from gatoms_jax.core.io import write_json  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
  'config', 'configs/smollm2_demo.py', 'Pipeline config file.', lock_config=True
)
_WORKDIR = flags.DEFINE_string(
  'workdir', None, "Results root; default: the config's results_dir."
)


def resolved_config():
  """The --config with --workdir applied, validated against the schema."""
  from configs import common

  config = _CONFIG.value
  if _WORKDIR.value:
    with config.unlocked():
      config.results_dir = _WORKDIR.value
  common.validate(config)
  return config


def log_setup(config) -> None:
  import flax
  import optax

  logging.info(
    'jax %s, flax %s, optax %s; devices: %s',
    jax.__version__,
    flax.__version__,
    optax.__version__,
    jax.devices(),
  )
  logging.info('config:\n%s', config)
  run_dir = os.path.join(config.results_dir, config.run_name)
  os.makedirs(run_dir, exist_ok=True)
  write_json(os.path.join(run_dir, 'config.resolved.json'), config.to_dict())


def run_stages(stages_flag_value: str, force: bool = False) -> dict:
  """Resolves the config, logs, and runs the given pipeline stages."""
  from gatoms_jax import pipeline
  from gatoms_jax.core import distributed

  config = resolved_config()
  distributed.initialize(**config.distributed.to_dict())
  log_setup(config)
  from gatoms_jax.pipeline.lock import RunLockedError

  try:
    return pipeline.run(config, stages_flag_value, force=force)
  except RunLockedError as e:
    sys.exit(f'error: {e}')  # fail fast, exit status 1, no traceback


def stage_app(stage: str):
  """`main` of an app that runs one stage (and nothing else)."""

  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
    done = run_stages(stage)
    print(json.dumps(done.get(stage, {}).get('results', {}), default=str))

  return main


def launch(main) -> None:
  jax.config.config_with_absl()
  app.run(main)
