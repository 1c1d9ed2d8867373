"""The atom explorer: one self-contained HTML page per run.

`write_explorer(run_dir, documents)` reads a finished run's artefacts (the
stage directories' JSON/npy files and manifests, never pipeline objects) and
writes results/<run>/explorer.html: the data as one inline JSON block, the CSS
and a few hundred lines of plain JS (explorer_static/) that draw tables and
SVG plots. The page makes no request to any URL, so it opens from a file on a
laptop or a cluster login node with no network.

Size: documents are stored once (prompt and answer excerpts), atoms refer to
them by row; codes are stored sparsely (non-zeros only, 4 significant
digits). At 5,000 documents x 500 atoms this stays well under 10 MB (see
tests/test_explorer.py).
"""

from __future__ import annotations

import collections
import json
import os
import re
from importlib import resources
from typing import Any, Iterable, Mapping

import numpy as np

from gatoms_jax.core.io import read_json, write_text
from gatoms_jax.method.steering import sweep

# Stage directories the explorer reads (results/<run>/<stage>/).
IDS_STAGE = 'projection'  # ids.json: the document id of each code row
CODES_STAGE = 'dictionary'  # codes.npy [N, K]
ATOMS_STAGE = 'atoms'  # atoms.json, kmeans.json, kmeans_assignments.npy
STEER_STAGE = 'steering'  # sweeps.json

_STATIC = ('explorer.html', 'explorer.css', 'explorer.js')
_ATOM_DIRECTION = re.compile(r'^atom(\d+(?:\+\d+)*)$')


def _sig(x: float, digits: int = 4) -> float | None:
  """x rounded to `digits` significant digits (None for nan/inf)."""
  x = float(x)
  if not np.isfinite(x):
    return None
  return float(f'{x:.{digits}g}')


def _clip_text(text: str, n_bytes: int) -> str:
  """Text cut to about n_bytes of UTF-8, line breaks kept (not blank runs).

  Bytes, not characters: the file size is what the budget protects, and a
  character costs 1 to 4 bytes.
  """
  text = re.sub(r'\n{3,}', '\n\n', text.strip())
  raw = text.encode('utf-8')
  if len(raw) <= n_bytes:
    return text
  return raw[: max(n_bytes - 3, 0)].decode('utf-8', 'ignore') + '…'


