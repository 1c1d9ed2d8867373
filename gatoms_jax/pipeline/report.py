"""The run report: report.md, summary.json and two figures.

Figure 1 (in the spirit of the paper's): coherence of every atom, sorted,
beside the k-means clusters read the same way. Figure 2: detection rate of each
behaviour against the signed steering coefficient, atoms solid and
random-direction controls dashed, with the unsteered baseline.
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

import numpy as np

from gatoms_jax.core.io import read_json, write_json, write_text
from gatoms_jax.method.steering import sweep
from gatoms_jax.pipeline import explain
from gatoms_jax.pipeline.manifest import STAGES


def _fmt(x, digits=3):
  if x is None:
    return '–'
  if isinstance(x, float):
    return f'{x:.{digits}f}'
  return str(x)


def coherence_plot(atom_summaries, kmeans_summaries, path: str) -> None:
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(7, 4))
  for summaries, label, style in (
    (atom_summaries, 'dictionary atoms', '-'),
    (kmeans_summaries, 'k-means clusters', '--'),
  ):
    values = sorted(
      (s['coherence'] for s in summaries or [] if s['coherence'] is not None),
      reverse=True,
    )
    if values:
      ax.plot(np.arange(1, len(values) + 1), values, style, label=label)
  for level in (0.1, 0.5):
    ax.axhline(level, color='grey', lw=0.6, ls=':')
  ax.set_xlabel('rank')
  ax.set_ylabel('coherence (mean pairwise cosine of raw gradients)')
  ax.set_title('Coherence of atoms vs k-means clusters')
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def steering_plot(sweeps: dict, path: str) -> None:
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  names = list(sweeps)
  if not names:
    return
  fig, axes = plt.subplots(
    1, len(names), figsize=(3.2 * len(names), 3.4), squeeze=False
  )
  for ax, name in zip(axes[0], names):
    res = sweeps[name]
    for direction, rec in res['directions'].items():
      items = sorted((float(k), v['rate']) for k, v in rec['variants'].items())
      xs = [0.0] + [k for k, _ in items]
      ys = [res['baseline']['rate']] + [r for _, r in items]
      order = np.argsort(xs)
      is_random = direction.startswith('random')
      ax.plot(
        np.array(xs)[order],
        np.array(ys)[order],
        '--' if is_random else '-o',
        color='grey' if is_random else None,
        lw=0.8 if is_random else 1.5,
        ms=3,
        label=direction,
      )
    ax.axhline(res['baseline']['rate'], color='black', lw=0.6, ls=':')
    ax.set_title(name)
    ax.set_xlabel('KL level (away < 0 < toward)')
    ax.set_ylim(-3, 103)
  axes[0][0].set_ylabel('detection rate (%)')
  axes[0][-1].legend(fontsize=6)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


# report.md flags a label that lost more than this share of its documents.
LABEL_LOSS_FLAG = 0.10


def data_summary(finetune_results: dict) -> dict | None:
  """Read/truncated/excluded counts (overall and per label) from the
  finetune manifest's results, with the labels that lost > 10% flagged."""
  if 'n_docs_read' not in finetune_results:
    return None
  per_label = finetune_results.get('per_label') or {}
  return {
    'truncation': finetune_results.get('truncation'),
    'n_docs_read': finetune_results['n_docs_read'],
    'n_truncated': finetune_results.get('n_truncated'),
    'n_answer_truncated': finetune_results.get('n_answer_truncated'),
    'n_excluded': finetune_results.get('n_excluded'),
    'per_label': per_label,
    'labels_losing_over_10pct': sorted(
      label
      for label, c in per_label.items()
      if c['read'] and c['excluded'] / c['read'] > LABEL_LOSS_FLAG
    ),
  }


