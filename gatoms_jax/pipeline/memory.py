"""Per-stage resources: a peak-memory estimate checked before a stage starts,
and the measured peak resident memory and compile time while it runs.

The estimate (`estimate_stage`) is arithmetic over the shapes a stage will
run: the resident process (measured at the start) + the stage's working set:

* fine-tuning: one forward/backward call of R × L tokens (the worst over the
  padded lengths the token budget allows up to data.max_length) with the
  activations every layer keeps for the backward pass, the attention scores
  and probabilities (R · heads · L² per layer), the LM head on the loss
  positions (worst case: every position), and the LoRA tree ×6 (parameters,
  gradient, accumulator, Adam's two moments, the update);
* gradient extraction: the same forward/backward per slab (rows × length
  ≤ gradients.tokens_per_slab) plus a committed chunk of rows;
* the factor pass: the same per batch plus the Kronecker factors (in² and
  out² per LoRA matrix, ×3 for the eigendecomposition's copies);
* generation: the KV cache of a call (rows × (prompt bucket + new tokens) ×
  layers × 2 × kv_heads × head_dim) and the prefill's attention, with the
  prompt bucket at data.max_length (an upper bound: the prompts' lengths are
  not known before the stage tokenises them).

Everything is multiplied by `XLA_OVERHEAD` for XLA's temporaries and
allocator slack. With `model.remat` = 'full' (when the model config has it)
only each layer's input is kept per layer, plus one layer's working set.
A stage whose estimate exceeds the limit (config memory_limit_gb, default
90 % of what is available now plus what the process holds) stops with an
error naming the knob to lower, instead of being killed by the OOM killer.
"""

from __future__ import annotations

import dataclasses
import resource
import threading
import time
from typing import Any, Optional

import psutil

from gatoms_jax.core import compilation
from gatoms_jax.core.data import batching

GB = 1024**3
# Slack over the calibrated working set (allocator, fusion buffers): the
# measured calls in tests/test_memory.py came within 0.83-1.13 of it.
XLA_OVERHEAD = 1.2
# Compiling a new shape while the previous call's buffers may still be held
# (measured: ~0.1 GB for tiny_llama's fine-tuning step; more for deeper
# unrolled graphs, hence per layer).
COMPILE_BYTES = 64 * 1024**2
COMPILE_BYTES_PER_LAYER = 16 * 1024**2
# Fraction of the available RAM a stage may plan to use.
AVAILABLE_FRACTION = 0.9


class MemoryBudgetError(RuntimeError):
  """A stage's estimated peak memory exceeds the configured limit."""


def rss_bytes() -> int:
  """Resident memory of this process now."""
  return int(psutil.Process().memory_info().rss)


def _maxrss_bytes() -> int:
  # ru_maxrss is in KiB on Linux: the process's lifetime peak.
  return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


class PeakRss:
  """Peak resident memory over a block, sampled by a thread.

  ru_maxrss is the process's lifetime peak, so it is exact for a block that
  sets a new lifetime peak; otherwise the sampled maximum (every `interval`
  seconds) is the block's peak, which can miss a spike shorter than that.
  """

  def __init__(self, interval: float = 0.05):
    self.interval = interval
    self.peak = 0
    self._stop = threading.Event()
    self._thread: Optional[threading.Thread] = None

  def _sample(self) -> None:
    process = psutil.Process()
    while not self._stop.is_set():
      self.peak = max(self.peak, int(process.memory_info().rss))
      self._stop.wait(self.interval)

  def __enter__(self) -> 'PeakRss':
    self._maxrss_start = _maxrss_bytes()
    self.peak = rss_bytes()
    self._thread = threading.Thread(target=self._sample, daemon=True)
    self._thread.start()
    return self

  def __exit__(self, *exc) -> None:
    self._stop.set()
    self._thread.join()
    self.peak = max(self.peak, rss_bytes())
    end = _maxrss_bytes()
    if end > self._maxrss_start:  # a new lifetime peak was set in the block
      self.peak = max(self.peak, end)


# ---------------------------------------------------------------------------
# The estimate.


@dataclasses.dataclass
class Estimate:
  """Estimated peak bytes of a stage: `baseline` (resident at the start) +
  the working set `parts`, and the knob that sizes the largest part."""

  stage: str
  baseline: int
  parts: dict[str, int]
  knob: str
  knob_value: Any

  @property
  def peak(self) -> int:
    return self.baseline + int(sum(self.parts.values()))

  @property
  def peak_gb(self) -> float:
    return round(self.peak / GB, 3)


def _remat(config: Any) -> str:
  model = config.model
  return str(model.get('remat', 'none')) if hasattr(model, 'get') else 'none'


