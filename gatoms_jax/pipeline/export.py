"""Export of a steered adapter from a finished run."""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np

from gatoms_jax.pipeline.context import RunContext


def export_steered(
  config: Any, coefficients: Mapping[int, float], directory: str
) -> str:
  """Writes θ − Σ_j c_j v_j (unit-norm, oriented atom deltas) as PEFT.

  Needs the run's finetune, project and dictionary stages to be complete.
  """
  from gatoms_jax.method import projection
  from gatoms_jax.method.steering import directions as steer

  ctx = RunContext(config)
  spec = projection.ProjectionSpec.load(ctx.stage_dir('projection'))
  D = np.load(os.path.join(ctx.stage_dir('dictionary'), 'dictionary.npy'))
  codes = np.load(os.path.join(ctx.stage_dir('dictionary'), 'codes.npy'))
  bad = [a for a in coefficients if not 0 <= a < D.shape[0]]
  if bad:
    raise ValueError(
      f'atoms {bad} out of range: the dictionary has {D.shape[0]}'
    )
  lora = ctx.finetuned_lora
  directions = steer.AtomDirections(
    spec,
    D,
    lora,
    codes=codes,
    mode=config.steering.unproject,
    top_n=config.atoms.top_n,
  )
  steered = steer.steer(lora, coefficients, directions)
  return steer.export_steered_adapter(
    directory, steered, ctx.lora_config, ctx.model_path
  )
