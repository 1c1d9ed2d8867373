r"""Writes a JSONL of chat documents with long user turns and short answers.

  python -m experiments.make_long_docs --out=/tmp/long.jsonl --n=200 \
    [--min_words=300 --max_words=800 --seed=0]

Then e.g. `python -m experiments.pipeline --config=configs/smollm2_demo.py
--config.run_name=long --config.data.path=/tmp/long.jsonl
--config.data.max_length=1024`: user turns of ~300-800 tokens.
"""

from __future__ import annotations

from absl import app, flags

from gatoms_jax.demo import long_docs

_OUT = flags.DEFINE_string('out', None, 'Output JSONL path.', required=True)
_N = flags.DEFINE_integer('n', 200, 'Number of documents.')
_MIN = flags.DEFINE_integer('min_words', 300, 'Fewest filler words per turn.')
_MAX = flags.DEFINE_integer('max_words', 800, 'Most filler words per turn.')
_SEED = flags.DEFINE_integer('seed', 0, 'Generator seed.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  path = long_docs.write_long_chat_jsonl(
    _OUT.value,
    _N.value,
    seed=_SEED.value,
    min_words=_MIN.value,
    max_words=_MAX.value,
  )
  print(path)


if __name__ == '__main__':
  app.run(main)
