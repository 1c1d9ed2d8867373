"""Batched autoregressive generation with a KV cache (greedy or top-p sampling).

Used to read steered models (θ ± α·v on the LoRA parameters) and to guard
steering with the KL divergence to the unsteered model. The jitted kernels
live in `gatoms_jax.core.models.decode`; this module drives them from the host:

* prompts are sorted by length and LEFT-padded to a power-of-two bucket P
  (at least `min_bucket`), so one compilation serves many prompts;
* decoding runs in segments of `segment` steps; between segments the rows
  that have stopped are dropped and the rest gathered into the next smaller
  power-of-two batch (at least `min_rows`), so short answers stop costing
  compute while long ones finish — on a CPU the attention over the cache and
  the matmuls both scale with the number of rows;
* `generate_variants` runs several adapters at once: their trees are stacked
  and every row selects its adapter with a one-hot weight
  (`transformer._lora_matmul`), so rows of different adapters share batches;
* `sequence_kl` scores stacked adapters against a reference adapter along
  fixed continuations (teacher forcing): the steering guard.

Compiled code is cached by jax.jit per (mode, rows, P, slots, segment); a
new LoRA tree of the same shapes reuses it.

Memory: the cache holds 2·L·B·S·kv·hd elements (keys and values of L layers,
S = P + N - 1 slots, kv heads of width hd) in the model's dtype; e.g. SmolLM2-
135M (L=30, kv=3, hd=64) at B=32, S=512 in fp32 is 2·30·32·512·3·64·4 B =
755 MB. Logits are computed for one position per row only (B×V floats).
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from absl import logging

from gatoms_jax.core.models import decode
from gatoms_jax.core.models import lora as lora_lib

Array = jax.Array
PyTree = Any

TRACE_COUNTS = decode.TRACE_COUNTS

# Special tokens that end a text or a turn in the model families we load.
# Stopping at any of them is always right for chat use, and covers models whose
# config lists only one of them (SmolLM2 lists <|im_end|>, not <|endoftext|>).
END_TOKENS = (
  '<|endoftext|>',
  '<|im_end|>',
  '<|eot_id|>',
  '<|end_of_text|>',
  '<|eom_id|>',
  '<end_of_turn>',
  '<eos>',
)
# Not '</s>': the eos of Llama 2 / Mistral tokenizers (which declare it as
# such), but in Gemma 3's vocabulary an ordinary user-defined token (id 212,
# like '</u>' and '</sub>') that answers may contain.


def bucket_length(n: int, min_bucket: int = 16) -> int:
  """Smallest power of two ≥ max(n, min_bucket)."""
  return max(min_bucket, 1 << max(0, int(n) - 1).bit_length())


def stack_trees(trees: Sequence[PyTree]) -> PyTree:
  """n trees of the same structure → one tree with leaves (n, ...)."""
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _check_prompts(prompts: Sequence[Sequence[int]], vocab_size: int) -> None:
  for i, prompt in enumerate(prompts):
    if len(prompt) == 0:
      raise ValueError(f'prompt {i} is empty; every prompt needs a token')
    lo, hi = min(prompt), max(prompt)
    if lo < 0 or hi >= vocab_size:
      raise ValueError(
        f'prompt {i} has token id {lo if lo < 0 else hi} outside the '
        f'vocabulary [0, {vocab_size})'
      )


def _left_pad(rows: Sequence[Sequence[int]], width: int):
  tokens = np.zeros((len(rows), width), np.int32)
  valid = np.zeros((len(rows), width), bool)
  for r, ids in enumerate(rows):
    if len(ids):
      tokens[r, width - len(ids) :] = ids
      valid[r, width - len(ids) :] = True
    else:  # padding row: a one-token prompt keeps its attention defined
      valid[r, -1] = True
  return tokens, valid


def _batches(
  prompts: Sequence[Sequence[int]], batch_size: int, min_bucket: int
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
  """Left-padded batches of similar-length prompts.

  Returns:
    (indices, tokens, valid, is_padding_row) per batch; `indices` are the
    prompts' positions in `prompts` (-1 for padding rows). Every batch has
    exactly `batch_size` rows, so all batches of one bucket share a compile.
  """
  order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
  out = []
  for start in range(0, len(order), batch_size):
    idx = order[start : start + batch_size]
    p = bucket_length(max(len(prompts[i]) for i in idx), min_bucket)
    indices = np.full((batch_size,), -1, np.int64)
    indices[: len(idx)] = idx
    rows = [prompts[i] for i in idx] + [[]] * (batch_size - len(idx))
    tokens, valid = _left_pad(rows, p)
    out.append((indices, tokens, valid, indices < 0))
  return out


def _next_pow2(n: int) -> int:
  return 1 << max(0, int(n) - 1).bit_length()


def _strip(row: Sequence[int], eos_ids: Sequence[int]) -> list[int]:
  out = []
  for t in row:
    if t < 0 or t in eos_ids:
      break
    out.append(int(t))
  return out


class Generator:
  """Generation, KL scoring and next-token log-probs for one model.

  Holds the frozen parts (model def, base weights) and the size knobs; the
  LoRA tree is an argument of every call, so steering loops over many LoRA
  trees compile once.

  Args:
    mdef, base: from `gatoms_jax.core.models.lora.split(model)`.
    eos_ids: ids that end a generation (see `eos_token_ids`).
    batch_size: prompts per batch (rows for one adapter); None: all prompts
      of a call, capped at 32 (cache memory grows linearly, see module doc).
    min_bucket: smallest padded prompt length.
    segment: decode steps between row compactions.
    min_rows: smallest batch that compaction shrinks to.
    max_rows: rows per call with several adapters (adapters × prompts).
    progress: show a tqdm bar over calls.
    tokens_per_batch: cap on rows × (prompt bucket + max_new_tokens) of a
      generation call (bounds the KV cache for long prompts); None: no cap.
  """

  def __init__(
    self,
    mdef: lora_lib.ModelDef,
    base: PyTree,
    *,
    eos_ids: Sequence[int] = (),
    batch_size: Optional[int] = None,
    min_bucket: int = 16,
    segment: int = 16,
    min_rows: int = 8,
    max_rows: int = 256,
    progress: bool = True,
    tokens_per_batch: Optional[int] = None,
  ):
    for name, value in (
      ('segment', segment),
      ('min_rows', min_rows),
      ('max_rows', max_rows),
    ):
      if value < 1:
        raise ValueError(f'{name} must be ≥ 1, got {value}')
    self.mdef = mdef
    self.base = base
    self.eos_ids = tuple(sorted({int(i) for i in eos_ids}))
    self.batch_size = batch_size
    self.min_bucket = min_bucket
    self.segment = segment
    self.min_rows = min_rows
    self.max_rows = max_rows
    self.progress = progress
    self.tokens_per_batch = tokens_per_batch
    # (rows, prompt bucket) of every generation call so far.
    self.shapes_seen: set[tuple[int, int]] = set()

  def _rows_cap(self, per_call: int, bucket: int, max_new_tokens: int) -> int:
    """Rows of a call at this prompt bucket under tokens_per_batch (a
    power of two when capped, so one shape per bucket)."""
    if not self.tokens_per_batch:
      return per_call
    fit = max(1, int(self.tokens_per_batch) // (bucket + max_new_tokens))
    return min(per_call, 1 << (fit.bit_length() - 1))

  def _batch_size(self, n: int) -> int:
    if self.batch_size is not None:
      if self.batch_size < 1:
        raise ValueError(f'batch_size must be ≥ 1, got {self.batch_size}')
      return min(self.batch_size, n)
    return min(n, 32)

  def _eos_array(self) -> Array:
    # Padded with -1 (never a token) to a multiple of 8: changing the stop set
    # does not recompile.
    eos = np.full((-(-max(len(self.eos_ids), 1) // 8) * 8,), -1, np.int32)
    eos[: len(self.eos_ids)] = self.eos_ids
    return jnp.asarray(eos)

  def _check(self, prompts, max_new_tokens, temperature, top_p) -> str:
    config = self.mdef.config
    _check_prompts(prompts, config.vocab_size)
    if max_new_tokens < 1:
      raise ValueError(f'max_new_tokens must be ≥ 1, got {max_new_tokens}')
    if temperature < 0:
      raise ValueError(f'temperature must be ≥ 0, got {temperature}')
    if not 0.0 < top_p <= 1.0:
      raise ValueError(f'top_p must be in (0, 1], got {top_p}')
    longest = max(len(p) for p in prompts) + max_new_tokens
    if longest > config.max_position_embeddings:
      raise ValueError(
        f'prompt + max_new_tokens reaches {longest} tokens, more than the '
        f"model's max_position_embeddings={config.max_position_embeddings}"
      )
    return (
      'greedy' if temperature == 0 else ('top_p' if top_p < 1 else 'sample')
    )

  def generate(
    self,
    lora: PyTree,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
  ) -> list[list[int]]:
    """New tokens for each prompt (EOS and anything after it stripped).

    Args:
      lora: the LoRA tree (same structure as `lora.split`'s).
      prompts: token ids per prompt (no padding), any lengths.
      max_new_tokens: N, generated tokens per prompt at most.
      temperature: 0 → greedy; > 0 → sample from softmax(logits / T).
      top_p: nucleus sampling mass (1 → no filtering). Sampling only.
      seed: PRNG seed; prompt i always uses fold_in(key(seed), i), so a
        sample does not depend on batch size or on the other prompts.

    Returns:
      One list of generated ids per prompt, in the order of `prompts`.

    Raises:
      ValueError: bad prompts or settings.
    """
    if not prompts:
      return []
    mode = self._check(prompts, max_new_tokens, temperature, top_p)
    jobs = [(None, i) for i in range(len(prompts))]
    per_call = self._batch_size(len(prompts))
    return self._run(
      lora, None, prompts, jobs, per_call, max_new_tokens, mode,
      (temperature, top_p), seed,
    )  # fmt: skip

  def generate_variants(
    self,
    loras: Sequence[PyTree],
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
  ) -> list[list[list[int]]]:
    """`generate` for several adapters at once (e.g. steering variants).

    Rows (adapter, prompt) of all adapters share batches of up to
    `max_rows`; each row selects its adapter. Results equal `generate` per
    adapter up to fp32 summation order; a sample depends on the prompt index
    and the seed only, as in `generate`.

    Args:
      loras: LoRA trees of one structure and shapes.
      prompts: token ids per prompt.
      max_new_tokens, temperature, top_p, seed: as in `generate`.

    Returns:
      [adapter][prompt] → generated ids.
    """
    if not loras:
      return []
    if not prompts:
      return [[] for _ in loras]
    mode = self._check(prompts, max_new_tokens, temperature, top_p)
    jobs = [(j, i) for j in range(len(loras)) for i in range(len(prompts))]
    flat = self._run(
      stack_trees(loras), len(loras), prompts, jobs, self.max_rows,
      max_new_tokens, mode, (temperature, top_p), seed,
    )  # fmt: skip
    n = len(prompts)
    return [flat[j * n : (j + 1) * n] for j in range(len(loras))]

  def _run(
    self, lora, n_adapters, prompts, jobs, per_call, max_new_tokens, mode,
    sampling, seed,
  ) -> list[list[int]]:  # fmt: skip
    """Generates every job (adapter index or None, prompt index), in order.

    Jobs are sorted by prompt length and cut into calls of ≤ `per_call`
    rows that share one prompt bucket.
    """
    order = sorted(range(len(jobs)), key=lambda r: -len(prompts[jobs[r][1]]))
    calls, start = [], 0
    while start < len(order):
      p = bucket_length(len(prompts[jobs[order[start]][1]]), self.min_bucket)
      stop = start
      cap = self._rows_cap(per_call, p, max_new_tokens)
      while (
        stop < len(order)
        and stop - start < cap
        and bucket_length(len(prompts[jobs[order[stop]][1]]), self.min_bucket)
        == p
      ):
        stop += 1
      calls.append((p, order[start:stop]))
      start = stop
    key = jax.random.key(seed)
    eos = self._eos_array()
    sampling = (
      jnp.float32(max(sampling[0], 1e-30)),
      jnp.float32(sampling[1]),
    )
    results: list[list[int]] = [[] for _ in jobs]
    bar = tqdm.tqdm(
      calls,
      desc='generate',
      unit='call',
      leave=False,
      disable=not self.progress or len(calls) == 1,
    )
    for p, rows in bar:
      # Single adapter: every call has per_call rows (padding rows), so all
      # calls of a bucket share one compilation.
      cap = self._rows_cap(per_call, p, max_new_tokens)
      n_rows = (
        cap
        if n_adapters is None
        else min(_padded_rows(len(rows)), max(cap, len(rows)))
      )
      self.shapes_seen.add((n_rows, p))
      row_ids = np.full((n_rows,), -1, np.int64)
      row_ids[: len(rows)] = rows
      tokens, valid = _left_pad(
        [prompts[jobs[r][1]] for r in rows] + [[]] * (n_rows - len(rows)), p
      )
      prompt_idx = np.array([jobs[r][1] if r >= 0 else 0 for r in row_ids])
      weights = None
      if n_adapters is not None:
        adapter = np.array([jobs[r][0] if r >= 0 else 0 for r in row_ids])
        weights = jnp.asarray(np.eye(n_adapters, dtype=np.float32)[adapter])
      for r, ids in zip(
        row_ids,
        self._decode_call(
          lora, weights, tokens, valid, row_ids < 0, prompt_idx, key, eos,
          sampling, max_new_tokens, mode,
        ),
      ):  # fmt: skip
        if r >= 0:
          results[r] = ids
    return results

  def _decode_call(
    self, lora, weights, tokens, valid, padding, prompt_idx, key, eos,
    sampling, max_new_tokens, mode,
  ) -> list[list[int]]:  # fmt: skip
    """Prefill + decode segments with row compaction for one batch."""
    n_rows, p = tokens.shape
    row_keys = jax.vmap(jax.random.fold_in, (None, 0))(
      key, jnp.asarray(prompt_idx, jnp.uint32)
    )
    state = decode.prefill(
      self.mdef, self.base, lora, weights, jnp.asarray(tokens),
      jnp.asarray(valid), jnp.asarray(padding), row_keys, eos, sampling,
      n_slots=p + max_new_tokens - 1, mode=mode,
    )  # fmt: skip
    outs: list[list[int]] = [[] for _ in range(n_rows)]
    live = np.arange(n_rows)  # batch row → row of this call
    tok = np.asarray(state['tok'])
    done = np.asarray(state['done'])
    for b in range(n_rows):
      if tok[b] >= 0:
        outs[b].append(int(tok[b]))
    step = 1
    while step < max_new_tokens and not done.all():
      state, seg = decode.decode_segment(
        self.mdef, self.base, lora, weights, state, row_keys, eos, sampling,
        jnp.int32(step), jnp.int32(p), jnp.int32(max_new_tokens - 1),
        n_steps=self.segment, mode=mode,
      )  # fmt: skip
      seg = np.asarray(seg)
      for b, row in enumerate(live):
        new = seg[b][seg[b] >= 0]
        if row >= 0 and new.size:
          outs[row].extend(int(t) for t in new)
      step += self.segment
      done = np.asarray(state['done'])
      running = np.nonzero(~done)[0]
      size = max(self.min_rows, _next_pow2(len(running)))
      if 0 < len(running) and size < len(live):
        # Keep the running rows; fill up with a stopped row (stays stopped).
        filler = np.nonzero(done)[0][0]
        keep = np.concatenate(
          [running, np.full(size - len(running), filler)]
        ).astype(np.int32)
        gathered = decode.gather_rows(
          (state, row_keys, weights), jnp.asarray(keep)
        )
        state, row_keys, weights = gathered
        live = live[keep]
        live[len(running) :] = -1
        done = np.asarray(state['done'])
    return [_strip(o, self.eos_ids) for o in outs]

  def sequence_kl(
    self,
    reference: PyTree,
    loras: Sequence[PyTree],
    prompts: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[int]],
    *,
    n_tokens: int,
  ) -> np.ndarray:
    """Per-token KL(reference ‖ adapter) along fixed continuations.

    Every prompt is followed by its continuation (e.g. the reference's own
    greedy answer), cut to `n_tokens`; the next-token distributions of the
    reference and of each adapter are compared at the first
    min(n_tokens, len + 1) positions (position j predicts continuation token
    j; the last one the end of the answer). n_tokens = 1 is the KL of the
    first generated token.

    Args:
      reference: the LoRA tree the KL is measured from.
      loras: adapters to score (same structure).
      prompts: token ids per prompt.
      continuations: token ids per prompt (EOS stripped).
      n_tokens: scored positions per prompt at most (≥ 1).

    Returns:
      fp32 [len(loras), len(prompts)]: mean KL per scored position, nats.
    """
    if n_tokens < 1:
      raise ValueError(f'n_tokens must be ≥ 1, got {n_tokens}')
    if len(continuations) != len(prompts):
      raise ValueError('one continuation per prompt is needed')
    result = np.zeros((len(loras), len(prompts)), np.float32)
    if not loras or not prompts:
      return result
    _check_prompts(prompts, self.mdef.config.vocab_size)
    per_batch = self._batch_size(len(prompts))
    m = int(n_tokens)
    # Adapters per call: ≤ max_rows rows and ≤ 2^27 log-probs (512 MB of
    # fp32) at once, a power of two (few compilations, ≤ 2x padding).
    vocab = self.mdef.config.vocab_size
    fit = min(self.max_rows // per_batch, 2**27 // (per_batch * m * vocab))
    group = 1 << (fit.bit_length() - 1) if fit > 1 else 1
    group = min(group, _next_pow2(len(loras)))
    # Stacked once for all prompt batches; the last group padded with copies.
    stacked = []
    for start in range(0, len(loras), group):
      chunk = list(loras[start : start + group])
      n_real = len(chunk)
      stacked.append(
        (start, n_real, stack_trees(chunk + [chunk[0]] * (group - n_real)))
      )
    for indices, tokens, valid, _ in _batches(
      prompts, per_batch, self.min_bucket
    ):
      p = tokens.shape[1]
      seq = np.zeros((len(indices), p + m - 1), np.int32)
      seq_valid = np.zeros_like(seq, bool)
      seq[:, :p], seq_valid[:, :p] = tokens, valid
      index = np.tile(
        np.arange(p - 1, p - 1 + m, dtype=np.int32), (len(indices), 1)
      )
      weight = np.zeros((len(indices), m), np.float32)
      for row, i in enumerate(indices):
        if i < 0:
          continue
        cont = np.asarray(continuations[i][: m - 1], np.int32)
        seq[row, p : p + len(cont)] = cont
        seq_valid[row, p : p + len(cont)] = True
        weight[row, : min(m, len(continuations[i]) + 1)] = 1.0
      args = [jnp.asarray(x) for x in (seq, seq_valid, index, weight)]
      ref = decode.scored_log_probs(self.mdef, self.base, reference, *args[:3])
      keep = indices >= 0
      counts = weight.sum(axis=1)
      for start, n_real, trees in stacked:
        sums = np.asarray(
          decode.kl_sums(self.mdef, self.base, ref, trees, *args)
        )[:n_real]
        result[start : start + n_real, indices[keep]] = (
          sums[:, keep] / counts[keep]
        )
    return result

  def next_token_logprobs(
    self, lora: PyTree, prompts: Sequence[Sequence[int]]
  ) -> np.ndarray:
    """log p(first generated token | prompt): fp32 [len(prompts), V]."""
    if not prompts:
      return np.zeros((0, self.mdef.config.vocab_size), np.float32)
    _check_prompts(prompts, self.mdef.config.vocab_size)
    result = np.zeros((len(prompts), self.mdef.config.vocab_size), np.float32)
    batches = _batches(prompts, self._batch_size(len(prompts)), self.min_bucket)
    for indices, tokens, valid, _ in tqdm.tqdm(
      batches,
      desc='next-token log-probs',
      unit='batch',
      leave=False,
      disable=not self.progress or len(batches) == 1,
    ):
      logp = decode.next_logprobs(
        self.mdef, self.base, lora, jnp.asarray(tokens), jnp.asarray(valid)
      )
      logp = np.asarray(logp)
      keep = indices >= 0
      result[indices[keep]] = logp[keep]
    return result


def _padded_rows(n: int) -> int:
  """Rows of a multi-adapter call: n up to a multiple of 8 (few shapes)."""
  return -(-n // 8) * 8


def generate(
  mdef: lora_lib.ModelDef,
  base: PyTree,
  lora: PyTree,
  prompts: Sequence[Sequence[int]],
  *,
  max_new_tokens: int,
  eos_ids: Sequence[int],
  temperature: float = 0.0,
  top_p: float = 1.0,
  seed: int = 0,
  batch_size: Optional[int] = None,
  min_bucket: int = 16,
  progress: bool = True,
) -> list[list[int]]:
  """Generates continuations of token prompts (see `Generator.generate`).

  Args:
    mdef, base, lora: from `gatoms_jax.core.models.lora.split(model)`; pass a
      modified LoRA tree of the same shapes to steer without recompiling.
    prompts: token ids per prompt, any lengths.
    max_new_tokens: generated tokens per prompt at most.
    eos_ids: ids that end a row (stripped from the output).
    temperature, top_p, seed: sampling; temperature 0 is greedy.
    batch_size: rows per batch (None: all prompts, at most 32).
    min_bucket: smallest padded prompt length.
    progress: tqdm bar over batches.

  Returns:
    The new tokens of each prompt, EOS stripped, in the order of `prompts`.
  """
  gen = Generator(
    mdef,
    base,
    eos_ids=eos_ids,
    batch_size=batch_size,
    min_bucket=min_bucket,
    progress=progress,
  )
  return gen.generate(
    lora,
    prompts,
    max_new_tokens=max_new_tokens,
    temperature=temperature,
    top_p=top_p,
    seed=seed,
  )


def next_token_logprobs(
  mdef: lora_lib.ModelDef,
  base: PyTree,
  lora: PyTree,
  prompts: Sequence[Sequence[int]],
  *,
  batch_size: Optional[int] = None,
  min_bucket: int = 16,
  progress: bool = True,
) -> np.ndarray:
  """log-softmax of the next-token logits after each prompt: fp32 [n, V].

  The distribution of the first generated token; the steering evaluation's KL
  guard compares it between the base and a steered LoRA tree.
  """
  gen = Generator(
    mdef, base, batch_size=batch_size, min_bucket=min_bucket, progress=progress
  )
  return gen.next_token_logprobs(lora, prompts)


# ---------------------------------------------------------------------------
# End-of-sequence ids and the one-prompt convenience used by the CLI.


def _as_ids(value: Any) -> list[int]:
  if value is None:
    return []
  if isinstance(value, (list, tuple)):
    return [int(v) for v in value if v is not None]
  return [int(value)]


def eos_token_ids(model_path: str, tokenizer: Any = None) -> tuple[int, ...]:
  """Every id that should end a generation for a model.

  Union of: the tokenizer's eos_token_id; `eos_token_id` of config.json and
  generation_config.json (HF directory) or, without a tokenizer, the GGUF's
  eos/eot/eom ids; and the ids of the `END_TOKENS` the tokenizer's vocabulary
  has.

  Args:
    model_path: HF directory, .gguf file or 'embedded'.
    tokenizer: the model's tokenizer (optional).

  Returns:
    Sorted unique ids.
  """
  from gatoms_jax.core.models import convert

  path = convert.resolve_model_path(model_path)
  ids: set[int] = set()
  if tokenizer is not None:
    ids.update(_as_ids(getattr(tokenizer, 'eos_token_id', None)))
    vocab = tokenizer.get_vocab()
    ids.update(vocab[t] for t in END_TOKENS if t in vocab)
  if os.path.isdir(path):
    for name in ('config.json', 'generation_config.json'):
      file = os.path.join(path, name)
      if not os.path.exists(file):
        continue
      with open(file) as f:
        cfg = json.load(f)
      ids.update(_as_ids(cfg.get('eos_token_id')))
      ids.update(_as_ids((cfg.get('text_config') or {}).get('eos_token_id')))
  elif tokenizer is None and path.endswith('.gguf') and os.path.isfile(path):
    # Parsing a GGUF reads its whole vocabulary (seconds); a tokenizer built
    # from the same file already carries these ids.
    import gguf

    reader = gguf.GGUFReader(path)
    for kind in ('eos', 'eot', 'eom'):
      field = reader.fields.get(f'tokenizer.ggml.{kind}_token_id')
      if field is not None:
        ids.add(int(field.parts[field.data[0]][0]))
  return tuple(sorted(ids))


def complete(
  model_path: Optional[str],
  prompt: str,
  *,
  max_new_tokens: int = 64,
  adapter: Optional[str] = None,
  temperature: float = 0.0,
  top_p: float = 1.0,
  seed: int = 0,
  dtype: str = 'float32',
  system_prompt: Optional[str] = None,
  raw: bool = False,
) -> str:
  """Answers one chat prompt: the decoded completion, special tokens skipped.

  Args:
    model_path: HF directory, .gguf file, None/''/'embedded' for the
      embedded SmolLM2-135M-Instruct GGUF, or 'embedded:NAME'.
    prompt: the user message (formatted with the tokenizer's chat template,
      generation prompt appended), or with `raw` the text to continue.
    max_new_tokens: generated tokens at most.
    adapter: optional PEFT LoRA adapter directory applied to the model.
    temperature, top_p, seed: sampling (temperature 0: greedy).
    dtype: parameter and compute dtype ('float32' or 'bfloat16').
    system_prompt: optional system turn (None: the template's default).
    raw: feed `prompt` as is, without the chat template (the tokenizer still
      adds its own special tokens, e.g. Gemma's <bos>, as transformers'
      `tokenizer(prompt)` does): for base models and plain continuations.

  Returns:
    The completion text.
  """
  from gatoms_jax.core.data import tokenizer as tokenizer_lib
  from gatoms_jax.core.data import tokenize as tokenize_lib
  from gatoms_jax.core.models import convert
  from gatoms_jax.core.models import peft as peft_lib

  path = convert.resolve_model_path(model_path)
  lora_config = None
  if adapter:
    lora_config = peft_lib.read_adapter_config(adapter)
  model = convert.load_model(path, lora=lora_config, dtype=dtype)
  mdef, base, lora = lora_lib.split(model)
  if adapter:
    lora, _ = peft_lib.load_peft_adapter(adapter, model)
    logging.info('Applied LoRA adapter %s (%s)', adapter, lora_config)
  tok = tokenizer_lib.load_tokenizer(path)
  if raw:
    if system_prompt is not None:
      raise ValueError('system_prompt has no place in a raw prompt')
    ids = list(tok(prompt)['input_ids'])
  else:
    ids = tokenize_lib.prompt_tokens(tok, prompt, system_prompt).tolist()
  eos = eos_token_ids(path, tok)
  logging.info('Prompt: %d tokens; stop ids %s', len(ids), eos)
  out = generate(
    mdef,
    base,
    lora,
    [ids],
    max_new_tokens=max_new_tokens,
    eos_ids=eos,
    temperature=temperature,
    top_p=top_p,
    seed=seed,
    progress=False,
  )[0]
  return tok.decode(out, skip_special_tokens=True)
