"""Batched autoregressive generation with a KV cache (greedy or top-p sampling).

Used to read steered models (θ ± α·v on the LoRA parameters) and to guard
steering with the KL divergence of the next-token distribution. The LoRA tree
is a separate argument of every jitted function, so a modified adapter of the
same shapes reuses the compiled code.

Layout of one batch (B rows, prompts LEFT-padded to a bucketed length P):

  slots 0..P-1      prompt (pads: valid=False), written by one prefill call
  slots P..P+N-2    generated tokens 0..N-2, one per decode step

Positions are `cumsum(valid) - 1`, so every row's prompt starts at position 0
whatever its padding, and generated token i of a row sits at position
`len(prompt) + i`. The whole decode runs in one `lax.while_loop` inside one
jit, stops each row at its first EOS id and exits when every row has stopped.
Compiled code is cached by jax.jit per (mode, B, P, N); P is rounded up to a
power of two (at least `min_bucket`) to bound the number of compilations.

Memory: the cache holds 2·L·B·S·kv·hd elements (keys and values of L layers,
S = P + N - 1 slots, kv heads of width hd) in the model's dtype; e.g. SmolLM2-
135M (L=30, kv=3, hd=64) at B=32, S=512 in fp32 is 2·30·32·512·3·64·4 B =
755 MB. Logits are computed for one position per row only (B×V floats).
"""

from __future__ import annotations

import collections
import functools
import json
import os
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from absl import logging

from gatoms_jax.models import lora as lora_lib
from gatoms_jax.models.transformer import init_cache

Array = jax.Array
PyTree = Any

# Number of times each jitted function was traced, keyed by
# (name, batch, prompt bucket, max_new_tokens, mode); tests use it to check
# that a new LoRA tree of the same shapes does not recompile.
TRACE_COUNTS: collections.Counter = collections.Counter()

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
  '</s>',
)


def bucket_length(n: int, min_bucket: int = 16) -> int:
  """Smallest power of two ≥ max(n, min_bucket)."""
  return max(min_bucket, 1 << max(0, int(n) - 1).bit_length())


def _positions(valid: Array) -> Array:
  # Left pads get position 0 (clipped from -1); they are masked as keys.
  return jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0).astype(jnp.int32)


def _top_p_filter(logits: Array, top_p: Array) -> Array:
  """Keeps the smallest set of tokens whose probability reaches top_p.

  Same rule as transformers' TopPLogitsWarper: a token is kept iff the
  probability mass of strictly more likely tokens is < top_p (so the most
  likely token always survives). Ties at the threshold are kept together.
  """
  sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
  probs = jax.nn.softmax(sorted_logits, axis=-1)
  mass_before = jnp.cumsum(probs, axis=-1) - probs
  keep = mass_before < top_p
  threshold = jnp.min(
    jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True
  )
  return jnp.where(logits >= threshold, logits, -jnp.inf)


def _pick(
  logits: Array,
  row_keys: Array,
  step: Array,
  temperature: Array,
  top_p: Array,
  mode: str,
) -> Array:
  """Next token per row: argmax ('greedy') or a sample ('sample', 'top_p')."""
  if mode == 'greedy':
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  scaled = logits / temperature
  if mode == 'top_p':
    scaled = _top_p_filter(scaled, top_p)
  keys = jax.vmap(jax.random.fold_in, (0, None))(row_keys, step)
  return jax.vmap(jax.random.categorical)(keys, scaled).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=('mdef', 'max_new_tokens', 'mode'))