def train_call_bytes(
  arch: Any,
  rows: int,
  length: int,
  *,
  dtype_bytes: int,
  remat: str = 'none',
  loss_positions: Optional[int] = None,
) -> int:
  """Working set of one forward/backward over rows × length tokens.

  Per token and layer XLA:CPU keeps for the backward ~10 d (the residual
  stream, norm inputs and statistics, o_proj and MLP outputs), 3 H·hd and
  3 KV·hd (q, k, v before and after RoPE, the attention output) and 5 ff
  (gate, up, activation, product, their fusion); per row three float32
  H × L² tensors (scores, masked scores, probabilities), and the backward of
  one layer holds three more at a time. The coefficients are calibrated on
  measured calls (tiny Llama shapes, 2 and 6 layers): per layer 428 MB
  measured vs 453 MB counted at 8 × 1024 tokens (attention-dominated), 257
  vs 288 MB at 32 × 128 tokens with SmolLM2's widths (token-dominated).
  """
  d, ff, n_layers = arch.hidden_size, arch.intermediate_size, arch.num_layers
  heads, kv, hd = arch.num_heads, arch.num_kv_heads, arch.head_dim
  tokens = rows * length
  per_token = (10 * d + 3 * heads * hd + 3 * kv * hd + 5 * ff) * dtype_bytes
  attention = 3 * rows * heads * length * length * 4
  layer = tokens * per_token + attention
  if remat == 'full':
    # Layer inputs only; one layer recomputed (and its backward) at a time.
    kept = n_layers * tokens * d * dtype_bytes + layer + attention
  else:
    kept = n_layers * layer + attention
  m = length if loss_positions is None else loss_positions
  # Logits, their softmax and gradient in float32 on the loss positions.
  head = 3 * rows * m * arch.vocab_size * 4
  return int(kept + head)


def _worst_call(arch, budget, max_rows, max_length, multiple, **kw) -> int:
  import jax

  # Rows are rounded up to a multiple of the devices they are sharded over.
  n_devices = jax.device_count()
  lengths = {
    batching.bucket_length(
      n, min_length=multiple, multiple=multiple, max_length=max_length
    )
    for n in range(1, max_length + 1)
  }
  return max(
    train_call_bytes(
      arch,
      batching.rows_for(L, budget, max_rows=max_rows, row_multiple=n_devices),
      L,
      **kw,
    )
    for L in lengths
  )


def _tree_params(tree: Any) -> int:
  import jax

  return int(sum(x.size for x in jax.tree.leaves(tree)))


