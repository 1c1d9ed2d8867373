"""What every benchmark reports about the machine it ran on, and when a
speed ratio is refused.

A ratio of two wall-clock times taken on a shared CPU says more about the
other jobs than about the code (this project's 2-core machine showed 12×
under load for what was 1.00× quiet). So each bench records the 1-minute
load average at its start and end, and when either exceeds `--max_load`
(default 1.5: three quarters of a 2-core machine) it is `noisy`: its ratio
fields are null and `refused_ratios` names them, unless `--allow_noisy`
(then they are reported, still marked noisy). Timings in seconds are always
reported: they are what was measured, not a claim.
"""

from __future__ import annotations

import os
from typing import Mapping, Optional

import numpy as np
from absl import flags

DEFAULT_MAX_LOAD = 1.5

flags.DEFINE_float(
  'max_load',
  DEFAULT_MAX_LOAD,
  '1-minute load average above which a run is noisy (ratios refused).',
)
flags.DEFINE_bool(
  'allow_noisy', False, 'Report ratios of a noisy run (marked noisy: true).'
)


def load_average() -> float:
  """The 1-minute load average (os.getloadavg)."""
  return float(os.getloadavg()[0])


def is_noisy(load_start: float, load_end: float, max_load: float) -> bool:
  """True when the load average at the start or the end exceeds max_load."""
  return max(load_start, load_end) > max_load


def finish(
  out: dict,
  ratios: Mapping[str, Optional[float]],
  *,
  load_start: float,
  load_end: Optional[float] = None,
  max_load: float = DEFAULT_MAX_LOAD,
  allow_noisy: bool = False,
  cpu_count: Optional[int] = None,
) -> dict:
  """Adds the load fields and the (possibly refused) ratios to `out`.

  Args:
    out: the bench's result dict (changed in place and returned).
    ratios: name → measured ratio (None: not measured).
    load_start: load average when the bench started.
    load_end: load average now (default: read it).
    max_load: the noisy threshold.
    allow_noisy: report ratios even when noisy.
    cpu_count: recorded for the reader (default os.cpu_count()).

  Returns:
    `out` with load_avg_1min_start/end, max_load, noisy, refused_ratios and
    every ratio (null when refused).
  """
  if load_end is None:
    load_end = load_average()
  noisy = is_noisy(load_start, load_end, max_load)
  refuse = noisy and not allow_noisy
  refused = []
  for name, value in ratios.items():
    if refuse and value is not None:
      refused.append(name)
      value = None
    out[name] = None if value is None else round(float(value), 3)
  out.update(
    load_avg_1min_start=round(load_start, 2),
    load_avg_1min_end=round(load_end, 2),
    max_load=max_load,
    noisy=noisy,
    refused_ratios=refused,
    cpu_count=cpu_count or os.cpu_count(),
  )
  return out


def finish_from_flags(
  out: dict, ratios: Mapping[str, Optional[float]], load_start: float
) -> dict:
  """`finish` with --max_load and --allow_noisy."""
  fl = flags.FLAGS
  return finish(
    out,
    ratios,
    load_start=load_start,
    max_load=fl.max_load,
    allow_noisy=fl.allow_noisy,
  )


def torch_doc_loop(model, order, docs, autocast: bool = False):
  """The reference per-document gradient loop (the seed pipeline's): one
  document at a time at its own length, rows in our layout (LoRA weights
  transposed, `order` = torch parameter names in our leaf order); `autocast` runs
  the forward (and so the backward) under torch.autocast bf16 on CPU."""
  import contextlib

  import torch

  params = dict(model.named_parameters())
  plist = [params[n] for n in order]
  rows = []
  ctx = (
    (lambda: torch.autocast('cpu', dtype=torch.bfloat16))
    if autocast
    else contextlib.nullcontext
  )
  for doc in docs:
    ids = torch.from_numpy(doc.tokens.astype(np.int64))[None]
    mask = torch.from_numpy(doc.loss_mask[1:])
    with ctx():
      logits = model(input_ids=ids).logits[0, :-1].float()
    nll = torch.nn.functional.cross_entropy(
      logits, ids[0, 1:], reduction='none'
    )
    loss = (nll * mask).sum()
    grads = torch.autograd.grad(loss, plist)
    rows.append(torch.cat([g.float().T.reshape(-1) for g in grads]).numpy())
  return np.stack(rows)
