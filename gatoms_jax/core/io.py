"""Atomic file I/O shared by every artefact writer: a reader never sees half a
file, and a file that was renamed into place survives a crash.

Every writer goes through `atomic_write`: write to a temp file in the same
directory, fsync it, `os.replace` it over the target, fsync the directory.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Callable

import numpy as np

from gatoms_jax.core import distributed


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


def fsync_dir(directory: str) -> None:
  """Flushes a directory's entries (renames) to disk; a no-op where the
  platform cannot open directories."""
  try:
    fd = os.open(directory, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


def atomic_write(
  path: str,
  write: Callable[[Any], None],
  binary: bool = False,
  tmp_path: str | None = None,
) -> None:
  """Calls write(file) on a temp file beside `path`, then renames it over
  `path` (fsyncing the file and the directory). In a multi-process run only
  the writer process writes; the others return at once.

  Args:
    path: the final file.
    write: fills the open temp file.
    binary: open the temp file in binary mode.
    tmp_path: the temp file's name (default: a fresh hidden name beside
      `path`); callers that sweep stale temp files choose a recognisable one.
  """
  if not distributed.is_writer():
    return  # one writer per run: see gatoms_jax.core.distributed
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  if tmp_path is None:
    fd, tmp = tempfile.mkstemp(
      dir=directory, prefix='.' + os.path.basename(path) + '.', suffix='.tmp'
    )
    # mkstemp creates the file 0600; give it the mode a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    handle = os.fdopen(
      fd, 'wb' if binary else 'w', encoding=None if binary else 'utf-8'
    )
  else:
    tmp = tmp_path
    handle = open(
      tmp, 'wb' if binary else 'w', encoding=None if binary else 'utf-8'
    )
  try:
    with handle as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  fsync_dir(directory)


def write_text(path: str, text: str) -> None:
  """Writes text atomically."""
  atomic_write(path, lambda f: f.write(text))


def write_bytes(path: str, data: bytes) -> None:
  """Writes bytes atomically."""
  atomic_write(path, lambda f: f.write(data), binary=True)


def write_json(path: str, obj: Any) -> None:
  """Writes JSON atomically (numpy scalars and arrays become numbers/lists)."""
  atomic_write(
    path, lambda f: json.dump(obj, f, indent=1, default=_json_default)
  )


_REQUIRED = object()


def read_json(path: str, default: Any = _REQUIRED) -> Any:
  """Reads a JSON file; `default` (if given) when the file does not exist.

  Raises:
    ValueError: naming the file and line, when the file is not valid JSON.
  """
  try:
    with open(path, encoding='utf-8') as f:
      return json.load(f)
  except FileNotFoundError:
    if default is _REQUIRED:
      raise
    return default
  except json.JSONDecodeError as e:
    raise ValueError(f'{path}: line {e.lineno}: invalid JSON: {e.msg}') from e


def save_npy(path: str, array: np.ndarray) -> None:
  """Writes a .npy file atomically."""
  atomic_write(path, lambda f: np.save(f, np.asarray(array)), binary=True)


def save_safetensors(path: str, tensors: dict) -> None:
  """Writes a safetensors file atomically."""
  from safetensors.numpy import save  # pylint: disable=g-import-not-at-top

  write_bytes(path, save(tensors))
