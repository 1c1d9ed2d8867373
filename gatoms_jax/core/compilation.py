"""XLA compilation: the persistent cache and compile-time accounting.

`setup_compile_cache(dir)` points JAX's persistent compilation cache at a
directory (once per process, before the first compile that should be cached)
so that later stages, reruns and resumed runs load compiled executables from
disk instead of compiling again. JAX's defaults only cache executables that
took ≥ 1 s to compile; on CPU many of ours take less but add up, so the
threshold is lowered.

`CompileCounter` totals JAX's own monitoring events: every executable that
the backend builds or loads from the persistent cache emits
'/jax/core/compile/backend_compile_duration' (jax ≥ 0.4.36; checked on
0.10.2), a persistent-cache hit also '/jax/compilation_cache/cache_hits'.
"""

from __future__ import annotations

import os
import threading
from typing import Optional

import jax
from jax.experimental.compilation_cache import compilation_cache

BACKEND_COMPILE_EVENT = '/jax/core/compile/backend_compile_duration'
TRACE_EVENTS = (
  '/jax/core/compile/jaxpr_trace_duration',
  '/jax/core/compile/jaxpr_to_mlir_module_duration',
)
CACHE_HIT_EVENT = '/jax/compilation_cache/cache_hits'

# Executables that compile faster than this are not written to the cache
# (each entry is a file write; the tiniest are cheaper to recompile).
MIN_COMPILE_SECONDS_CACHED = 0.1

ENV_CACHE_DIR = 'GATOMS_COMPILE_CACHE_DIR'
DEFAULT_CACHE_DIR = '~/.cache/gatoms_jax/xla'


def default_cache_dir() -> str:
  """The config default: $GATOMS_COMPILE_CACHE_DIR if set (tests set it to
  '' or a temporary directory), else ~/.cache/gatoms_jax/xla."""
  return os.environ.get(ENV_CACHE_DIR, DEFAULT_CACHE_DIR)


def setup_compile_cache(
  directory: str, min_compile_seconds: float = MIN_COMPILE_SECONDS_CACHED
) -> Optional[str]:
  """Enables JAX's persistent compilation cache in `directory` ('' disables).

  Safe to call again: a different directory (or '') takes effect for the
  compiles that follow, also after earlier compiles in this process.

  Args:
    directory: the cache directory ('~' expanded); '' disables the cache.
    min_compile_seconds: executables compiled faster are not cached.

  Returns:
    The absolute cache directory, or None when disabled.
  """
  path = os.path.abspath(os.path.expanduser(directory)) if directory else None
  if path:
    os.makedirs(path, exist_ok=True)
  current = jax.config.jax_compilation_cache_dir
  enabled = jax.config.jax_enable_compilation_cache
  threshold = jax.config.jax_persistent_cache_min_compile_time_secs
  if (
    current == path
    and enabled == bool(path)
    and (not path or threshold == min_compile_seconds)
  ):
    return path
  jax.config.update('jax_enable_compilation_cache', bool(path))
  jax.config.update('jax_compilation_cache_dir', path)
  if path:
    jax.config.update(
      'jax_persistent_cache_min_compile_time_secs', float(min_compile_seconds)
    )
    # -1: no minimum entry size (XLA:CPU executables are small).
    jax.config.update('jax_persistent_cache_min_entry_size_bytes', -1)
  # JAX decides once per process whether the cache is used (at the first
  # compile); reset so the new setting applies from here on.
  compilation_cache.reset_cache()
  return path


class CompileCounter:
  """Running totals of compile events since the process registered it.

  `snapshot()` returns the totals; the difference of two snapshots is what
  happened in between (all threads).
  """

  _lock = threading.Lock()
  _totals = {
    'compile_seconds': 0.0,
    'n_compilations': 0,
    'trace_seconds': 0.0,
    'n_cache_hits': 0,
  }
  _registered = False

  @classmethod
  def _on_duration(cls, event: str, duration: float, **kwargs) -> None:
    del kwargs
    with cls._lock:
      if event == BACKEND_COMPILE_EVENT:
        cls._totals['compile_seconds'] += float(duration)
        cls._totals['n_compilations'] += 1
      elif event in TRACE_EVENTS:
        cls._totals['trace_seconds'] += float(duration)

  @classmethod
  def _on_event(cls, event: str, **kwargs) -> None:
    del kwargs
    if event == CACHE_HIT_EVENT:
      with cls._lock:
        cls._totals['n_cache_hits'] += 1

  @classmethod
  def register(cls) -> None:
    """Registers the listeners (once per process)."""
    with cls._lock:
      if cls._registered:
        return
      cls._registered = True
    jax.monitoring.register_event_duration_secs_listener(cls._on_duration)
    jax.monitoring.register_event_listener(cls._on_event)

  @classmethod
  def snapshot(cls) -> dict:
    cls.register()
    with cls._lock:
      return dict(cls._totals)

  @staticmethod
  def since(start: dict) -> dict:
    """Totals since the snapshot `start` (seconds rounded to ms)."""
    now = CompileCounter.snapshot()
    out = {k: now[k] - start[k] for k in now}
    for k in ('compile_seconds', 'trace_seconds'):
      out[k] = round(out[k], 3)
    return out