def _data_lines(data: dict | None) -> list[str]:
  if data is None:
    return []
  lines = [
    '## Data',
    '',
    f'- documents read: {data["n_docs_read"]}; truncated to data.max_length '
    f'(policy {data["truncation"]!r}): {data["n_truncated"]} (an answer cut: '
    f'{data["n_answer_truncated"]}); excluded (no answer token left): '
    f'**{data["n_excluded"]}**',
  ]
  lost = data['labels_losing_over_10pct']
  if lost:
    lines.append(
      f'- **WARNING: {len(lost)} label value(s) lost more than '
      f'{LABEL_LOSS_FLAG:.0%} of their documents: {", ".join(lost)}.** '
      'Atoms cannot be found for what was excluded; raise data.max_length '
      "or use data.truncation='keep_answers'."
    )
  if data['per_label']:
    lines += [
      '',
      '| label | read | truncated | excluded |',
      '|---|---:|---:|---:|',
    ]
    for label, c in data['per_label'].items():
      flag = ' ⚠' if label in lost else ''
      lines.append(
        f'| {label}{flag} | {c["read"]} | {c["truncated"]} | {c["excluded"]} |'
      )
  return lines + ['']


# Manifest figures per stage in summary.json and the stage table (n_shapes
# is in the stage's results).
_RESOURCE_KEYS = (
  'compile_seconds',
  'n_compilations',
  'n_shapes',
  'peak_rss_gb',
  'estimated_peak_gb',
)


def _manifest_results(run_dir: str, stage: str):
  m = read_json(os.path.join(run_dir, stage, 'manifest.json'), {}) or {}
  return m.get('results', {}), m.get('seconds')


def _interval(ci) -> str:
  return '–' if ci is None else f'[{ci[0]:+.0f}, {ci[1]:+.0f}]'


def _held_out_lines(summary: dict, c) -> list[str]:
  """The held-out verdict table: selected on one half, tested on the other."""
  rows = []
  for name, verdicts in summary['steering_verdicts'].items():
    for direction in ('toward', 'away'):
      v = verdicts.get(direction)
      if not v:
        continue
      ceiling = v.get('ceiling_shift_pp')
      rows.append(
        f'| {name} | {direction} | {v["atom"]} @ {v["kl_level"]:g} | '
        f'{v["n_test"]} | {v["baseline_rate"]:.0f} → {v["rate"]:.0f} | '
        f'{v["shift_pp"]:+.0f} {_interval(v["shift_ci95"])} | '
        f'{_fmt(v["control_shift_pp"], 0)} ({v["control"] or "–"}) | '
        f'{_fmt(ceiling, 0)} | {_fmt(v["p_value"], 3)} / '
        f'{_fmt(v.get("p_holm"), 3)} | {"yes" if v.get("steers") else "no"} |'
      )
  if not rows:
    return []
  return [
    '',
    'Held-out verdicts: the variant (atom direction, sign, KL level) is '
    "chosen on one half of each behaviour's prompts and reported on the "
    'other (test) half; shift in points with a 95% paired-bootstrap interval; '
    'p: exact McNemar, atom variant vs the strongest null (random directions'
    ', unmatched atoms) at the same KL level on the test prompts, then '
    'Holm-corrected over behaviours. Steers: Holm p < '
    f'{c.significance:g}, shift ≥ {c.min_shift_pp:g} pp and ≥ '
    f'{c.control_margin_pp:g} pp beyond the null, within the guard. Ceiling: '
    'the supervised direction (detector-firing training documents minus the '
    'rest) at its best level, on the same prompts.',
    '',
    '| behaviour | direction | variant | test prompts | rate % | shift pp [95%] '
    '| null shift pp | ceiling shift pp | p / Holm p | steers? |',
    '|---|---|---|---:|---:|---:|---:|---:|---:|---|',
    *rows,
  ]


