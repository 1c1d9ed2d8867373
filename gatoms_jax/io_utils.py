"""Atomic file writes shared by the stages: a reader never sees half a file."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np


def _json_default(x: Any) -> Any:
  if isinstance(x, np.integer):
    return int(x)
  if isinstance(x, np.floating):
    return float(x)
  if isinstance(x, np.ndarray):
    return x.tolist()
  if isinstance(x, set):
    return sorted(x)
  return str(x)


def write_json(path: str, obj: Any) -> None:
  """Writes JSON to `path` through a temp file and os.replace."""
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=1, default=_json_default)
  os.replace(tmp, path)


def save_safetensors(path: str, tensors: dict) -> None:
  """safetensors.numpy.save_file through a temp file and os.replace."""
  from safetensors.numpy import save_file

  tmp = os.path.join(
    os.path.dirname(path), '.' + os.path.basename(path) + '.tmp'
  )
  save_file(tensors, tmp)
  os.replace(tmp, path)
