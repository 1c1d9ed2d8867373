r"""Answers one chat prompt with a model (and optionally a PEFT LoRA adapter).

  python -m experiments.generate --prompt="What is 17 + 25?" \
    --max_new_tokens=24 [--model=PATH] [--adapter=DIR] [--temperature=0.7 \
    --top_p=0.9 --seed=0] [--dtype=bfloat16] [--raw]

PATH is an HF model directory, a .gguf file or 'embedded:NAME' (e.g.
embedded:gemma3-270m); without it the embedded SmolLM2-135M-Instruct GGUF is
used. Greedy by default. --raw feeds the prompt as is, without the chat
template (for base models: `--model=embedded:gemma3-270m --raw
--prompt="The capital of France is"`). The completion (special
tokens skipped) is the last thing printed on stdout; logs go to stderr.
"""

from __future__ import annotations

from absl import app
from absl import flags

from gatoms_jax.core.models import generate as generate_lib

_MODEL = flags.DEFINE_string(
  'model',
  'embedded',
  'HF model directory, .gguf file, "embedded" or "embedded:NAME".',
)
_PROMPT = flags.DEFINE_string('prompt', None, 'The user message.')
_MAX_NEW_TOKENS = flags.DEFINE_integer(
  'max_new_tokens', 64, 'Generated tokens at most.'
)
_ADAPTER = flags.DEFINE_string(
  'adapter', None, 'Optional PEFT LoRA adapter directory.'
)
_TEMPERATURE = flags.DEFINE_float(
  'temperature', 0.0, 'Sampling temperature; 0 is greedy.'
)
_TOP_P = flags.DEFINE_float('top_p', 1.0, 'Nucleus sampling mass.')
_SEED = flags.DEFINE_integer('seed', 0, 'Sampling seed.')
_DTYPE = flags.DEFINE_enum(
  'dtype', 'float32', ['float32', 'bfloat16'], 'Parameter/compute dtype.'
)
_SYSTEM = flags.DEFINE_string(
  'system_prompt', None, "System turn (default: the chat template's)."
)
_RAW = flags.DEFINE_bool(
  'raw',
  False,
  'Feed the prompt as is (the tokenizer adds only its own special tokens, '
  'e.g. <bos>), without the chat template.',
)
flags.mark_flag_as_required('prompt')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  text = generate_lib.complete(
    _MODEL.value,
    _PROMPT.value,
    max_new_tokens=_MAX_NEW_TOKENS.value,
    adapter=_ADAPTER.value,
    temperature=_TEMPERATURE.value,
    top_p=_TOP_P.value,
    seed=_SEED.value,
    dtype=_DTYPE.value,
    system_prompt=_SYSTEM.value,
    raw=_RAW.value,
  )
  print(text, flush=True)


if __name__ == '__main__':
  app.run(main)
