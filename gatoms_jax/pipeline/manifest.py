"""Stage bookkeeping: which config keys each stage reads, and its manifest.

A stage's key is a hash of the config values it reads, the content
fingerprints of the input files it reads (data, model and tokenizer files,
prompts; pipeline/fingerprints.py) and the keys of the stages it consumes, so a
`--config.x=y` override or an edited input file invalidates exactly the stages
that read it and everything downstream of them. Knobs that change speed or
memory but not results (batch and chunk sizes) are left out of the hash.
A stage is complete when `<stage>/manifest.json` exists with its current key;
the manifest is written last (atomically), so a killed stage is redone.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any, Optional

from gatoms_jax.core.io import write_json
from gatoms_jax.pipeline import fingerprints as fingerprints_lib

STAGES = (
  'finetune',
  'gradients',
  'curvature',
  'projection',
  'dictionary',
  'atoms',
  'steering',
  'report',
)

# Config keys (section or section.key) each stage reads.
STAGE_KEYS = {
  'finetune': ('seed', 'model', 'lora', 'data', 'finetune'),
  'curvature': ('curvature',),
  'gradients': ('gradients',),
  'projection': ('projection',),
  'dictionary': ('dictionary',),
  'atoms': ('atoms', 'data.label_field'),
  'steering': ('steering',),
  'report': ('atoms.report_top', 'atoms.purity_threshold'),
}
# Input files (kinds of `fingerprints.input_fingerprints`) each stage reads.
STAGE_FILES = {
  'finetune': ('data', 'model', 'tokenizer'),
  'gradients': ('data', 'model', 'tokenizer'),
  'curvature': ('data', 'model', 'tokenizer'),
  'projection': (),
  'dictionary': (),
  'atoms': ('data',),
  'steering': ('model', 'tokenizer', 'prompts'),
  'report': ('data',),
}
# Stages whose outputs a stage consumes.
STAGE_INPUTS = {
  'finetune': (),
  'gradients': ('finetune',),
  'curvature': ('finetune', 'gradients'),
  'projection': ('curvature', 'gradients'),
  'dictionary': ('projection',),
  'atoms': ('dictionary', 'gradients'),
  'steering': ('atoms',),
  'report': ('atoms', 'steering'),
}
# Keys left out when a whole section is hashed: knobs that change speed or
# memory, never results, and the evaluation-only label field (which only
# the atoms stage reads, by its own dotted key).
EXCLUDED_FROM_SECTIONS = frozenset(
  {
    'data.label_field',
    'finetune.checkpoint_every',
    'finetune.eval_every',
    'gradients.batch_size',
    'gradients.tokens_per_slab',
    'gradients.scan_layers',
    'gradients.ladder_steps',
    'finetune.tokens_per_batch',
    'curvature.tokens_per_batch',
    'steering.tokens_per_batch',
    'gradients.chunk_size',
    'curvature.batch_size',
    'steering.batch_size',
    'steering.max_rows',
    'steering.min_prompt_bucket',
  }
)


def _plain(value: Any) -> Any:
  if hasattr(value, 'to_dict'):
    value = value.to_dict()
  if isinstance(value, dict):
    return {k: _plain(v) for k, v in sorted(value.items())}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  return value


def _lookup(config: Any, dotted: str) -> Any:
  node = config
  for part in dotted.split('.'):
    node = node[part]
  return node


def stage_values(config: Any, stage: str) -> dict:
  """The config values a stage's results depend on."""
  out = {}
  for key in STAGE_KEYS[stage]:
    value = _plain(_lookup(config, key))
    if isinstance(value, dict):
      value = {
        k: v
        for k, v in value.items()
        if f'{key}.{k}' not in EXCLUDED_FROM_SECTIONS
      }
    out[key] = value
  return out


def _hash(payload: Any) -> str:
  blob = json.dumps(payload, sort_keys=True, default=str).encode()
  return hashlib.sha256(blob).hexdigest()[:16]


def stage_files(fingerprints: dict, stage: str) -> dict:
  """The fingerprints of the input files `stage` reads."""
  return {kind: fingerprints[kind] for kind in STAGE_FILES[stage]}


def stage_keys(
  config: Any, fingerprints: Optional[dict] = None
) -> dict[str, str]:
  """The hash key of every stage (upstream keys chained in).

  Args:
    config: the resolved config.
    fingerprints: `fingerprints.input_fingerprints(config)`, if already
      computed.
  """
  if fingerprints is None:
    fingerprints = fingerprints_lib.input_fingerprints(config)
  keys: dict[str, str] = {}
  for stage in STAGES:
    keys[stage] = _hash(
      {
        'values': stage_values(config, stage),
        'files': stage_files(fingerprints, stage),
        'inputs': {s: keys[s] for s in STAGE_INPUTS[stage]},
      }
    )
  return keys


def stage_file_keys(fingerprints: dict) -> dict[str, str]:
  """Per stage, a hash of the input files it and its upstream stages read.

  A stage directory started under another file key holds work (checkpoints,
  stored rows, sweeps) computed from other inputs, and is cleared before the
  stage reruns; a config change alone keeps it (stages resume or check it).
  """
  keys: dict[str, str] = {}
  for stage in STAGES:
    keys[stage] = _hash(
      {
        'files': stage_files(fingerprints, stage),
        'inputs': {s: keys[s] for s in STAGE_INPUTS[stage]},
      }
    )
  return keys


def started_path(stage_dir: str) -> str:
  return os.path.join(stage_dir, 'started.json')


def manifest_path(stage_dir: str) -> str:
  return os.path.join(stage_dir, 'manifest.json')


def read_manifest(stage_dir: str) -> Optional[dict]:
  try:
    with open(manifest_path(stage_dir)) as f:
      return json.load(f)
  except (FileNotFoundError, json.JSONDecodeError):
    return None


def is_complete(stage_dir: str, key: str) -> bool:
  manifest = read_manifest(stage_dir)
  return bool(
    manifest and manifest.get('complete') and manifest.get('key') == key
  )


def write_manifest(
  stage_dir: str,
  *,
  stage: str,
  key: str,
  config: Any,
  input_keys: dict[str, str],
  seconds: float,
  extra: Optional[dict] = None,
) -> dict:
  """Writes the completion record of a stage (atomically, last)."""
  manifest = {
    'stage': stage,
    'key': key,
    'complete': True,
    'config': stage_values(config, stage),
    'inputs': input_keys,
    'seconds': seconds,
    'finished': time.strftime('%Y-%m-%dT%H:%M:%S'),
  }
  if extra:
    manifest.update(extra)
  os.makedirs(stage_dir, exist_ok=True)
  write_json(manifest_path(stage_dir), manifest)
  return manifest


def invalidate(stage_dir: str) -> None:
  """Marks a stage incomplete before it (re)runs."""
  try:
    os.remove(manifest_path(stage_dir))
  except FileNotFoundError:
    pass
