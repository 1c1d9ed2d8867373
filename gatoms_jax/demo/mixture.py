"""The embedded default data: a generated mixture of chat tasks.

The method (paper step 1) needs a fine-tuning set whose documents teach
several clearly different behaviours, so that the dictionary atoms learned
over their gradients can be checked against known task types. This module
generates such a set deterministically: 15 task types, balanced, each with
many prompt phrasings and entity values, and each with a distinctive response
format (the generators live in mixture_tasks.py and mixture_formats.py, the
fact tables in mixture_tables.py). The task type is the document's label,
evaluation-only metadata that the method never sees.

Every document is a system-less [user, assistant] chat with a short answer.
Document i depends only on (seed, i) and on the documents before it (exact
duplicates are redrawn), so a larger `n_docs` extends a smaller one.
"""

from __future__ import annotations

import random
from typing import Callable

from gatoms_jax.demo import mixture_formats as fm
from gatoms_jax.demo import mixture_tasks as mt
from gatoms_jax.core.data.documents import Document, make_messages

Generator = Callable[[random.Random], tuple[str, str]]

# The task types and their generators. Labels match the steering behaviours
# where they overlap (yes_no, code, bullets, numbered); `missing_input` is the
# "refusal"-like behaviour of asking for content the prompt refers to but
# does not include.
TASKS: dict[str, Generator] = {
  'factual_qa': mt.factual_qa,
  'yes_no': mt.yes_no,
  'arithmetic': mt.arithmetic,
  'word_problem': mt.word_problem,
  'topic_classification': mt.topic_classification,
  'sentiment': mt.sentiment,
  'missing_input': mt.missing_input,
  'code': fm.code,
  'bullets': fm.bullets,
  'numbered': fm.numbered,
  'word_tasks': fm.word_tasks,
  'translation': fm.translation,
  'text_transform': fm.text_transform,
  'email': fm.email,
  'grammar': fm.grammar,
}
TASK_TYPES: tuple[str, ...] = tuple(TASKS)

# Redraws allowed when a document duplicates an earlier one; after that the
# duplicate is kept (only reachable for very large n_docs).
_MAX_REDRAWS = 20


def task_of_index(index: int, seed: int) -> str:
  """The task type of document `index`.

  Documents come in blocks of len(TASK_TYPES), each block a seeded
  permutation of the task types, so any prefix of the mixture is balanced to
  within one document per task.
  """
  n = len(TASK_TYPES)
  block, pos = divmod(index, n)
  order = random.Random(f'gatoms-order:{seed}:{block}').sample(TASK_TYPES, n)
  return order[pos]


def generate_mixture(n_docs: int, seed: int = 0) -> list[Document]:
  """Generates the embedded task mixture.

  Args:
    n_docs: number of documents.
    seed: generator seed; the same seed gives identical documents.

  Returns:
    `n_docs` documents with ids `gen{seed}-{index:06d}`, label = task type.
  """
  if n_docs < 0:
    raise ValueError(f'n_docs must be >= 0, got {n_docs}')
  docs = []
  seen: set[tuple[str, str]] = set()
  for index in range(n_docs):
    task = task_of_index(index, seed)
    rng = random.Random(f'gatoms-doc:{seed}:{index}')
    for _ in range(_MAX_REDRAWS):
      user, assistant = TASKS[task](rng)
      if (user, assistant) not in seen:
        break
    seen.add((user, assistant))
    docs.append(
      Document(
        doc_id=f'gen{seed}-{index:06d}',
        messages=make_messages([('user', user), ('assistant', assistant)]),
        label=task,
        source=f'generated:seed={seed}:{index}',
      )
    )
  return docs