def _generate_batch(
  mdef: lora_lib.ModelDef,
  base: PyTree,
  lora: PyTree,
  tokens: Array,
  valid: Array,
  done: Array,
  row_keys: Array,
  eos_ids: Array,
  temperature: Array,
  top_p: Array,
  *,
  max_new_tokens: int,
  mode: str,
) -> Array:
  """Generates up to N tokens for one left-padded batch.

  Args:
    mdef, base, lora: the split model.
    tokens, valid: int32/bool [B, P] left-padded prompts.
    done: bool [B], rows that are padding (never generate).
    row_keys: [B] PRNG keys, one per prompt (sampling only).
    eos_ids: int32 [k] ids that end a row (-1: padding).
    temperature, top_p: float32 scalars (sampling only).
    max_new_tokens: N.
    mode: 'greedy', 'sample' or 'top_p'.

  Returns:
    int32 [B, N]: generated ids; -1 after a row's EOS (the EOS is kept).
  """
  b, p = tokens.shape
  n = max_new_tokens
  TRACE_COUNTS['generate', b, p, n, mode] += 1
  model = lora_lib.merge(mdef, base, lora)
  dtype = model.embed_tokens[...].dtype
  cache = init_cache(mdef.config, b, p + n - 1, dtype)
  hidden, cache = model.hidden_states(
    tokens, _positions(valid), valid, cache=cache, cache_index=0
  )
  lengths = jnp.sum(valid, axis=1).astype(jnp.int32)

  def is_eos(tok):
    return jnp.any(tok[:, None] == eos_ids[None, :], axis=-1)

  def emit(logits, step, done, out):
    tok = _pick(logits, row_keys, step, temperature, top_p, mode)
    tok = jnp.where(done, -1, tok)
    out = out.at[:, step].set(tok)
    return tok, done | is_eos(tok), out

  out = jnp.full((b, n), -1, jnp.int32)
  logits = model.logits(hidden[:, -1])
  tok, done, out = emit(logits, 0, done, out)

  def cond(state):
    step, _, _, done, _ = state
    return (step < n) & ~jnp.all(done)

  def body(state):
    step, cache, tok, done, out = state
    # Merging is free at run time; doing it here keeps NNX objects from
    # crossing the while_loop trace boundary.
    m = lora_lib.merge(mdef, base, lora)
    x = jnp.maximum(tok, 0)[:, None]  # finished rows feed a dummy id
    pos = (lengths + step - 1)[:, None]
    hidden, cache = m.hidden_states(
      x, pos, jnp.ones_like(x, bool), cache=cache, cache_index=p + step - 1
    )
    tok, done, out = emit(m.logits(hidden[:, 0]), step, done, out)
    return step + 1, cache, tok, done, out

  state = (jnp.asarray(1, jnp.int32), cache, tok, done, out)
  return jax.lax.while_loop(cond, body, state)[-1]


@functools.partial(jax.jit, static_argnames=('mdef',))
def _next_logprobs_batch(
  mdef: lora_lib.ModelDef,
  base: PyTree,
  lora: PyTree,
  tokens: Array,
  valid: Array,
) -> Array:
  """log p(next token | prompt) for left-padded prompts: fp32 [B, V]."""
  TRACE_COUNTS['logprobs', tokens.shape[0], tokens.shape[1]] += 1
  model = lora_lib.merge(mdef, base, lora)
  hidden, _ = model.hidden_states(tokens, _positions(valid), valid)
  return jax.nn.log_softmax(model.logits(hidden[:, -1]), axis=-1)


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
    tokens = np.zeros((batch_size, p), np.int32)
    valid = np.zeros((batch_size, p), bool)
    indices = np.full((batch_size,), -1, np.int64)
    for row, i in enumerate(idx):
      ids = np.asarray(prompts[i], np.int32)
      tokens[row, p - len(ids) :] = ids
      valid[row, p - len(ids) :] = True
      indices[row] = i
    # Padding rows get a one-token prompt so their attention is well defined.
    valid[len(idx) :, -1] = True
    out.append((indices, tokens, valid, indices < 0))
  return out


