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

from gatoms_jax.core.io import write_json, write_text
from gatoms_jax.pipeline.manifest import STAGES


def _read(path: str, default=None):
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    return default


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
  m = _read(os.path.join(run_dir, stage, 'manifest.json'), {}) or {}
  return m.get('results', {}), m.get('seconds')


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
  atoms = (_read(os.path.join(char_dir, 'atoms.json'), {}) or {}).get(
    'atoms', []
  )
  kmeans = (_read(os.path.join(char_dir, 'kmeans.json'), {}) or {}).get(
    'atoms', []
  )
  char = _read(os.path.join(char_dir, 'summary.json'), {}) or {}
  sweeps = _read(os.path.join(run_dir, 'steering', 'sweeps.json'), {}) or {}
  stage_seconds = {}
  # Per-stage resources from the manifests (gatoms_jax/pipeline/memory.py).
  resources = {k: {} for k in _RESOURCE_KEYS}
  for stage in stages:
    _, seconds = _manifest_results(run_dir, stage)
    if seconds is not None:
      stage_seconds[stage] = round(seconds, 1)
    m = _read(os.path.join(run_dir, stage, 'manifest.json'), {}) or {}
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
    'n_coherence_above_0_5': char.get('n_coherence_above_0_5'),
    'n_coherence_above_0_1': char.get('n_coherence_above_0_1'),
    'heldout_loss_before': finetune.get('heldout_loss_before'),
    'heldout_loss_after': finetune.get('heldout_loss_after'),
    'steering': steering,
    'steering_verdicts': {
      name: {
        atom: {
          k: v.get(k)
          for k in ('steers', 'alpha', 'shift_pp', 'control_shift_pp')
        }
        for atom, v in res['summary']['verdicts'].items()
      }
      for name, res in sweeps.items()
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
  lines += ['', f'## Top {config.atoms.report_top} atoms by coherence', '']
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
      verdicts = summary['steering_verdicts'][name]
      steers = ', '.join(
        f'{a}: {"yes" if v["steers"] else "no"}' for a, v in verdicts.items()
      )
      lines.append(
        f'| {name} | {row["baseline"]["rate"]:.1f} | {best(row["best_toward"])} '
        f'| {best(row["best_away"])} | {steers} |'
      )
    lines += ['', '![steering](steering.png)', '']
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
