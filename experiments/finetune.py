r"""Pipeline stage 'finetune' alone (paper step 1), plus an optional accuracy check.

  python -m experiments.finetune --config=configs/smollm2_demo.py \
    [--config.finetune.steps=100] [--workdir=RESULTS_ROOT] [--accuracy_items=64]

Writes results/<run_name>/finetune (checkpoints/ — a killed run started again
resumes there — adapter/ (PEFT), lora/ (Orbax LoRA tree), result.json and the
stage manifest), like `experiments.pipeline --stages=finetune`. With
--accuracy_items=N > 0, the base model and the fine-tuned adapter are also
scored by greedy decoding on held-out arithmetic and yes/no items
(`gatoms_jax.demo.accuracy.greedy_accuracy`), written to accuracy.json.
"""

from __future__ import annotations

import json
import os

from absl import app, flags, logging

from experiments import _app
from gatoms_jax.core.io import write_json

_ACCURACY_ITEMS = flags.DEFINE_integer(
  'accuracy_items',
  0,
  'Items per task for the greedy-accuracy check (0: skip). Held-out docs of '
  'the tasks first, topped up with fresh generated ones (generated mixture '
  'only).',
)
_ACCURACY_TASKS = flags.DEFINE_list(
  'accuracy_tasks', ['arithmetic', 'yes_no'], 'Tasks scored by the check.'
)
_MAX_NEW_TOKENS = flags.DEFINE_integer(
  'max_new_tokens', 48, 'Generated tokens per item in the accuracy check.'
)


def accuracy_items(config, heldout_ids, tasks, n_per_task):
  """Held-out documents of `tasks`, topped up with unseen generated ones."""
  from gatoms_jax.demo import mixture, sources

  docs = sources.load_documents(config.data)
  held = set(heldout_ids)
  chosen = {
    t: [d for d in docs if d.doc_id in held and d.label == t] for t in tasks
  }
  if not config.data.path:
    # Documents past n_docs were never trained on (the generator redraws
    # exact duplicates of earlier documents).
    extra = n_per_task * len(mixture.TASK_TYPES) + len(mixture.TASK_TYPES)
    more = mixture.generate_mixture(
      config.data.n_docs + extra,
      config.data.generator_seed,
      config.data.compositional_fraction,
    )[config.data.n_docs :]
    for d in more:
      if d.label in chosen and len(chosen[d.label]) < n_per_task:
        chosen[d.label].append(d)
  return [d for t in tasks for d in chosen[t][:n_per_task]]


def accuracy_check(config) -> dict:
  """Greedy accuracy of the base model and the fine-tuned adapter."""
  from gatoms_jax.core.models import generate as generate_lib
  from gatoms_jax.core.models import lora as lora_lib
  from gatoms_jax.demo import accuracy
  from gatoms_jax.method import finetune as finetune_lib

  workdir = os.path.join(config.results_dir, config.run_name, 'finetune')
  # The stage is complete: this resumes at its last step and trains nothing.
  result = finetune_lib.finetune(config, workdir, progress=False)
  items = accuracy_items(
    config, result.heldout_ids, _ACCURACY_TASKS.value, _ACCURACY_ITEMS.value
  )
  eos = generate_lib.eos_token_ids(config.model.path, result.tokenizer)
  init = lora_lib.init_lora(result.lora, config.lora.init_seed)
  scores, summary = {}, {}
  for name, tree in (('base', init), ('finetuned', result.lora)):
    scores[name] = accuracy.greedy_accuracy(
      result.mdef,
      result.base,
      tree,
      result.tokenizer,
      items,
      eos_ids=eos,
      tasks=tuple(_ACCURACY_TASKS.value),
      max_new_tokens=_MAX_NEW_TOKENS.value,
    )
    for task, rec in scores[name].items():
      logging.info(
        '%s accuracy on %s: %d/%d = %.3f',
        name,
        task,
        rec['correct'],
        rec['n'],
        rec['accuracy'],
      )
      summary[f'accuracy_{name}_{task}'] = rec['accuracy']
  write_json(os.path.join(workdir, 'accuracy.json'), scores)
  return summary


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  done = _app.run_stages('finetune')
  summary = dict(done['finetune'].get('results', {}))
  if _ACCURACY_ITEMS.value > 0:
    summary.update(accuracy_check(_app.resolved_config()))
  print(json.dumps(summary, default=str), flush=True)


if __name__ == '__main__':
  _app.launch(main)
