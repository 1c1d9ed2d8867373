r"""Explains model outputs through the atoms of a finished run.

  # the run's held-out documents as queries (writes explain/explained_heldout.json):
  python -m experiments.explain --config=configs/smollm2_demo.py --queries=heldout
  # a JSONL file of {"prompt", "response"} records (optional "id", "label"):
  python -m experiments.explain --config=configs/smollm2_demo.py --queries=q.jsonl
  # a prompt: the fine-tuned model answers it first
  python -m experiments.explain --config=configs/smollm2_demo.py \
    --prompt="Is the sun a star?"

Knobs: the config's `explain` section. The last stdout line is one JSON object
(the metrics; with --prompt also the explanation of the answer).
"""

import json
import os

from absl import app, flags

from experiments import _app

_QUERIES = flags.DEFINE_string(
  'queries', 'heldout', '"heldout" or a JSONL file of prompt/response pairs.'
)
_PROMPT = flags.DEFINE_string(
  'prompt', None, "Explain the fine-tuned model's answer to this prompt."
)


def _print_query(q: dict) -> None:
  print(f'prompt: {q["prompt"]}')
  print(f'answer: {q["response"]}')
  print('top atoms (weight; coherence; majority label; keywords):')
  for a in q['top_atoms']:
    coherence = a['coherence']
    if isinstance(coherence, float):
      coherence = f'{coherence:.3f}'
    print(
      f'  atom {a["atom"]}: {a["weight"]:+.3f}; {coherence}; '
      f'{a["majority_label"]}; {", ".join(a["keywords"])}'
    )
  for name in ('atoms_top_docs', 'exact_top_docs'):
    print(f'{name.replace("_", " ")}:')
    for d in q[name]:
      label = f' [{d["label"]}]' if d['label'] is not None else ''
      print(f'  {d["score"]:+.3f} {d["doc_id"]}{label}: {d["excerpt"]}')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  from gatoms_jax.pipeline import explain

  config = _app.resolved_config()
  result = explain.run_explain(config, _QUERIES.value, _PROMPT.value)
  run_dir = os.path.join(config.results_dir, config.run_name)
  if _PROMPT.value is None and _QUERIES.value == 'heldout':
    if os.path.exists(os.path.join(run_dir, 'report.md')):
      from gatoms_jax.pipeline import report

      report.write_report(run_dir, config)  # adds the held-out section
  out = dict(result['metrics'])
  if _PROMPT.value is not None:
    query = result['queries'][0]
    _print_query(query)
    out['explanation'] = query
  print(json.dumps(out, default=str), flush=True)


if __name__ == '__main__':
  _app.launch(main)
