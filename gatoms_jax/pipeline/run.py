"""Runs the pipeline stages in order, skipping those complete and current."""

from __future__ import annotations

import os
import shutil
import time
from typing import Any, Optional, Sequence

from absl import logging

from gatoms_jax.core import compilation, distributed
from gatoms_jax.core.io import read_json, write_json
from gatoms_jax.pipeline import fingerprints as fingerprints_lib
from gatoms_jax.pipeline import lock as lock_lib
from gatoms_jax.pipeline import manifest, memory
from gatoms_jax.pipeline.context import RunContext
from gatoms_jax.pipeline.stages import STAGE_FUNCTIONS


# Stages without collectives (host work and single-device generation): in a
# multi-process run the writer alone runs them instead of every process
# redoing the same work.
WRITER_ONLY_STAGES = frozenset({'atoms', 'steering', 'report'})


def parse_stages(stages: Optional[Sequence[str] | str]) -> list[str]:
  """'all', None, a comma list or a sequence → ordered stage names."""
  if stages is None or stages == 'all' or stages == ['all']:
    return list(manifest.STAGES)
  if isinstance(stages, str):
    stages = [s for s in stages.split(',') if s]
  unknown = [s for s in stages if s not in manifest.STAGES]
  if unknown:
    raise ValueError(
      f'Unknown stage(s) {unknown}; stages: {", ".join(manifest.STAGES)}'
    )
  return [s for s in manifest.STAGES if s in stages]


def run(
  config: Any,
  stages: Optional[Sequence[str] | str] = None,
  *,
  force: bool = False,
) -> dict[str, dict]:
  """Runs `stages` (default: all) of the pipeline for `config`.

  The run directory is locked for the whole run (one writer; in a
  multi-process run the writer process holds it): a second run on it fails
  at once with `lock.RunLockedError` naming the holder. See `_run_stages`.
  """
  if not distributed.is_writer():
    return _run_stages(config, stages, force=force)
  with lock_lib.hold(os.path.join(config.results_dir, config.run_name)):
    return _run_stages(config, stages, force=force)


def _clear_if_inputs_changed(stage_dir: str, stage: str, file_key: str):
  """Clears a stage directory whose work was started from other input
  files, then records the current ones (writer only)."""
  started = manifest.started_path(stage_dir)
  try:
    previous = read_json(started).get('file_key')
  except (OSError, ValueError, AttributeError):
    previous = None
  if previous not in (None, file_key) and os.path.isdir(stage_dir):
    logging.warning(
      'stage %s: its input files changed since %s was started; cleared',
      stage,
      stage_dir,
    )
    shutil.rmtree(stage_dir)
  os.makedirs(stage_dir, exist_ok=True)
  write_json(started, {'file_key': file_key})


def _run_stages(
  config: Any,
  stages: Optional[Sequence[str] | str] = None,
  *,
  force: bool = False,
) -> dict[str, dict]:
  """Runs `stages` (default: all) of the pipeline for `config`.

  A stage is skipped when its manifest records the current key (config values
  and input-file fingerprints it reads + upstream keys). A stage directory
  started from other input files is cleared before the stage reruns. A requested stage whose inputs are not complete
  and current fails with an error naming the missing stage.

  Args:
    config: the resolved pipeline ConfigDict (configs/common.py schema).
    stages: which stages to run.
    force: rerun requested stages from scratch, even if complete (their
      directories are cleared first, so nothing is resumed).

  Returns:
    stage → its manifest.
  """
  cache_dir = compilation.setup_compile_cache(config.compile_cache_dir)
  logging.info('persistent compilation cache: %s', cache_dir or 'off')
  ctx = RunContext(config)
  os.makedirs(ctx.run_dir, exist_ok=True)
  fingerprints = fingerprints_lib.input_fingerprints(config)
  keys = manifest.stage_keys(config, fingerprints)
  file_keys = manifest.stage_file_keys(fingerprints)
  wanted = parse_stages(stages)
  done = {}
  for stage in manifest.STAGES:
    stage_dir = ctx.stage_dir(stage)
    if stage not in wanted:
      if manifest.is_complete(stage_dir, keys[stage]):
        done[stage] = manifest.read_manifest(stage_dir)
      continue
    if not force and manifest.is_complete(stage_dir, keys[stage]):
      logging.info(
        'stage %s: complete and current (key %s), skipped', stage, keys[stage]
      )
      done[stage] = manifest.read_manifest(stage_dir)
      continue
    missing = [s for s in manifest.STAGE_INPUTS[stage] if s not in done]
    if missing:
      raise RuntimeError(
        f'stage {stage} needs {missing} to be complete for this config; run '
        f'them first (e.g. --stages={",".join(missing + [stage])})'
      )
    logging.info('stage %s: running (key %s)', stage, keys[stage])
    if distributed.is_writer():
      manifest.invalidate(stage_dir)
      if force and os.path.isdir(stage_dir):
        # Forced: nothing is resumed (checkpoints, stored rows, sweeps).
        shutil.rmtree(stage_dir)
      _clear_if_inputs_changed(stage_dir, stage, file_keys[stage])
    os.makedirs(stage_dir, exist_ok=True)
    distributed.barrier(f'{stage}:start')
    start = time.perf_counter()
    figures = {}
    if stage in WRITER_ONLY_STAGES and not distributed.is_writer():
      extra = {}  # no device work: the writer alone runs it
    else:
      # Refuses to start beyond the memory limit; measures peak RSS and
      # compilations (the estimate loads the model, inside the timing).
      with memory.StageResources(ctx, stage) as resources:
        extra = STAGE_FUNCTIONS[stage](ctx) or {}
      figures = resources.figures()
    seconds = time.perf_counter() - start
    done[stage] = manifest.write_manifest(
      stage_dir,
      stage=stage,
      key=keys[stage],
      config=config,
      input_keys={s: keys[s] for s in manifest.STAGE_INPUTS[stage]},
      seconds=seconds,
      extra={
        'results': extra,
        'files': manifest.stage_files(fingerprints, stage),
        **figures,
      },
    )
    # Every process sees the writer's files (and manifest) from here on.
    distributed.barrier(f'{stage}:done')
    if not distributed.is_writer():
      done[stage] = manifest.read_manifest(stage_dir) or done[stage]
    logging.info('stage %s: done in %.1f s', stage, seconds)
  write_json(os.path.join(ctx.run_dir, 'config.json'), config.to_dict())
  return done