class Generator:
  """Generation and next-token log-probs for one model, any LoRA tree.

  Holds the frozen parts (model def, base weights) and the size knobs; the
  LoRA tree is an argument of every call. Compiled code lives in jax.jit's
  cache, keyed by (mode, batch, prompt bucket, max_new_tokens) and by the
  identity of `mdef`, so steering loops over many LoRA trees compile once.

  Args:
    mdef, base: from `gatoms_jax.models.lora.split(model)`.
    eos_ids: ids that end a generation (see `eos_token_ids`).
    batch_size: rows per batch; None: all prompts of a call in one batch,
      capped at 32 (cache memory grows linearly with it, see module doc).
    min_bucket: smallest padded prompt length.
    progress: show a tqdm bar over batches.
  """

  def __init__(
    self,
    mdef: lora_lib.ModelDef,
    base: PyTree,
    *,
    eos_ids: Sequence[int] = (),
    batch_size: Optional[int] = None,
    min_bucket: int = 16,
    progress: bool = True,
  ):
    self.mdef = mdef
    self.base = base
    self.eos_ids = tuple(sorted({int(i) for i in eos_ids}))
    self.batch_size = batch_size
    self.min_bucket = min_bucket
    self.progress = progress

  def _batch_size(self, n: int) -> int:
    if self.batch_size is not None:
      if self.batch_size < 1:
        raise ValueError(f'batch_size must be ≥ 1, got {self.batch_size}')
      return min(self.batch_size, n)
    return min(n, 32)

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
    mode = (
      'greedy' if temperature == 0 else ('top_p' if top_p < 1 else 'sample')
    )
    # Padded with -1 (never a token) to a multiple of 8: changing the stop set
    # does not recompile.
    eos = np.full((-(-max(len(self.eos_ids), 1) // 8) * 8,), -1, np.int32)
    eos[: len(self.eos_ids)] = self.eos_ids
    eos = jnp.asarray(eos)
    key = jax.random.key(seed)
    temp = jnp.float32(max(temperature, 1e-30))
    nucleus = jnp.float32(top_p)
    results: list[list[int]] = [[] for _ in prompts]
    batches = _batches(prompts, self._batch_size(len(prompts)), self.min_bucket)
    bar = tqdm.tqdm(
      batches,
      desc='generate',
      unit='batch',
      leave=False,
      disable=not self.progress or len(batches) == 1,
    )
    for indices, tokens, valid, padding in bar:
      row_keys = jax.vmap(jax.random.fold_in, (None, 0))(
        key, jnp.asarray(np.maximum(indices, 0), jnp.uint32)
      )
      out = _generate_batch(
        self.mdef,
        self.base,
        lora,
        jnp.asarray(tokens),
        jnp.asarray(valid),
        jnp.asarray(padding),
        row_keys,
        eos,
        temp,
        nucleus,
        max_new_tokens=max_new_tokens,
        mode=mode,
      )
      out = np.asarray(out)
      for row, i in enumerate(indices):
        if i >= 0:
          results[i] = _strip(out[row], self.eos_ids)
    return results

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
      logp = _next_logprobs_batch(
        self.mdef, self.base, lora, jnp.asarray(tokens), jnp.asarray(valid)
      )
      logp = np.asarray(logp)
      keep = indices >= 0
      result[indices[keep]] = logp[keep]
    return result


def _strip(row: np.ndarray, eos_ids: Sequence[int]) -> list[int]:
  out = []
  for t in row.tolist():
    if t < 0 or t in eos_ids:
      break
    out.append(t)
  return out


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
    mdef, base, lora: from `gatoms_jax.models.lora.split(model)`; pass a
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
  from gatoms_jax.models import convert

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
) -> str:
  """Answers one chat prompt: the decoded completion, special tokens skipped.

  Args:
    model_path: HF directory, .gguf file, or None/''/'embedded' for the
      embedded SmolLM2-135M-Instruct GGUF.
    prompt: the user message (formatted with the tokenizer's chat template,
      generation prompt appended).
    max_new_tokens: generated tokens at most.
    adapter: optional PEFT LoRA adapter directory applied to the model.
    temperature, top_p, seed: sampling (temperature 0: greedy).
    dtype: parameter and compute dtype ('float32' or 'bfloat16').
    system_prompt: optional system turn (None: the template's default).

  Returns:
    The completion text.
  """
  from gatoms_jax import tokenizer as tokenizer_lib
  from gatoms_jax.data import tokenize as tokenize_lib
  from gatoms_jax.models import convert
  from gatoms_jax.models import peft as peft_lib

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