def _side_effect_lines(rows: dict | None) -> list[str]:
  """Steering one behaviour (rows) vs the rate shift of every behaviour."""
  if not rows:
    return []
  measured = list(next(iter(next(iter(rows.values())).values())))
  lines = [
    '',
    "Side effects: each behaviour's held-out variant applied to every "
    "behaviour's prompts; shift of that behaviour's rate in points.",
    '',
    '| steered | ' + ' | '.join(measured) + ' |',
    '|---|' + '---:|' * len(measured),
  ]
  for name, by_direction in rows.items():
    for direction, cells in by_direction.items():
      lines.append(
        f'| {name} {direction} | '
        + ' | '.join(f'{cells[m]["shift_pp"]:+.0f}' for m in measured)
        + ' |'
      )
  return lines


def _composition_lines(summary: dict, examples: list | None) -> list[str]:
  """Documents that teach two task types, and what atoms vs k-means name."""
  both = summary.get('both_labels_recovered_fraction')
  if not both:
    return []
  active = summary.get('mean_active_atoms') or {}
  wrong = summary.get('wrong_type_named_fraction') or {}
  lines = [
    '## Documents that teach two behaviours',
    '',
    f'{summary["n_compositional_docs"]} documents combine two task types in '
    'one answer. Both of their task types are named by the atoms in their '
    f'support for {_fmt(both.get("atoms"), 2)} of them, by their k-means '
    f'cluster for {_fmt(both.get("kmeans"), 2)} (a cluster names one type). '
    'Chance control, one of its types named together with a type it does '
    f'not teach: atoms {_fmt(wrong.get("atoms"), 3)}, k-means '
    f'{_fmt(wrong.get("kmeans"), 3)}. '
    'Mean active atoms: single-task '
    f'{_fmt(active.get("single"), 2)}, compositional '
    f'{_fmt(active.get("compositional"), 2)}. Single-task types recovered: '
    f'atoms {summary.get("n_single_label_values_recovered")}, k-means '
    f'{summary.get("kmeans_n_single_label_values_recovered")} of '
    f'{summary.get("n_single_label_values")}.',
    '',
  ]
  for ex in examples or []:
    text = ex['response'].replace('\n', ' ⏎ ').replace('|', '\\|')
    lines += [
      f'- `{ex["doc_id"]}` ({" + ".join(ex["labels"])}): {text}',
      '',
      '  | atom | code | atom label | keywords |',
      '  |---:|---:|---|---|',
    ]
    lines += [
      f'  | {a["atom"]} | {a["code"]:+.3f} | {a["label"] or "–"} | '
      f'{", ".join(a["keywords"])} |'
      for a in ex['atoms']
    ]
    lines.append('')
  return lines


def _composition_steering_lines(composition: dict | None) -> list[str]:
  """The composed-direction verdict: all detectors on the same answer."""
  if not composition:
    return []
  names = ' + '.join(composition['behaviors'])
  lines = [
    '',
    f'Composition: {names} steered at once by the unit-norm sum of their '
    'atom directions; rate = answers on which every detector fires.',
    '',
    '| direction | level | baseline % | rate % | shift pp [95%] | null shift pp | p | steers? |',
    '|---|---:|---:|---:|---:|---:|---:|---|',
  ]
  for direction in ('toward', 'away'):
    v = composition.get(direction)
    if not v:
      continue
    lines.append(
      f'| {direction} | {v["kl_level"]:g} | {v["baseline_rate"]:.0f} | '
      f'{v["rate"]:.0f} | {v["shift_pp"]:+.0f} {_interval(v["shift_ci95"])} | '
      f'{_fmt(v["control_shift_pp"], 0)} | {_fmt(v["p_value"], 3)} | '
      f'{"yes" if v.get("steers") else "no"} |'
    )
  return lines


