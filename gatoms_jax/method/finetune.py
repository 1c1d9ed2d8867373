"""LoRA supervised fine-tuning on chat documents (paper step 1).

Gradient Atoms reads what a fine-tuning set teaches from the per-document
gradients of the FINE-TUNED adapter; this module produces that adapter. The
model is split into a frozen base (never differentiated; an argument of the
jitted step) and the LoRA tree (`gatoms_jax.core.models.lora`), initialised as PEFT
does (A kaiming-uniform, B = 0, so the adapter starts as the identity).

Objective. For an optimiser step over micro-batches b_1..b_k (gradient
accumulation),

  L = Σ_i Σ_{docs, t} mask[t] · CE(logits[t-1], tokens[t]) / N,

N = the number of loss (assistant) tokens in all k micro-batches: the SUMMED
assistant-token CE of docs/CONTRIBUTING_NOTES.md divided by a per-step token
count, so that the learning rate does not depend on the documents' lengths.
(The per-document gradients of the later steps use the plain sum.) With k > 1
`optax.MultiSteps` averages k micro-gradients; each is scaled by k / N, so the
mean is exactly ∇L. In `finetune` itself a micro-batch may be cut into
several calls under `finetune.tokens_per_batch` (bounded memory and shapes,
`gatoms_jax.core.data.batching`), so the step sums the calls' gradients of
Σ CE / N itself (`make_grad_step`) and the optimiser sees ∇L once
(`make_apply_step`), the same update. The LM head runs only on loss
positions (`losses.loss_positions`).

Optimiser: AdamW (decoupled weight decay) after global-norm clipping, linear
warmup then cosine decay to 0 (`learning_rate_schedule`); LoRA parameters are
kept in float32 and cast to the model's dtype inside the step.

Data order is a pure function of (seed, step): micro-batch j = step·k + i is
batch j mod n of epoch j // n, and epoch e's batches are
`make_batches(train, shuffle=True, seed=hash(seed, e))` (length buckets,
shuffled ties and batch order). A resumed run therefore replays exactly the
batches an uninterrupted one sees. Checkpoints (Orbax V1, via
`gatoms_jax.core.checkpoint`) hold the LoRA tree, the optimiser state, the step, the
data position (epoch, micro-batch) and an RNG key, plus the history and a
fingerprint of the configuration as JSON metadata; a run started again in the
same workdir resumes from the latest one and ends with the same parameters.

Outputs under `workdir`: `checkpoints/<step>`, `adapter/` (PEFT:
adapter_config.json + adapter_model.safetensors), `lora/` (the LoRA tree as an
Orbax checkpoint) and `result.json`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import nnx
from tqdm import tqdm

from gatoms_jax.core import io as io_lib
from gatoms_jax.core.loading import (
  load_model_and_tokenizer,
  lora_config_from,
  prepare_data,
)
from gatoms_jax.demo import sources

from gatoms_jax.core import checkpoint as ckpt_lib
from gatoms_jax.core import losses
from gatoms_jax.core import sharding
from gatoms_jax.core.models import embedded
from gatoms_jax.core.models import lora as lora_lib
from gatoms_jax.core.models.transformer import LoraConfig, Transformer

Array = jax.Array
PyTree = Any

# PEFT records the base model's name; the embedded GGUF is this model.
EMBEDDED_MODEL_NAME = 'HuggingFaceTB/SmolLM2-135M-Instruct'

# finetune keys that change the trajectory (a checkpoint written with other
# values cannot be resumed); eval/checkpoint cadence may change freely.
_TRAJECTORY_KEYS = (
  'steps',
  'batch_size',
  'grad_accum',
  'learning_rate',
  'warmup_steps',
  'weight_decay',
  'clip_norm',
  'bucket_multiple',
  'loss_multiple',
)


@dataclasses.dataclass
class FinetuneResult:
  """What `finetune` returns.

  Attributes:
    lora: the fine-tuned LoRA tree (float32, `lora.split`'s structure).
    history: one dict per step: 'step', and for training steps
      'train_loss' (mean CE per loss token of the step), 'lr', 'tokens'
      (unpadded), 'loss_tokens', 'grad_norm' (of the step's whole gradient,
      before clipping), plus 'heldout_loss' where the held-out
      set was evaluated (step 0: before training).
    heldout_loss_before: held-out mean CE per loss token of the base model.
    heldout_loss_after: the same after fine-tuning.
    tokens_per_s: real (unpadded) training tokens per second in this run,
      compilation included; NaN if no step ran.
    tokens_per_s_steady: the same over steps whose shapes were compiled.
    steps: optimiser steps of the finished run.
    resumed_from_step: the checkpoint step this run resumed from, or None.
    n_train_docs, n_heldout_docs: sizes of the split.
    heldout_ids: doc ids of the held-out documents.
    train_seconds: wall time of this run's training steps.
    workdir, adapter_dir, lora_dir: output locations.
    mdef, base, tokenizer: the split model and tokenizer (for evaluation).
    data_stats: tokenisation counts (`TokenizeStats.as_dict()`): documents
      read, truncated and excluded, per label.
  """

  lora: PyTree
  history: list[dict]
  heldout_loss_before: float
  heldout_loss_after: float
  tokens_per_s: float
  tokens_per_s_steady: float
  steps: int
  resumed_from_step: Optional[int]
  n_train_docs: int
  n_heldout_docs: int
  heldout_ids: list[str]
  train_seconds: float
  workdir: str
  adapter_dir: str
  lora_dir: str
  mdef: Any = dataclasses.field(repr=False, default=None)
  base: Any = dataclasses.field(repr=False, default=None)
  tokenizer: Any = dataclasses.field(repr=False, default=None)
  data_stats: dict = dataclasses.field(default_factory=dict)
  n_shapes: int = 0

  def summary(self) -> dict:
    """JSON-serialisable figures (what result.json holds; NaN → None)."""
    drop = 1.0 - self.heldout_loss_after / self.heldout_loss_before
    out = {
      'steps': self.steps,
      'resumed_from_step': self.resumed_from_step,
      'heldout_loss_before': self.heldout_loss_before,
      'heldout_loss_after': self.heldout_loss_after,
      'heldout_loss_relative_drop': drop,
      'tokens_per_s': self.tokens_per_s,
      'tokens_per_s_steady': self.tokens_per_s_steady,
      'train_seconds': self.train_seconds,
      'n_train_docs': self.n_train_docs,
      'n_heldout_docs': self.n_heldout_docs,
      'adapter_dir': self.adapter_dir,
      'lora_dir': self.lora_dir,
      'data': self.data_stats,
      'n_shapes': self.n_shapes,
    }
    return {
      k: None if isinstance(v, float) and math.isnan(v) else v
      for k, v in out.items()
    }


# ---------------------------------------------------------------------------
# Model, tokenizer, data.


def _bucket_multiple(config: Any) -> int:
  return int(config.finetune.bucket_multiple or config.data.bucket_multiple)


def epoch_seed(seed: int, epoch: int) -> int:
  """The shuffle seed of one epoch: a hash of (seed, epoch)."""
  return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


class DataSchedule:
  """Micro-batches as a pure function of (seed, step).

  Args:
    train: the training `TokenizedDoc`s.
    batch_size: documents per micro-batch.
    grad_accum: micro-batches per optimiser step (k).
    bucket_multiple: padded lengths are multiples of this.
    loss_multiple: width of the gathered loss positions is a multiple of this
      (fewer distinct shapes, hence fewer compilations).
    seed: the shuffling seed.
    row_multiple: rows are padded (zero weight) to a multiple of this, the
      number of devices the batch is sharded over.
    tokens_per_batch: budget of padded rows × length of one jitted call; a
      micro-batch whose documents need more is cut into several calls
      (`batching.split_group`), so memory is bounded whatever the lengths.
      0: one call per micro-batch.
    max_length: the truncation length (caps the padded lengths).

  Padded lengths follow the `batching` ladder (rounded up to
  `bucket_multiple`) and the loss width `batching.loss_width`, so the calls
  have a small, bounded set of shapes.
  """

  def __init__(
    self,
    train: Sequence[Any],
    *,
    batch_size: int,
    grad_accum: int,
    bucket_multiple: int,
    loss_multiple: int,
    seed: int,
    row_multiple: int = 1,
    tokens_per_batch: int = 0,
    max_length: Optional[int] = None,
  ):
    from gatoms_jax.core.data import tokenize as tokenize_lib

    if not train:
      raise ValueError('No training documents')
    if batch_size < 1 or grad_accum < 1:
      raise ValueError('batch_size and grad_accum must be >= 1')
    self.train = list(train)
    self.batch_size = batch_size
    self.grad_accum = grad_accum
    self.bucket_multiple = bucket_multiple
    self.loss_multiple = loss_multiple
    self.seed = seed
    self.row_multiple = row_multiple
    self.tokens_per_batch = tokens_per_batch
    self.max_length = max_length
    self.batches_per_epoch = tokenize_lib.num_batches(
      len(self.train), batch_size
    )
    self._cache: dict[int, list[Any]] = {}

  def position(self, step: int) -> tuple[int, int]:
    """(epoch, micro-batch within the epoch) where step `step` starts."""
    return divmod(step * self.grad_accum, self.batches_per_epoch)

  def _epoch(self, epoch: int) -> list[Any]:
    from gatoms_jax.core.data import tokenize as tokenize_lib

    if epoch not in self._cache:
      if len(self._cache) > 1:  # a step spans at most two epochs
        self._cache.pop(min(self._cache))
      self._cache[epoch] = list(
        tokenize_lib.make_batches(
          self.train,
          self.batch_size,
          self.bucket_multiple,
          shuffle=True,
          seed=epoch_seed(self.seed, epoch),
        )
      )
    return self._cache[epoch]

  def micro_batches(self, step: int) -> list[dict]:
    """The host calls of optimiser step `step` (0-based): its k
    micro-batches, each cut into calls under the token budget.

    Each is a dict of numpy arrays: tokens int32[B, T], index int32[B, m]
    and weight float32[B, m] (`losses.loss_positions`), plus 'n_real_tokens'
    (unpadded tokens, an int).
    """
    out = []
    for i in range(self.grad_accum):
      epoch, pos = divmod(step * self.grad_accum + i, self.batches_per_epoch)
      group = [int(j) for j in self._epoch(epoch)[pos].doc_index if j >= 0]
      for batch in group_calls(
        self.train,
        group,
        tokens_per_batch=self.tokens_per_batch,
        batch_size=self.batch_size,
        bucket_multiple=self.bucket_multiple,
        max_length=self.max_length,
        row_multiple=self.row_multiple,
      ):
        index, weight = bucketed_loss_positions(
          batch.loss_mask, self.loss_multiple
        )
        real = sum(self.train[j].length for j in batch.doc_index if j >= 0)
        out.append(
          {
            'tokens': batch.tokens,
            'index': index,
            'weight': weight,
            'n_real_tokens': int(real),
          }
        )
    return out


def group_calls(
  docs: Sequence[Any],
  group: Sequence[int],
  *,
  tokens_per_batch: int,
  batch_size: int,
  bucket_multiple: int,
  max_length: Optional[int],
  row_multiple: int = 1,
) -> list[Any]:
  """A group of documents as padded calls of bounded shapes
  (`batching.split_group`): lengths on the `batching` ladder, rows a power of
  two ≤ batch_size rounded up to a power of two, rows × length ≤
  tokens_per_batch (0: no budget, one call per group)."""
  from gatoms_jax.core.data import batching

  max_rows = 1 << max(0, int(batch_size) - 1).bit_length()
  budget = int(tokens_per_batch) or 1 << 62
  return batching.split_group(
    docs,
    group,
    budget,
    max_rows=max_rows,
    min_length=bucket_multiple,
    multiple=bucket_multiple,
    max_length=max_length,
    row_multiple=row_multiple,
  )


def bucketed_loss_positions(loss_mask: np.ndarray, loss_multiple: int):
  """`losses.loss_positions` with the width on the `batching` ladder."""
  from gatoms_jax.core.data import batching

  counts = (np.asarray(loss_mask)[:, 1:] > 0).sum(axis=1)
  width = batching.loss_width(
    int(counts.max(initial=0)), loss_mask.shape[1], loss_multiple
  )
  return losses.loss_positions(loss_mask, width=width)


# ---------------------------------------------------------------------------
# Optimiser and jitted steps.


def learning_rate_schedule(ft: Any) -> optax.Schedule:
  """Linear warmup then cosine decay, in optimiser steps t = 0..steps-1.

  lr(t) = lr·(t+1)/W for t < W (so the first step already moves), then
  lr·(1 + cos(π·(t-W)/(steps-W)))/2, which reaches 0 just after the last step.
  """
  lr, warmup, steps = (
    float(ft.learning_rate),
    max(int(ft.warmup_steps), 0),
    max(int(ft.steps), 1),
  )
  warmup = min(warmup, steps)
  decay = max(steps - warmup, 1)

  def schedule(count):
    t = jnp.asarray(count, jnp.float32)
    ramp = lr * (t + 1.0) / max(warmup, 1)
    frac = jnp.clip((t - warmup) / decay, 0.0, 1.0)
    cosine = 0.5 * lr * (1.0 + jnp.cos(jnp.pi * frac))
    return jnp.where(t < warmup, ramp, cosine)

  return schedule


def make_optimizer(
  ft: Any, accumulate: bool = True
) -> optax.GradientTransformation:
  """Clip → AdamW with the schedule, wrapped in MultiSteps when k > 1.

  Args:
    ft: the `finetune` config section.
  """
  parts = []
  if float(ft.clip_norm) > 0:
    parts.append(optax.clip_by_global_norm(float(ft.clip_norm)))
  parts.append(
    optax.adamw(learning_rate_schedule(ft), weight_decay=float(ft.weight_decay))
  )
  opt = optax.chain(*parts)
  if accumulate and int(ft.grad_accum) > 1:
    opt = optax.MultiSteps(opt, every_k_schedule=int(ft.grad_accum))
  return opt


def _scaled_loss(mdef: lora_lib.ModelDef, base: Any, batch: dict) -> Callable:
  """params → (scale · Σ CE, Σ CE) of one call, the LoRA cast to the base's
  dtype (fp32 masters, compute at the model's dtype)."""
  dtype = jax.tree.leaves(base)[0].dtype

  def loss_fn(params):
    cast = jax.tree.map(lambda x: x.astype(dtype), params)
    total = losses.batch_loss(
      cast, mdef, base, batch['tokens'], batch['index'], batch['weight']
    )
    return total * batch['scale'], total

  return loss_fn


def make_train_step(
  mdef: lora_lib.ModelDef, optimizer: optax.GradientTransformation
) -> Callable:
  """The jitted step (lora, opt_state, base, batch) → (lora, opt_state, aux).

  `batch` holds tokens, index, weight (see `DataSchedule.micro_batches`) and
  'scale' (a float32 scalar: k / N); the loss differentiated is
  scale · Σ CE over the micro-batch. `base` is an argument, never
  differentiated. aux: {'loss_sum': Σ CE (unscaled), 'grad_norm': norm of the
  scaled micro-batch gradient}.
  """

  def step(lora, opt_state, base, batch):
    (_, total), g = jax.value_and_grad(
      _scaled_loss(mdef, base, batch), has_aux=True
    )(lora)
    updates, opt_state = optimizer.update(g, opt_state, lora)
    lora = optax.apply_updates(lora, updates)
    return lora, opt_state, {'loss_sum': total, 'grad_norm': optax.tree.norm(g)}

  return jax.jit(step)


def make_grad_step(mdef: lora_lib.ModelDef) -> Callable:
  """Jitted (lora, acc, base, batch) → (acc + ∇, Σ CE): one call's
  gradient of scale · Σ CE added to the accumulator `acc` (donated)."""

  def step(lora, acc, base, batch):
    (_, total), g = jax.value_and_grad(
      _scaled_loss(mdef, base, batch), has_aux=True
    )(lora)
    return jax.tree.map(jnp.add, acc, g), total

  return jax.jit(step, donate_argnums=1)


def make_apply_step(optimizer: optax.GradientTransformation) -> Callable:
  """Jitted (lora, opt_state, grads) → (lora, opt_state, ‖grads‖)."""

  def apply(lora, opt_state, grads):
    updates, opt_state = optimizer.update(grads, opt_state, lora)
    return optax.apply_updates(lora, updates), opt_state, optax.tree.norm(grads)

  return jax.jit(apply)


def make_eval_fn(mdef: lora_lib.ModelDef) -> Callable:
  """Jitted Σ CE over the loss positions of a batch: (lora, base, t, i, w)."""

  def fn(lora, base, tokens, index, weight):
    dtype = jax.tree.leaves(base)[0].dtype
    cast = jax.tree.map(lambda x: x.astype(dtype), lora)
    return losses.batch_loss(cast, mdef, base, tokens, index, weight)

  return jax.jit(fn)


def heldout_batches(
  heldout: Sequence[Any],
  *,
  batch_size: int,
  bucket_multiple: int,
  loss_multiple: int,
  max_docs: int,
  mesh: jax.sharding.Mesh,
  tokens_per_batch: int = 0,
  max_length: Optional[int] = None,
) -> list[tuple[Array, Array, Array]]:
  """Device batches (tokens, index, weight) of the first `max_docs` docs,
  under the token budget (see `DataSchedule`)."""
  docs = list(heldout[:max_docs] if max_docs > 0 else heldout)
  n_dev = sharding.axis_size(mesh, sharding.DATA_AXIS)
  out = []
  for batch in group_calls(
    docs,
    list(range(len(docs))),
    tokens_per_batch=tokens_per_batch,
    batch_size=batch_size,
    bucket_multiple=bucket_multiple,
    max_length=max_length,
    row_multiple=n_dev,
  ):
    index, weight = bucketed_loss_positions(batch.loss_mask, loss_multiple)
    out.append(
      tuple(
        sharding.shard_rows(x, mesh)[0] for x in (batch.tokens, index, weight)
      )
    )
  return out


def mean_heldout_loss(
  eval_fn: Callable, lora: PyTree, base: PyTree, batches: Sequence[tuple]
) -> float:
  """Σ CE / Σ loss tokens over the batches (NaN without batches)."""
  total, count = 0.0, 0.0
  for tokens, index, weight in batches:
    total += float(eval_fn(lora, base, tokens, index, weight))
    count += float(jnp.sum(weight))
  return total / count if count else float('nan')


# ---------------------------------------------------------------------------
# The training loop.


def _fingerprint(config: Any, train: Sequence[Any]) -> dict:
  """What a checkpoint must agree on to be resumed (JSON)."""
  h = hashlib.sha256()
  for doc in train:
    h.update(doc.doc_id.encode())
    h.update(np.asarray(doc.tokens, np.int32).tobytes())
    h.update(np.asarray(doc.loss_mask, np.float32).tobytes())
  fp = {
    'seed': int(config.seed),
    'model': {'path': config.model.path, 'dtype': config.model.dtype},
    'lora': {
      'rank': int(config.lora.rank),
      'alpha': float(config.lora.alpha),
      'targets': list(config.lora.targets),
      'init_seed': int(config.lora.init_seed),
    },
    'finetune': {k: config.finetune[k] for k in _TRAJECTORY_KEYS},
    'train_docs': {'n': len(train), 'sha256': h.hexdigest()},
  }
  return json.loads(json.dumps(fp))


def _diff(a: Any, b: Any, prefix: str = '') -> list[str]:
  if isinstance(a, dict) and isinstance(b, dict):
    out = []
    for k in sorted(set(a) | set(b)):
      out += _diff(a.get(k), b.get(k), f'{prefix}{k}.')
    return out
  return [] if a == b else [prefix.rstrip('.')]


def _base_model_name(path: str) -> str:
  if path in ('', 'embedded'):
    return EMBEDDED_MODEL_NAME
  return embedded.hf_model_name(path) or path


def _eval_shapes(batches: Sequence[tuple]) -> set:
  return {(t.shape, i.shape) for t, i, _ in batches}


def _json_default(x):
  if isinstance(x, (np.floating, np.integer)):
    return x.item()
  raise TypeError(f'not JSON serialisable: {type(x).__name__}')


def finetune(
  config: Any,
  workdir: str,
  *,
  model: Optional[Transformer] = None,
  tokenizer: Any = None,
  documents: Optional[Sequence[Any]] = None,
  progress: bool = True,
  on_step: Optional[Callable[[int, dict], None]] = None,
) -> FinetuneResult:
  """Fine-tunes the config's LoRA adapter; resumes from `workdir` if possible.

  Args:
    config: the full ConfigDict (reads model, lora, data, finetune, seed).
    workdir: output directory: `checkpoints/`, `adapter/` (PEFT), `lora/`
      (Orbax LoRA tree) and `result.json` are written there.
    model: a model to train instead of loading `config.model.path`.
    tokenizer: a tokenizer instead of loading it from the config.
    documents: documents instead of `load_documents(config.data)`.
    progress: show a tqdm bar (loss, tokens/s).
    on_step: called as on_step(step, history_entry) after every optimiser
      step (e.g. for monitoring; tests use it to slow a run down).

  Returns:
    A `FinetuneResult`.

  Raises:
    ValueError: bad settings, or a checkpoint in `workdir` that another
      configuration wrote (the message names the differing keys).
  """
  ft = config.finetune
  steps, k = int(ft.steps), int(ft.grad_accum)
  if steps < 0:
    raise ValueError(f'finetune.steps must be >= 0, got {steps}')
  every_ckpt, every_eval = int(ft.checkpoint_every), int(ft.eval_every)
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)

  model, tokenizer = load_model_and_tokenizer(
    config, model=model, tokenizer=tokenizer
  )
  mdef, base, lora0 = lora_lib.split(model)
  del model
  if documents is None:
    documents = sources.load_documents(config.data)
  train, heldout, data_stats = prepare_data(
    config, tokenizer, documents, with_stats=True
  )
  vocab = mdef.config.vocab_size
  for doc in list(train) + list(heldout):
    if int(doc.tokens.max(initial=0)) >= vocab:
      raise ValueError(
        f'document {doc.doc_id} has token id {int(doc.tokens.max())} >= the '
        f"model's vocab_size {vocab}: tokenizer and model do not match"
      )
  mesh = sharding.make_mesh()
  n_dev = sharding.axis_size(mesh, sharding.DATA_AXIS)
  rep = sharding.replicated(mesh)
  base = jax.device_put(base, rep)
  bucket, loss_mult = _bucket_multiple(config), int(ft.loss_multiple)
  schedule = DataSchedule(
    train,
    batch_size=int(ft.batch_size),
    grad_accum=k,
    bucket_multiple=bucket,
    loss_multiple=loss_mult,
    seed=int(config.seed),
    row_multiple=n_dev,
    tokens_per_batch=int(ft.tokens_per_batch),
    max_length=int(config.data.max_length),
  )
  eval_batches = heldout_batches(
    heldout,
    batch_size=int(ft.batch_size),
    bucket_multiple=bucket,
    loss_multiple=loss_mult,
    max_docs=int(ft.max_eval_docs),
    mesh=mesh,
    tokens_per_batch=int(ft.tokens_per_batch),
    max_length=int(config.data.max_length),
  )
  logging.info(
    'finetune: %d train / %d heldout docs (%d evaluated), %d batches per '
    'epoch, %d steps x %d micro-batches of %d, %d devices, %d LoRA params',
    len(train),
    len(heldout),
    min(len(heldout), int(ft.max_eval_docs) or len(heldout)),
    schedule.batches_per_epoch,
    steps,
    k,
    int(ft.batch_size),
    n_dev,
    lora_lib.num_params(lora0),
  )

  # Gradients are accumulated over a step's calls here (their number varies
  # with the documents' lengths), so the optimiser itself does not.
  optimizer = make_optimizer(ft, accumulate=False)
  lora = lora_lib.init_lora(lora0, int(config.lora.init_seed))
  lora = jax.device_put(
    jax.tree.map(lambda x: x.astype(jnp.float32), lora), rep
  )
  opt_state = jax.device_put(optimizer.init(lora), rep)
  rng = jax.device_put(
    jax.random.key_data(jax.random.key(int(config.seed))), rep
  )
  state = {
    'lora': lora,
    'opt_state': opt_state,
    'step': 0,
    'epoch': 0,
    'position': 0,
    'rng': rng,
  }
  fingerprint = _fingerprint(config, train)
  history: list[dict] = []
  resumed_from = None
  ckpt = ckpt_lib.TrainCheckpointer(
    os.path.join(workdir, 'checkpoints'), keep=int(ft.keep_checkpoints)
  )
  try:
    if ckpt.latest_step is not None:
      latest = ckpt.latest_step
      state, meta = ckpt.restore(ckpt_lib.abstract_like(state))
      diff = _diff(meta.get('fingerprint', {}), fingerprint)
      if diff:
        raise ValueError(
          f'{ckpt.directory}/{latest} was written by a different '
          f'configuration (differs in {", ".join(diff)}); use another workdir '
          'or delete its checkpoints'
        )
      if (state['epoch'], state['position']) != schedule.position(
        state['step']
      ):
        raise ValueError(
          f'{ckpt.directory}/{latest}: data position '
          f'{(state["epoch"], state["position"])} does not match step '
          f'{state["step"]}'
        )
      history = list(meta.get('history', []))
      resumed_from = int(state['step'])
      logging.info(
        'Resumed from checkpoint step %d (%s)', latest, ckpt.directory
      )
    grad_step = make_grad_step(mdef)
    apply_step = make_apply_step(optimizer)
    eval_fn = make_eval_fn(mdef)
    lora, opt_state, rng = state['lora'], state['opt_state'], state['rng']
    start = int(state['step'])
    if start == 0 and not any(h['step'] == 0 for h in history):
      before = mean_heldout_loss(eval_fn, lora, base, eval_batches)
      history.append({'step': 0, 'heldout_loss': before})
      logging.info('step 0: heldout loss %.4f (base model)', before)
    lr_fn = learning_rate_schedule(ft)
    row = sharding.row_sharding(mesh, 2)
    seen_shapes: set = set()
    n_tokens = 0
    steady_tokens, steady_seconds, train_seconds = 0, 0.0, 0.0
    bar = tqdm(
      total=steps,
      initial=start,
      desc='finetune',
      unit='step',
      disable=not progress,
    )
    for step in range(start, steps):
      t0 = time.perf_counter()
      micro = schedule.micro_batches(step)
      n_loss = sum(float(m['weight'].sum()) for m in micro)
      # Σ over the step's calls of ∇(Σ CE) / N = ∇ of the step's loss.
      scale = np.float32(1.0 / max(n_loss, 1.0))
      compiled = False
      acc = jax.tree.map(jnp.zeros_like, lora)
      sums = []
      for m in micro:
        shape = (m['tokens'].shape, m['index'].shape)
        compiled |= shape not in seen_shapes
        seen_shapes.add(shape)
        batch = {
          'tokens': jax.device_put(m['tokens'], row),
          'index': jax.device_put(m['index'], row),
          'weight': jax.device_put(m['weight'], row),
          'scale': jax.device_put(scale, rep),
        }
        acc, total = grad_step(lora, acc, base, batch)
        sums.append(total)
      lora, opt_state, norm = apply_step(lora, opt_state, acc)
      loss_sum = float(sum(float(x) for x in sums))
      grad_norm = float(norm)
      dt = time.perf_counter() - t0
      tokens = sum(m['n_real_tokens'] for m in micro)
      n_tokens += tokens
      train_seconds += dt
      if not compiled:
        steady_tokens += tokens
        steady_seconds += dt
      entry = {
        'step': step + 1,
        'train_loss': loss_sum / max(n_loss, 1.0),
        'lr': float(lr_fn(step)),
        'tokens': tokens,
        'loss_tokens': int(n_loss),
        'grad_norm': grad_norm,
      }
      done = step + 1
      if done == steps or (every_eval > 0 and done % every_eval == 0):
        entry['heldout_loss'] = mean_heldout_loss(
          eval_fn, lora, base, eval_batches
        )
        logging.info(
          'step %d: train loss %.4f, heldout loss %.4f, %.0f tokens/s',
          done,
          entry['train_loss'],
          entry['heldout_loss'],
          n_tokens / train_seconds,
        )
      history.append(entry)
      bar.update(1)
      bar.set_postfix(
        loss=f'{entry["train_loss"]:.3f}', tok_s=f'{tokens / dt:.0f}'
      )
      if done == steps or (every_ckpt > 0 and done % every_ckpt == 0):
        epoch, position = schedule.position(done)
        state = {
          'lora': lora,
          'opt_state': opt_state,
          'step': done,
          'epoch': epoch,
          'position': position,
          'rng': rng,
        }
        ckpt.save(
          done,
          state,
          custom_metadata={'history': history, 'fingerprint': fingerprint},
        )
        logging.info('checkpoint step %d saved', done)
      if on_step is not None:
        on_step(done, entry)
    bar.close()
  finally:
    ckpt.close()

  def heldout_at(step: int) -> float:
    for h in reversed(history):
      if h['step'] == step and 'heldout_loss' in h:
        return float(h['heldout_loss'])
    return mean_heldout_loss(eval_fn, lora, base, eval_batches)

  before = heldout_at(0)
  after = heldout_at(steps) if steps else before
  nan = float('nan')
  result = FinetuneResult(
    lora=jax.device_get(lora),
    history=history,
    heldout_loss_before=before,
    heldout_loss_after=after,
    tokens_per_s=n_tokens / train_seconds if train_seconds else nan,
    tokens_per_s_steady=(
      steady_tokens / steady_seconds if steady_seconds else nan
    ),
    steps=steps,
    resumed_from_step=resumed_from,
    n_train_docs=len(train),
    n_heldout_docs=len(heldout),
    heldout_ids=[d.doc_id for d in heldout],
    train_seconds=train_seconds,
    workdir=workdir,
    adapter_dir=os.path.join(workdir, 'adapter'),
    lora_dir=os.path.join(workdir, 'lora'),
    mdef=mdef,
    base=base,
    tokenizer=tokenizer,
    data_stats=data_stats.as_dict(),
    n_shapes=len(seen_shapes | _eval_shapes(eval_batches)),
  )
  export(result, lora_config_from(config), _base_model_name(config.model.path))
  logging.info(
    'finetune done: heldout loss %.4f -> %.4f (%.1f%% lower), %.0f tokens/s '
    '(%.0f steady)',
    before,
    after,
    100 * (1 - after / before),
    result.tokens_per_s,
    result.tokens_per_s_steady,
  )
  return result


def export(
  result: FinetuneResult, lora_config: LoraConfig, base_model_name: str
) -> None:
  """Writes the adapter (PEFT), the LoRA tree (Orbax) and result.json."""
  from gatoms_jax.core.models import peft as peft_lib

  peft_lib.save_peft_adapter(
    result.adapter_dir, result.lora, lora_config, base_model_name
  )
  ckpt_lib.save_pytree(
    result.lora_dir,
    result.lora,
    custom_metadata={
      'rank': lora_config.rank,
      'alpha': lora_config.alpha,
      'targets': list(lora_config.targets),
      'base_model': base_model_name,
    },
  )
  summary = dict(result.summary(), history=result.history)
  io_lib.write_text(
    os.path.join(result.workdir, 'result.json'),
    json.dumps(summary, indent=2, default=_json_default) + '\n',
  )


def load_lora(lora_dir: str, mdef: lora_lib.ModelDef) -> PyTree:
  """Reads the `lora/` tree `finetune` exported, for the model `mdef`.

  Args:
    lora_dir: the directory (`FinetuneResult.lora_dir`).
    mdef: the split model the adapter belongs to (gives the structure).

  Returns:
    The float32 LoRA tree.
  """
  abstract = nnx.eval_shape(
    lambda: Transformer(
      mdef.config, lora=mdef.lora_config, dtype=jnp.float32, rngs=nnx.Rngs(0)
    )
  )
  template = lora_lib.split(abstract)[2]
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract_tree = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, jnp.float32, sharding=device),
    template,
  )
  return ckpt_lib.load_pytree(lora_dir, abstract_tree)