def estimate_stage(
  stage: str,
  config: Any,
  arch: Any,
  lora: Any,
  *,
  baseline: int,
) -> Optional[Estimate]:
  """The peak-memory estimate of a model stage (None for the others).

  Args:
    stage: the stage name.
    config: the pipeline config.
    arch: the model's `ModelConfig`.
    lora: the LoRA tree (shapes only are read).
    baseline: resident bytes before the stage (this process, model loaded).
  """
  dtype_bytes = 2 if config.model.dtype == 'bfloat16' else 4
  remat = _remat(config)
  max_length = int(config.data.max_length)
  lora_bytes = _tree_params(lora) * 4
  parts: dict[str, int] = {
    'xla_compile': COMPILE_BYTES + COMPILE_BYTES_PER_LAYER * arch.num_layers
  }
  if stage == 'finetune':
    ft = config.finetune
    multiple = int(ft.bucket_multiple or config.data.bucket_multiple)
    max_rows = 1 << max(0, int(ft.batch_size) - 1).bit_length()
    budget = int(ft.tokens_per_batch) or max_rows * max_length
    parts['call'] = _worst_call(
      arch, budget, max_rows, max_length, multiple,
      dtype_bytes=dtype_bytes, remat=remat,
    )  # fmt: skip
    parts['lora_and_adam'] = 6 * lora_bytes
    knob, value = 'finetune.tokens_per_batch', int(ft.tokens_per_batch)
  elif stage == 'gradients':
    g = config.gradients
    multiple = int(config.data.bucket_multiple)
    parts['call'] = _worst_call(
      arch, int(g.tokens_per_slab), int(g.batch_size), max_length, multiple,
      dtype_bytes=dtype_bytes, remat=remat,
    )  # fmt: skip
    # Rows of a call and of a committed chunk, float32.
    parts['rows'] = (int(g.batch_size) * 8 + int(g.chunk_size)) * lora_bytes
    knob, value = 'gradients.tokens_per_slab', int(g.tokens_per_slab)
  elif stage == 'curvature':
    c = config.curvature
    multiple = int(config.data.bucket_multiple)
    parts['call'] = _worst_call(
      arch, int(c.tokens_per_batch), int(c.batch_size), max_length, multiple,
      dtype_bytes=dtype_bytes, remat=remat,
    )  # fmt: skip
    import jax

    factors = sum(
      sum(int(n) ** 2 for n in x.shape[-2:])
      for x in jax.tree.leaves(lora)
      if x.ndim >= 2
    )
    parts['factors'] = 3 * factors * 4
    knob, value = 'curvature.tokens_per_batch', int(c.tokens_per_batch)
  elif stage == 'steering':
    s = config.steering
    new = int(s.max_new_tokens)
    prompt = batching.ladder_length(max_length, int(s.min_prompt_bucket))
    rows = max(
      1, min(int(s.max_rows), int(s.tokens_per_batch) // (prompt + new))
    )
    slots = prompt + new
    kv = 2 * arch.num_layers * arch.num_kv_heads * arch.head_dim
    parts['kv_cache'] = rows * slots * kv * dtype_bytes
    # Prefill: one layer's activations and scores at a time, and logits.
    parts['prefill'] = train_call_bytes(
      arch, rows, prompt, dtype_bytes=dtype_bytes, remat='full',
      loss_positions=1,
    ) // max(1, arch.num_layers)  # fmt: skip
    parts['adapters'] = 2 * (2 + int(s.n_random_controls)) * lora_bytes
    # Generator.sequence_kl scores at most 2^27 float32 log-probs at once.
    parts['kl_logprobs'] = 2**27 * 4
    knob, value = 'steering.tokens_per_batch', int(s.tokens_per_batch)
  else:
    return None
  parts = {k: int(v * XLA_OVERHEAD) for k, v in parts.items()}
  return Estimate(stage, int(baseline), parts, knob, value)


def memory_limit_bytes(config: Any) -> int:
  """config.memory_limit_gb, or what this process holds + 90 % of the RAM
  available now."""
  if float(config.memory_limit_gb) > 0:
    return int(float(config.memory_limit_gb) * GB)
  available = psutil.virtual_memory().available
  return int(rss_bytes() + AVAILABLE_FRACTION * available)


def check(estimate: Optional[Estimate], limit: int, config: Any) -> None:
  """Raises `MemoryBudgetError` when the estimate exceeds `limit`."""
  if estimate is None or estimate.peak <= limit:
    return
  parts = ', '.join(f'{k} {v / GB:.2f} GB' for k, v in estimate.parts.items())
  raise MemoryBudgetError(
    f'stage {estimate.stage}: {estimate.knob}={estimate.knob_value} with '
    f'data.max_length={int(config.data.max_length)} needs ~'
    f'{estimate.peak / GB:.2f} GB (resident {estimate.baseline / GB:.2f} GB '
    f'+ {parts}) > the limit {limit / GB:.2f} GB: lower {estimate.knob} or '
    'data.max_length (or raise memory_limit_gb if the estimate is too '
    'pessimistic)'
  )


MODEL_STAGES = ('finetune', 'gradients', 'curvature', 'steering')


class StageResources:
  """Context manager around one stage: checks the memory estimate before it
  starts, then measures its peak RSS and compile events.

  `figures()` after the block: estimated_peak_gb, peak_rss_gb,
  compile_seconds, n_compilations, n_cache_hits, trace_seconds.
  """

  def __init__(self, ctx: Any, stage: str):
    self.ctx = ctx
    self.stage = stage
    self.estimate: Optional[Estimate] = None

  def _estimate(self) -> Optional[Estimate]:
    if self.stage not in MODEL_STAGES:
      return None
    ctx = self.ctx
    # The model is loaded first (the stage loads it anyway), so the resident
    # baseline includes it.
    mdef, _, lora = ctx.split_model
    return estimate_stage(
      self.stage, ctx.config, mdef.config, lora, baseline=rss_bytes()
    )

  def __enter__(self) -> 'StageResources':
    compilation.CompileCounter.register()
    self.estimate = self._estimate()
    check(self.estimate, memory_limit_bytes(self.ctx.config), self.ctx.config)
    self._compiles = compilation.CompileCounter.snapshot()
    self._peak = PeakRss().__enter__()
    self._t0 = time.perf_counter()
    return self

  def __exit__(self, *exc) -> None:
    self._peak.__exit__(*exc)
    self._compile_figures = compilation.CompileCounter.since(self._compiles)

  def figures(self) -> dict:
    out = {
      'peak_rss_gb': round(self._peak.peak / GB, 3),
      'estimated_peak_gb': self.estimate.peak_gb if self.estimate else None,
    }
    if self.estimate is not None:
      out['estimated_parts_gb'] = {
        'resident_at_start': round(self.estimate.baseline / GB, 3),
        **{k: round(v / GB, 3) for k, v in self.estimate.parts.items()},
      }
    out.update(self._compile_figures)
    return out
