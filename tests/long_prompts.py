"""Writes chat JSONL with long prompts and short answers (instruction-data shape).

Real instruction sets (e.g. Super-NaturalInstructions) hold user turns of
thousands of characters and answers of a few dozen tokens; with
`data.max_length=256` a right cut keeps no answer token of such documents.
Tests and the acceptance run use this file shape:

  python tests/long_prompts.py OUT.jsonl [N_DOCS]
"""

import json
import random
import sys

LABELS = ('pos_tagging', 'text_to_code', 'translation', 'summary', 'qa', 'nli')
_WORDS = (
  'the river model data under over quickly report signal window garden '
  'seven blue engine market paper letter yellow simple table orange green '
  'number system change travel person city music light stone answer small '
  'water winter summer random several nothing between forward history'
).split()


def long_prompt_records(
  n_docs: int, prompt_words: int = 790, answer_words: int = 22, seed: int = 0
) -> list[dict]:
  """Chat records, labels in `task`: user ~800 tokens, answer ~30 tokens."""
  rng = random.Random(seed)
  records = []
  for i in range(n_docs):
    label = LABELS[i % len(LABELS)]
    prompt = ' '.join(rng.choice(_WORDS) for _ in range(prompt_words))
    answer = ' '.join(rng.choice(_WORDS) for _ in range(answer_words))
    records.append(
      {
        'id': f'long-{i:04d}',
        'task': label,
        'messages': [
          {'role': 'user', 'content': f'Task {label}. {prompt}'},
          {'role': 'assistant', 'content': f'{label}: {answer}.'},
        ],
      }
    )
  return records


def write_long_prompts(path: str, n_docs: int, **kwargs) -> str:
  """Writes `long_prompt_records(n_docs, **kwargs)` as JSONL to `path`."""
  with open(path, 'w', encoding='utf-8') as f:
    for record in long_prompt_records(n_docs, **kwargs):
      f.write(json.dumps(record) + '\n')
  return path


if __name__ == '__main__':
  write_long_prompts(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 60)
