r"""Fine-tunes the config's LoRA adapter (paper step 1) and exports it.

  python -m experiments.finetune --config=configs/smollm2_demo.py \
    [--config.finetune.steps=100] [--workdir=DIR] [--accuracy_items=64]

DIR defaults to results/<run_name>/finetune. It receives config.json (the
resolved config), checkpoints/ (a killed run started again resumes there),
adapter/ (PEFT), lora/ (Orbax LoRA tree) and result.json. With
--accuracy_items=N > 0, the base model and the fine-tuned adapter are also
scored by greedy decoding on held-out arithmetic and yes/no items
(`gatoms_jax.finetune.greedy_accuracy`), written to accuracy.json.
"""

from __future__ import annotations

import json
import os

import jax
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from gatoms_jax import finetune as finetune_lib

_CONFIG = config_flags.DEFINE_config_file(
  'config', None, 'Config file (configs/*.py).', lock_config=True
)
_WORKDIR = flags.DEFINE_string(
  'workdir', None, 'Output directory (default results/<run_name>/finetune).'
)
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
flags.mark_flag_as_required('config')


def accuracy_items(config, heldout_ids, tasks, n_per_task):
  """Held-out documents of `tasks`, topped up with unseen generated ones."""
  from gatoms_jax import data as data_lib

  docs = data_lib.load_documents(config.data)
  held = set(heldout_ids)
  chosen = {
    t: [d for d in docs if d.doc_id in held and d.label == t] for t in tasks
  }
  if not config.data.path:
    # Documents past n_docs were never trained on (the generator redraws
    # exact duplicates of earlier documents).
    extra = n_per_task * len(data_lib.TASK_TYPES) + len(data_lib.TASK_TYPES)
    more = data_lib.generate_mixture(
      config.data.n_docs + extra, config.data.generator_seed
    )[config.data.n_docs :]
    for d in more:
      if d.label in chosen and len(chosen[d.label]) < n_per_task:
        chosen[d.label].append(d)
  return [d for t in tasks for d in chosen[t][:n_per_task]]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config = _CONFIG.value
  workdir = _WORKDIR.value or os.path.join(
    config.results_dir, config.run_name, 'finetune'
  )
  logging.info('jax %s, devices: %s', jax.__version__, jax.devices())
  logging.info('config:\n%s', config)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    f.write(config.to_json_best_effort(indent=2) + '\n')
  result = finetune_lib.finetune(config, workdir)
  summary = result.summary()
  if _ACCURACY_ITEMS.value > 0:
    from gatoms_jax.models import generate as generate_lib
    from gatoms_jax.models import lora as lora_lib

    items = accuracy_items(
      config, result.heldout_ids, _ACCURACY_TASKS.value, _ACCURACY_ITEMS.value
    )
    eos = generate_lib.eos_token_ids(config.model.path, result.tokenizer)
    init = lora_lib.init_lora(result.lora, config.lora.init_seed)
    scores = {}
    for name, tree in (('base', init), ('finetuned', result.lora)):
      scores[name] = finetune_lib.greedy_accuracy(
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
    with open(os.path.join(workdir, 'accuracy.json'), 'w') as f:
      json.dump(scores, f, indent=2)
  print(json.dumps(summary, indent=2), flush=True)


if __name__ == '__main__':
  app.run(main)
