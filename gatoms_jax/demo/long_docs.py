"""Generated chat documents with long user turns and short answers.

For memory and compilation checks at long lengths (issue 12): each user turn
is a topic sentence followed by `min_words`..`max_words` filler words (about
one SmolLM2 token each), the answer a few words naming the topic, so the loss
sits on a few tokens at the end of a long context.
"""

from __future__ import annotations

import json
from typing import Iterator

import numpy as np

TOPICS = ('weather', 'cooking', 'travel', 'music', 'gardening', 'chess')
_FILLER = (
  'the of and to in is that for it as with was on be by this are from at '
  'an or have not but they which one you had all we can her has there been '
  'if more when will would who so no about time people year only new some '
  'could them see other than then now look come over think also back after '
  'use two how our work first well way even want because any these give day'
).split()


def long_chat_records(
  n: int, *, seed: int = 0, min_words: int = 300, max_words: int = 800
) -> Iterator[dict]:
  """Chat JSONL records {"messages", "task"} with long user turns."""
  if not 0 < min_words <= max_words:
    raise ValueError(
      f'need 0 < min_words <= max_words, got {min_words}, {max_words}'
    )
  rng = np.random.default_rng(seed)
  for i in range(n):
    topic = TOPICS[i % len(TOPICS)]
    size = int(rng.integers(min_words, max_words + 1))
    filler = ' '.join(rng.choice(_FILLER, size=size).tolist())
    user = f'Here is a long note about {topic}. {filler}. What is it about?'
    answer = (
      f'It is about {topic}' + ', briefly' * int(rng.integers(0, 3)) + '.'
    )
    yield {
      'messages': [
        {'role': 'user', 'content': user},
        {'role': 'assistant', 'content': answer},
      ],
      'task': topic,
    }


def write_long_chat_jsonl(path: str, n: int, **kw) -> str:
  """Writes `long_chat_records(n, **kw)` to `path` (one JSON per line)."""
  with open(path, 'w') as f:
    for record in long_chat_records(n, **kw):
      f.write(json.dumps(record) + '\n')
  return path
