"""What every benchmark reports about the machine it ran on, and when a
speed ratio is refused.

A ratio of two wall-clock times taken on a shared CPU says more about the
other jobs than about the code (this project's 2-core machine showed 12×
under load for what was 1.00× quiet). So each bench records the 1-minute
load average at its start and end, and the CPU that OTHER processes used
while it ran: the machine's busy time (/proc/stat) minus this process
tree's own (getrusage), in cores. The end load average is reported but not
judged: a bench that keeps both cores busy raises it to ~2 by itself. A run
is `noisy` when the load average at the start exceeds `--max_load` (default
1.5: three quarters of a 2-core machine) or other processes used more than
`--max_other_cores` (default 0.25) on average; a noisy run's ratio fields
are null and `refused_ratios` names them, unless `--allow_noisy` (then they
are reported, still marked noisy). Timings in seconds are always reported:
they are what was measured, not a claim.
"""

from __future__ import annotations

import dataclasses
import os
import resource
import time
from typing import Mapping, Optional

import numpy as np
from absl import flags

DEFAULT_MAX_LOAD = 1.5
DEFAULT_MAX_OTHER_CORES = 0.25

flags.DEFINE_float(
  'max_load',
  DEFAULT_MAX_LOAD,
  '1-minute load average above which a run is noisy (ratios refused).',
)
flags.DEFINE_float(
  'max_other_cores',
  DEFAULT_MAX_OTHER_CORES,
  'Mean cores used by other processes during the run above which it is noisy.',
)
flags.DEFINE_bool(
  'allow_noisy', False, 'Report ratios of a noisy run (marked noisy: true).'
)


def load_average() -> float:
  """The 1-minute load average (os.getloadavg)."""
  return float(os.getloadavg()[0])


@dataclasses.dataclass(frozen=True)
class CpuSnapshot:
  """CPU seconds busy on the whole machine and used by this process tree."""

  machine_busy_s: Optional[float]  # None where /proc/stat is not readable
  own_s: float
  wall_s: float


def cpu_snapshot() -> CpuSnapshot:
  """The machine's and this process's CPU time now (see `other_cores`)."""
  busy = None
  try:
    with open('/proc/stat') as f:
      fields = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ...: all but idle/iowait.
    busy = (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf('SC_CLK_TCK')
  except (OSError, ValueError, IndexError):
    pass
  own = 0.0
  for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
    r = resource.getrusage(who)
    own += r.ru_utime + r.ru_stime
  return CpuSnapshot(busy, own, time.monotonic())


def other_cores(since: CpuSnapshot) -> Optional[float]:
  """Mean cores that other processes kept busy since `since` (None: unknown).

  Children count as this process's own only once waited for.
  """
  now = cpu_snapshot()
  if now.machine_busy_s is None or since.machine_busy_s is None:
    return None
  wall = max(now.wall_s - since.wall_s, 1e-9)
  busy = now.machine_busy_s - since.machine_busy_s
  return max(0.0, (busy - (now.own_s - since.own_s)) / wall)


def is_noisy(
  load_start: float,
  other: Optional[float] = None,
  max_load: float = DEFAULT_MAX_LOAD,
  max_other_cores: float = DEFAULT_MAX_OTHER_CORES,
) -> bool:
  """True when the machine was busy before the bench started (load average
  above max_load) or other processes used more than max_other_cores during
  it."""
  return load_start > max_load or (
    other is not None and other > max_other_cores
  )


def finish(
  out: dict,
  ratios: Mapping[str, Optional[float]],
  *,
  load_start: float,
  load_end: Optional[float] = None,
  cpu_start: Optional[CpuSnapshot] = None,
  max_load: float = DEFAULT_MAX_LOAD,
  max_other_cores: float = DEFAULT_MAX_OTHER_CORES,
  allow_noisy: bool = False,
  cpu_count: Optional[int] = None,
) -> dict:
  """Adds the load fields and the (possibly refused) ratios to `out`.

  Args:
    out: the bench's result dict (changed in place and returned).
    ratios: name → measured ratio (None: not measured).
    load_start: load average when the bench started.
    load_end: load average now (default: read it; reported, not judged).
    cpu_start: `cpu_snapshot()` when the bench started (None: other
      processes' CPU is not measured).
    max_load: the noisy threshold of the starting load average.
    max_other_cores: the noisy threshold of other processes' mean cores.
    allow_noisy: report ratios even when noisy.
    cpu_count: recorded for the reader (default os.cpu_count()).

  Returns:
    `out` with load_avg_1min_start/end, other_cores, max_load,
    max_other_cores, noisy, refused_ratios and every ratio (null when
    refused).
  """
  if load_end is None:
    load_end = load_average()
  other = None if cpu_start is None else other_cores(cpu_start)
  noisy = is_noisy(load_start, other, max_load, max_other_cores)
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
    other_cores=None if other is None else round(other, 3),
    max_load=max_load,
    max_other_cores=max_other_cores,
    noisy=noisy,
    refused_ratios=refused,
    cpu_count=cpu_count or os.cpu_count(),
  )
  return out


def finish_from_flags(
  out: dict,
  ratios: Mapping[str, Optional[float]],
  load_start: float,
  cpu_start: Optional[CpuSnapshot] = None,
) -> dict:
  """`finish` with --max_load, --max_other_cores and --allow_noisy."""
  fl = flags.FLAGS
  return finish(
    out,
    ratios,
    load_start=load_start,
    cpu_start=cpu_start,
    max_load=fl.max_load,
    max_other_cores=fl.max_other_cores,
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