def write_report(
  run_dir: str, config: Any, stages: Sequence[str] = STAGES
) -> dict:
  """Writes <run_dir>/report.md, summary.json and the PNG figures.

  Reads only the stages' artefacts and manifests under `run_dir`.

  Args:
    run_dir: results/<run_name>.
    config: the run's resolved config (report settings and the config dump).
    stages: the stages whose timings are reported, in order.

  Returns:
    The headline figures of summary.json.
  """
  char_dir = os.path.join(run_dir, 'atoms')
  atoms = (read_json(os.path.join(char_dir, 'atoms.json'), {}) or {}).get(
    'atoms', []
  )
  kmeans = (read_json(os.path.join(char_dir, 'kmeans.json'), {}) or {}).get(
    'atoms', []
  )
  char = read_json(os.path.join(char_dir, 'summary.json'), {}) or {}
  sweeps = sweep.load_sweeps(os.path.join(run_dir, 'steering'))
  side_effects = read_json(
    os.path.join(run_dir, 'steering', 'side_effects.json'), None
  )
  composition = read_json(
    os.path.join(run_dir, 'steering', 'composition.json'), None
  )
  stage_seconds = {}
  # Per-stage resources from the manifests (gatoms_jax/pipeline/memory.py).
  resources = {k: {} for k in _RESOURCE_KEYS}
  for stage in stages:
    _, seconds = _manifest_results(run_dir, stage)
    if seconds is not None:
      stage_seconds[stage] = round(seconds, 1)
    m = read_json(os.path.join(run_dir, stage, 'manifest.json'), {}) or {}
    for key in _RESOURCE_KEYS:
      value = m.get('results', {}).get(key) if key == 'n_shapes' else m.get(key)
      if value is not None:
        resources[key][stage] = value
  finetune, _ = _manifest_results(run_dir, 'finetune')
  dictionary, _ = _manifest_results(run_dir, 'dictionary')
  extract, _ = _manifest_results(run_dir, 'gradients')

  coherence_plot(atoms, kmeans, os.path.join(run_dir, 'coherence.png'))
  steering_plot(sweeps, os.path.join(run_dir, 'steering.png'))

  steering = {
    name: {
      k: res['summary'][k] for k in ('baseline', 'best_toward', 'best_away')
    }
    for name, res in sweeps.items()
  }
  summary = {
    'run_name': config.run_name,
    'n_docs': extract.get('n_rows'),
    'n_atoms': dictionary.get('n_atoms'),
    'dictionary_objective': dictionary.get('objective'),
    'mean_nnz': dictionary.get('mean_nnz'),
    'n_label_values': char.get('n_label_values'),
    'n_label_values_recovered': char.get('n_label_values_recovered'),
    'recovered_labels': char.get('recovered'),
    'kmeans_n_label_values_recovered': char.get(
      'kmeans_n_label_values_recovered'
    ),
    'kmeans_recovered_labels': char.get('kmeans_recovered'),
    'n_label_values_with_pure_atom': char.get('n_label_values_with_pure_atom'),
    'knn10_label_agreement': char.get('knn10_label_agreement'),
    # Documents that teach two task types (the generated mixture's
    # compositional share): both labels named by the atoms in their support
    # vs by their k-means cluster.
    'n_single_label_values': char.get('n_single_label_values'),
    'n_single_label_values_recovered': char.get(
      'n_single_label_values_recovered'
    ),
    'kmeans_n_single_label_values_recovered': char.get(
      'kmeans_n_single_label_values_recovered'
    ),
    'n_compositional_docs': char.get('n_compositional_docs'),
    'both_labels_recovered_fraction': char.get(
      'both_labels_recovered_fraction'
    ),
    'wrong_type_named_fraction': char.get('wrong_type_named_fraction'),
    'mean_active_atoms': char.get('mean_active_atoms'),
    'n_coherence_above_0_5': char.get('n_coherence_above_0_5'),
    'n_coherence_above_0_1': char.get('n_coherence_above_0_1'),
    'heldout_loss_before': finetune.get('heldout_loss_before'),
    'heldout_loss_after': finetune.get('heldout_loss_after'),
    'data': data_summary(finetune),
    'steering': steering,
    # Held-out verdicts (selected on one half of the prompts, tested on the
    # other), per behaviour and direction; `per_atom` keeps the all-prompts
    # verdict of each swept atom direction.
    'steering_verdicts': {
      name: {
        **(res['summary'].get('held_out') or {}),
        'per_atom': {
          atom: {
            k: v.get(k)
            for k in ('steers', 'alpha', 'shift_pp', 'control_shift_pp')
          }
          for atom, v in res['summary']['verdicts'].items()
        },
      }
      for name, res in sweeps.items()
    },
    'side_effects': (side_effects or {}).get('rows'),
    # Several behaviours steered at once (their atoms' summed direction):
    # held-out verdicts on "every detector fires on the same answer".
    'steering_composition': composition
    and {
      'behaviors': composition['behaviors'],
      **composition['result']['held_out'],
    },
    'stage_seconds': stage_seconds,
    **resources,
  }
  write_json(os.path.join(run_dir, 'summary.json'), summary)

  lines = [f'# Gradient Atoms report: `{config.run_name}`', '']
  lines += [
    f'- documents with gradients: {summary["n_docs"]}; atoms: {summary["n_atoms"]}; '
    f'mean non-zero codes per document: {_fmt(summary["mean_nnz"], 2)}',
    f'- held-out loss per token before/after fine-tuning: '
    f'{_fmt(summary["heldout_loss_before"])} / {_fmt(summary["heldout_loss_after"])}',
    f'- atoms with coherence > 0.5: {summary["n_coherence_above_0_5"]}; > 0.1: '
    f'{summary["n_coherence_above_0_1"]}',
  ]
  if summary['n_label_values'] is not None:
    lines += [
      f'- label values recovered (majority with purity ≥ '
      f'{config.atoms.purity_threshold} among the top '
      f'{config.atoms.report_top} atoms by coherence): '
      f'**{summary["n_label_values_recovered"]} of {summary["n_label_values"]}** '
      f'({", ".join(summary["recovered_labels"] or [])})',
      f'- k-means baseline (K clusters on the same projected gradients, read the '
      f'same way): **{summary["kmeans_n_label_values_recovered"]} of '
      f'{summary["n_label_values"]}** ({", ".join(summary["kmeans_recovered_labels"] or [])})',
      f'- label values that are the majority (purity ≥ '
      f'{config.atoms.purity_threshold}) of any atom: '
      f'{_fmt(summary["n_label_values_with_pure_atom"])} of '
      f'{summary["n_label_values"]}; '
      f'label agreement of the 10 nearest projected gradients: '
      f'{_fmt(summary["knn10_label_agreement"], 2)} (chance ≈ '
      f'{1 / summary["n_label_values"]:.2f})',
    ]
  lines += [''] + _data_lines(summary['data'])
  lines += [f'## Top {config.atoms.report_top} atoms by coherence', '']
  lines += [
    '| rank | atom | coherence | active docs | majority label (purity) | keywords |',
    '|---:|---:|---:|---:|---|---|',
  ]
  for rank, s in enumerate(atoms[: config.atoms.report_top], 1):
    label = (
      f'{s["majority_label"]} ({s["purity"]:.2f})'
      if s.get('majority_label')
      else '–'
    )
    lines.append(
      f'| {rank} | {s["atom"]} | {_fmt(s["coherence"])} | {s["n_active"]} | '
      f'{label} | {", ".join(s["keywords"][:6])} |'
    )
  lines += ['', '![coherence](coherence.png)', '']
  if kmeans:
    lines += ['## k-means baseline: top clusters by coherence', '']
    lines += [
      '| rank | cluster | coherence | size | majority label (purity) |',
      '|---:|---:|---:|---:|---|',
    ]
    for rank, s in enumerate(kmeans[:10], 1):
      label = (
        f'{s["majority_label"]} ({s["purity"]:.2f})'
        if s.get('majority_label')
        else '–'
      )
      lines.append(
        f'| {rank} | {s["atom"]} | {_fmt(s["coherence"])} | {s["n_active"]} | {label} |'
      )
    lines.append('')
  lines += _composition_lines(summary, char.get('compositional_examples'))
  if sweeps:
    c = config.steering
    lines += ['## Steering', '']
    lines += [
      'Each direction is a unit-norm LoRA delta v, applied as θ − c·v '
      '("toward", c > 0: a descent step on the atom\'s documents) or with '
      'c < 0 ("away"). Each |c| is calibrated so that the per-token '
      "KL(unsteered ‖ steered) along the unsteered model's answers to the "
      f'control prompts (first {c.kl_tokens} tokens) reaches a KL level: the '
      'level column, signed by direction. Random rows are random directions '
      'in the projected space, unprojected like the atoms and calibrated to '
      'the same levels. Rates are over all prompts (inviting / controls in '
      'brackets); KL is the level reached; degenerate is the fraction of '
      f'looping outputs. Guard: KL ≤ {c.max_kl} and degenerate ≤ unsteered + '
      f'{c.max_degenerate_increase}.',
      '',
      '| behaviour | direction | level | c | rate % (inviting / controls) | KL | degenerate |',
      '|---|---|---:|---:|---:|---:|---:|',
    ]

    def rates(v):
      split = [
        '–' if v.get(k) is None else f'{v[k]:.0f}'
        for k in ('rate_invites', 'rate_controls')
      ]
      return f'{v["rate"]:.1f} ({" / ".join(split)})'

    for name, res in sweeps.items():
      b = res['baseline']
      lines.append(
        f'| {name} | baseline | 0 | 0 | {rates(b)} | 0 | {b["degenerate"]:.2f} |'
      )
      for direction, rec in res['directions'].items():
        for k, v in sorted(
          rec['variants'].items(), key=lambda kv: float(kv[0])
        ):
          lines.append(
            f'| {name} | {direction} | {k} | {v["coefficient"]:+.3g} | '
            f'{rates(v)} | {v["kl"]:.3f} | '
            f'{v["degenerate"]:.2f} |'
          )
    lines += [
      '',
      'Best variants within the guard ("toward" = highest rate, "away" = '
      'lowest, whichever sign did it; in brackets the KL level and c), and '
      'the verdict: a shift ≥ '
      f'{c.min_shift_pp:g} pp that beats every random control at the same '
      f'level by {c.control_margin_pp:g} pp, within the guard.',
      '',
      '| behaviour | baseline % | best toward % | best away % | steers beyond random? |',
      '|---|---:|---:|---:|---|',
    ]

    def best(row):
      return (
        f'{row["rate"]:.1f} ({_fmt(row.get("kl_level"), 1)}, '
        f'{_fmt(row["alpha"], 2)})'
      )

    for name, row in steering.items():
      verdicts = summary['steering_verdicts'][name]['per_atom']
      steers = ', '.join(
        f'{a}: {"yes" if v["steers"] else "no"}' for a, v in verdicts.items()
      )
      lines.append(
        f'| {name} | {row["baseline"]["rate"]:.1f} | {best(row["best_toward"])} '
        f'| {best(row["best_away"])} | {steers} |'
      )
    lines += _held_out_lines(summary, c)
    lines += _side_effect_lines(summary.get('side_effects'))
    lines += _composition_steering_lines(summary.get('steering_composition'))
    lines += ['', '![steering](steering.png)', '']
  lines += explain.heldout_section(run_dir)
  lines += [
    '## Stages',
    '',
    '| stage | seconds | compile s | compilations | shapes | peak RSS GB '
    '| estimated GB |',
    '|---|---:|---:|---:|---:|---:|---:|',
  ]
  for k, v in stage_seconds.items():
    cells = [_fmt(resources[key].get(k), 2) for key in _RESOURCE_KEYS]
    lines.append(f'| {k} | {v} | ' + ' | '.join(cells) + ' |')
  lines += [
    '',
    '## Config',
    '',
    '```json',
    json.dumps(config.to_dict(), indent=1, default=str),
    '```',
    '',
  ]
  write_text(os.path.join(run_dir, 'report.md'), '\n'.join(lines))
  return {
    k: summary[k]
    for k in ('n_label_values_recovered', 'kmeans_n_label_values_recovered')
  }