def excerpt_sizes(n_docs: int, text_bytes: int) -> tuple[int, int]:
  """(prompt, answer) bytes per document for a total text budget.

  A third for the prompt, two thirds for the answer (what the atoms are
  read on), at most 2,000 / 4,000 bytes: a demo-sized run keeps its
  documents nearly whole, 5,000 documents get ~300 / 600 bytes each.
  """
  per_doc = text_bytes // max(n_docs, 1)
  return min(per_doc // 3, 2000), min(per_doc - per_doc // 3, 4000)


def _documents_by_id(documents) -> Mapping[str, Any]:
  if documents is None:
    return {}
  if isinstance(documents, Mapping):
    return documents
  return {d.doc_id: d for d in documents}


def _docs_block(ids, documents, text_bytes, assignments):
  prompt_bytes, answer_bytes = excerpt_sizes(len(ids), text_bytes)
  by_id = _documents_by_id(documents)
  prompts, answers, labels, missing = [], [], [], 0
  for doc_id in ids:
    doc = by_id.get(doc_id)
    if doc is None:
      missing += 1
      prompts.append('')
      answers.append('')
      labels.append(None)
      continue
    prompts.append(_clip_text(doc.user_text, prompt_bytes))
    answers.append(_clip_text(doc.assistant_text, answer_bytes))
    labels.append(None if doc.label is None else str(doc.label))
  return {
    'id': [str(i) for i in ids],
    'prompt': prompts,
    'answer': answers,
    'label': labels if any(x is not None for x in labels) else None,
    'cluster': None if assignments is None else assignments.tolist(),
    'n_missing_text': missing,
  }


def _kmeans_overlap(atom_rows, assignments, cluster_members):
  """The k-means cluster with the largest Jaccard overlap with an atom.

  With the saved assignments a cluster is all its members; without them
  (runs from before they were saved) only its top documents in kmeans.json.
  """
  rows = set(int(r) for r in atom_rows)
  if not rows or not cluster_members:
    return None
  if assignments is not None:
    inter = collections.Counter(int(assignments[r]) for r in rows)
  else:
    inter = {c: len(rows & m) for c, m in cluster_members.items()}
  best, best_jac = None, 0.0
  for c, n in sorted(inter.items()):
    jac = n / (len(rows) + len(cluster_members[c]) - n)
    if n and jac > best_jac:
      best, best_jac = {'cluster': c, 'overlap': n}, jac
  if best:
    best['jaccard'] = _sig(best_jac, 3)
  return best


def _kmeans_block(char_dir, ids, n_rows):
  clusters = (read_json(os.path.join(char_dir, 'kmeans.json'), {}) or {}).get(
    'atoms', []
  )
  path = os.path.join(char_dir, 'kmeans_assignments.npy')
  assignments = np.load(path) if os.path.exists(path) else None
  if assignments is not None and assignments.shape != (n_rows,):
    raise ValueError(
      f'{path}: {assignments.shape[0]} assignments for {n_rows} code rows'
    )
  row_of = {doc_id: r for r, doc_id in enumerate(ids)}
  if assignments is not None:
    members = {
      int(c): set(np.flatnonzero(assignments == c).tolist())
      for c in np.unique(assignments)
    }
  else:
    members = {
      int(s['atom']): {
        row_of[d] for d in s.get('top_doc_ids', []) if d in row_of
      }
      for s in clusters
    }
  info = {
    str(s['atom']): {
      'coherence': s.get('coherence'),
      'size': s.get('n_active'),
      'keywords': (s.get('keywords') or [])[:8],
      'majority_label': s.get('majority_label'),
      'purity': s.get('purity'),
    }
    for s in clusters
  }
  return (
    assignments,
    members,
    {
      'clusters': info,
      'basis': 'members' if assignments is not None else 'top documents',
    },
  )


def _sweeps_block(sweeps: dict):
  """Per behaviour: baseline and each direction's points by signed KL level.

  Also returns, per atom, the sweeps it took part in and its steering effect:
  the largest margin (pp) of its rate shift over the random controls at the
  same KL level (verdict `effect_pp - control_effect_pp`), over behaviours.
  """
  out, per_atom = {}, collections.defaultdict(list)
  effect, steers = {}, collections.defaultdict(bool)
  for name, res in sweeps.items():
    verdicts = res.get('summary', {}).get('verdicts', {})
    directions = {}
    for dname, rec in res.get('directions', {}).items():
      match = _ATOM_DIRECTION.match(dname)
      atoms_in = [int(a) for a in match.group(1).split('+')] if match else None
      passed = {
        float(p['alpha']): p.get('passed')
        for p in verdicts.get(dname, {}).get('per_alpha', [])
      }
      points = []
      for level, v in sorted(
        rec.get('variants', {}).items(), key=lambda kv: float(kv[0])
      ):
        points.append(
          {
            'level': float(level),
            'rate': v.get('rate'),
            'kl': _sig(v.get('kl', float('nan'))),
            'degenerate': v.get('degenerate'),
            'coefficient': _sig(v.get('coefficient', float('nan'))),
            'passed': passed.get(float(level)),
            # A few outputs, to read what the push does (atoms only).
            'samples': [o[:200] for o in v.get('outputs', [])[:3]]
            if atoms_in
            else [],
          }
        )
      directions[dname] = {'atoms': atoms_in, 'points': points}
      if atoms_in:
        verdict = verdicts.get(dname, {})
        margins = [
          p['effect_pp'] - (p.get('control_effect_pp') or 0.0)
          for p in verdict.get('per_alpha', [])
          if p.get('effect_pp') is not None
        ]
        for a in atoms_in:
          per_atom[a].append({'behavior': name, 'direction': dname})
          if margins:
            effect[a] = max(effect.get(a, -np.inf), max(margins))
          steers[a] |= bool(verdict.get('steers'))
    base = res.get('baseline', {})
    out[name] = {
      'baseline': base.get('rate'),
      'baseline_samples': [o[:200] for o in base.get('outputs', [])[:3]],
      'prompts': res.get('prompts', [])[:3],
      'n_prompts': res.get('n_prompts'),
      'directions': directions,
      'verdicts': {
        d: {k: v.get(k) for k in ('steers', 'alpha', 'shift_pp')}
        for d, v in verdicts.items()
      },
    }
  return out, per_atom, effect, steers


def _run_block(run_dir: str, config: dict | None) -> dict:
  from gatoms_jax.pipeline.manifest import STAGES

  stages = []
  for stage in STAGES:
    m = read_json(os.path.join(run_dir, stage, 'manifest.json'), None)
    if not m:
      continue
    results = {
      k: v
      for k, v in (m.get('results') or {}).items()
      if isinstance(v, (int, float, str, bool)) or v is None
    }
    stages.append(
      {
        'stage': stage,
        'seconds': m.get('seconds'),
        'finished': m.get('finished'),
        'complete': m.get('complete'),
        'results': results,
      }
    )
  config = config or read_json(os.path.join(run_dir, 'config.json'), {})
  return {
    'name': config.get('run_name')
    or os.path.basename(os.path.normpath(run_dir)),
    'config': config,
    'summary': read_json(os.path.join(run_dir, 'summary.json'), {}),
    'stages': stages,
  }


def collect(
  run_dir: str,
  documents: Iterable[Any] | Mapping[str, Any] | None = None,
  *,
  config: dict | None = None,
  text_bytes: int = 4_500_000,
) -> dict:
  """Gathers everything the page shows from a run's artefacts.

  Args:
    run_dir: results/<run>; needs projection/ids.json, dictionary/codes.npy
      and atoms/atoms.json; k-means, sweeps, manifests and config
      are shown when present.
    documents: the run's documents (objects with doc_id, user_text,
      assistant_text, label), or a mapping id -> document; None: the page
      shows ids and codes without text.
    config: the run's config as a dict; None: run_dir/config.json (which
      the pipeline writes after its last stage, so the report passes it).
    text_bytes: budget for all documents' prompt and answer excerpts
      (UTF-8 bytes before JSON escapes), shared out by `excerpt_sizes`.

  Returns:
    A JSON-ready dict (the page's data).

  Raises:
    FileNotFoundError: if a required artefact is missing.
    ValueError: if the artefacts disagree on the number of documents.
  """
  ids = read_json(os.path.join(run_dir, IDS_STAGE, 'ids.json'), None)
  codes_path = os.path.join(run_dir, CODES_STAGE, 'codes.npy')
  char_dir = os.path.join(run_dir, ATOMS_STAGE)
  atoms_file = read_json(os.path.join(char_dir, 'atoms.json'), None)
  for path, value in (
    (os.path.join(run_dir, IDS_STAGE, 'ids.json'), ids),
    (os.path.join(char_dir, 'atoms.json'), atoms_file),
  ):
    if value is None:
      raise FileNotFoundError(f'{path} is missing: run the pipeline first')
  codes = np.load(codes_path)
  if codes.ndim != 2 or codes.shape[0] != len(ids):
    raise ValueError(
      f'{codes_path} has shape {codes.shape} for {len(ids)} document ids'
    )
  summaries = atoms_file['atoms']
  assignments, members, kmeans = _kmeans_block(char_dir, ids, len(ids))
  sweeps = sweep.load_sweeps(os.path.join(run_dir, STEER_STAGE))
  sweeps, per_atom, effect, steers = _sweeps_block(sweeps or {})

  atoms = []
  for rank, s in enumerate(summaries, 1):
    k = int(s['atom'])
    if not 0 <= k < codes.shape[1]:
      raise ValueError(f'atom {k} is not a column of codes {codes.shape}')
    col = codes[:, k]
    rows = np.flatnonzero(col)
    rows = rows[np.argsort(-col[rows], kind='stable')]  # largest code first
    atoms.append(
      {
        'atom': k,
        'rank': rank,
        'coherence': s.get('coherence'),
        'n_active': int(len(rows)),
        'keywords': s.get('keywords') or [],
        'majority_label': s.get('majority_label'),
        'purity': s.get('purity'),
        'label_counts_top': s.get('label_counts'),
        'rows': rows.tolist(),
        'values': [_sig(v) for v in col[rows]],
        'kmeans': _kmeans_overlap(rows, assignments, members),
        'sweeps': per_atom.get(k, []),
        'steering_effect': _sig(effect[k], 3) if k in effect else None,
        'steers': steers[k] if k in per_atom else None,
      }
    )
  run = _run_block(run_dir, config)
  return {
    'run': run,
    # Coherence, keywords and purity are read on each atom's top_n documents.
    'top_n': (run['config'].get('atoms') or {}).get('top_n'),
    'docs': _docs_block(ids, documents, text_bytes, assignments),
    'atoms': atoms,
    'kmeans': kmeans,
    'sweeps': sweeps,
  }


def _inline_json(data: dict) -> str:
  """JSON safe inside <script>: no '<', '>', '&' and no 'scheme://' text.

  The escapes are JSON's own (JSON.parse restores them), so document text
  like '</script>' cannot end the block, and a URL in a document cannot read
  as a reference to it.
  """
  text = json.dumps(data, ensure_ascii=False, separators=(',', ':'))
  for ch, esc in (('<', '\\u003c'), ('>', '\\u003e'), ('&', '\\u0026')):
    text = text.replace(ch, esc)
  return text.replace('://', '\\u003a//')


def render(data: dict) -> str:
  """The page: the HTML template with the CSS, JS and data inlined."""
  static = resources.files('gatoms_jax.pipeline') / 'explorer_static'
  html, css, js = (static.joinpath(n).read_text('utf-8') for n in _STATIC)
  title = f'Gradient Atoms explorer: {data["run"]["name"]}'
  for ch, esc in (('&', '&amp;'), ('<', '&lt;'), ('>', '&gt;')):
    title = title.replace(ch, esc)
  # One pass of plain replacements; the JSON goes last so nothing in it is
  # ever read as a placeholder.
  page = html.replace('{{TITLE}}', title).replace('{{CSS}}', css)
  page = page.replace('{{JS}}', js)
  return page.replace('{{DATA}}', _inline_json(data))


def write_explorer(
  run_dir: str,
  documents: Iterable[Any] | Mapping[str, Any] | None = None,
  path: str | None = None,
  *,
  max_bytes: int = 10 * 1024 * 1024,
  text_bytes: int = 4_500_000,
  **kwargs,
) -> str:
  """Writes the explorer page of a run; returns its path.

  If the page comes out over `max_bytes` (text heavy in JSON escapes, or
  far more documents than the budget assumes), the documents' excerpts are
  halved until it fits or they are ~100 bytes; the codes are never cut.

  Args:
    run_dir: results/<run>.
    documents: as in `collect`.
    path: output file (default run_dir/explorer.html).
    max_bytes: size the page should stay under.
    text_bytes: first excerpt budget (see `collect`).
    **kwargs: passed to `collect` (config).
  """
  from absl import logging

  while True:
    data = collect(run_dir, documents, text_bytes=text_bytes, **kwargs)
    page = render(data)
    size = len(page.encode('utf-8'))
    # Below ~100 bytes a document an excerpt says too little to keep cutting.
    if size <= max_bytes or text_bytes < 200 * len(data['docs']['id']):
      break
    logging.warning(
      'explorer page %.1f MB > %.1f MB: halving document excerpts',
      size / 2**20,
      max_bytes / 2**20,
    )
    text_bytes //= 2
  path = path or os.path.join(run_dir, 'explorer.html')
  write_text(path, page)
  return path


def _documents_from_config(run_dir: str):
  """The run's documents, read again from the data section of config.json."""
  import ml_collections

  from gatoms_jax.demo.sources import load_documents

  config = read_json(os.path.join(run_dir, 'config.json'), None)
  if not config or 'data' not in config:
    raise FileNotFoundError(f'{run_dir}/config.json with a data section')
  return load_documents(ml_collections.ConfigDict(config['data']))


def main(argv: list[str] | None = None) -> None:
  """python -m gatoms_jax.pipeline.explorer results/<run> [--out FILE]."""
  import argparse

  parser = argparse.ArgumentParser(description=main.__doc__)
  parser.add_argument('run_dir')
  parser.add_argument('--out', default=None)
  parser.add_argument(
    '--no-text', action='store_true', help='ids and codes only'
  )
  args = parser.parse_args(argv)
  documents = None if args.no_text else _documents_from_config(args.run_dir)
  print(write_explorer(args.run_dir, documents, args.out))


if __name__ == '__main__':
  main()
