"""A paper-scale plan without the hardware: compile every stage's step
abstractly and read its memory and FLOPs.

The model is built with `nnx.eval_shape` (shapes only, no weights), every
input is a `jax.ShapeDtypeStruct` carrying the sharding the stage uses on the
mesh, and each stage's own jitted step is lowered and compiled for the local
devices (fake CPU devices stand in for accelerators). XLA then reports, per
device and per call, the bytes the program needs (arguments + outputs +
temporaries − donated aliases) and the FLOPs it executes. The projected wall
time of a run multiplies the FLOPs of one call by the number of calls the
config's run makes and divides by an accelerator's peak rate times a stated
flop efficiency.

What XLA's numbers mean, and where they fall short:
  * The memory figure is the CPU compiler's buffer assignment; an
    accelerator backend fuses and schedules differently, so treat it as an
    estimate, not a bound. XLA:CPU also keeps float32 copies of bfloat16
    matmul operands (the weights of a bf16 model), which GPUs and TPUs do
    not: `cpu_f32_copies_max_bytes` bounds that excess, and the table shows
    the figure without it too. `fits` compares the CPU figure as is.
  * `cost_analysis` counts the body of a `while_loop` once. Generation is
    lowered one decode step per call (body = one step, so exact); the
    dictionary step's coder and BCD loops are counted once per outer
    iteration, a lower bound (the dictionary is tiny next to the model
    stages either way).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gatoms_jax.core import sharding
from gatoms_jax.core.loading import lora_config_from
from gatoms_jax.core.models import config as config_lib
from gatoms_jax.core.models import convert
from gatoms_jax.core.models import decode
from gatoms_jax.core.models import lora as lora_lib
from gatoms_jax.core.models.transformer import Transformer
from gatoms_jax.method import curvature
from gatoms_jax.method import dictionary
from gatoms_jax.method import finetune
from gatoms_jax.method import gradients as grads
from gatoms_jax.method import projection

STAGES = (
  'finetune',
  'curvature',
  'gradients',
  'projection',
  'dictionary',
  'generation',
)


@dataclasses.dataclass(frozen=True)
class Accelerator:
  """Peak dense (no structured sparsity) matmul rate and memory of one chip."""

  peak_flops: float
  memory_bytes: float
  source: str


_GB = 1e9
_GIB = 2**30
# bf16 dense peaks; fp32 stages run at these rates only through TF32 (GPU)
# or the MXU's default bf16 passes (TPU), so fp32 figures are optimistic.
ACCELERATORS = {
  'H100_SXM_80GB': Accelerator(
    989e12,
    80 * _GB,
    'NVIDIA H100 Tensor Core GPU datasheet: bf16 989.4 TFLOPS dense '
    '(1,979 with sparsity), 80 GB HBM3',
  ),
  'A100_SXM_80GB': Accelerator(
    312e12,
    80 * _GB,
    'NVIDIA A100 datasheet: bf16 312 TFLOPS dense (624 with sparsity), '
    '80 GB HBM2e',
  ),
  'TPU_v4': Accelerator(
    275e12,
    32 * _GIB,
    'cloud.google.com/tpu/docs/v4: 275 bf16 TFLOPS, 32 GiB HBM per chip',
  ),
  'TPU_v5e': Accelerator(
    197e12,
    16 * _GIB,
    'cloud.google.com/tpu/docs/v5e: 197 bf16 TFLOPS, 16 GiB HBM per chip',
  ),
  'TPU_v5p': Accelerator(
    459e12,
    95 * _GIB,
    'cloud.google.com/tpu/docs/v5p: 459 bf16 TFLOPS, 95 GiB HBM per chip',
  ),
}
# Model FLOPs utilisation assumed for every stage: a typical figure for
# well-tuned LLM training on these chips (roughly 0.35–0.55); small-batch
# stages (generation, the per-document gradients at one 512-token row per
# device) will do worse, so read the projections as optimistic.
DEFAULT_FLOP_EFFICIENCY = 0.4


def parse_mesh(text: str) -> dict[str, int]:
  """'data:8,model:1' → {'data': 8, 'model': 1} (order kept)."""
  shape = {}
  for part in text.split(','):
    name, _, size = part.strip().partition(':')
    if not name or not size.lstrip('-').isdigit():
      raise ValueError(
        f'--mesh={text!r}: expected name:size pairs, e.g. data:8,model:1'
      )
    if name in shape:
      raise ValueError(f'--mesh={text!r}: axis {name!r} given twice')
    shape[name] = int(size)
  if sharding.DATA_AXIS not in shape:
    raise ValueError(f'--mesh={text!r}: needs a {sharding.DATA_AXIS!r} axis')
  return shape


def build_mesh(shape: dict[str, int]) -> jax.sharding.Mesh:
  """A mesh of the given axis sizes over the first devices (-1: the rest)."""
  n_devices = len(jax.devices())
  known = math.prod(s for s in shape.values() if s != -1)
  sizes = [n_devices // known if s == -1 else s for s in shape.values()]
  if math.prod(sizes) > n_devices or min(sizes) < 1:
    raise ValueError(
      f'mesh {shape} needs {math.prod(sizes)} devices; {n_devices} available '
      '(experiments.plan --devices=N fakes N CPU devices)'
    )
  devices = np.array(jax.devices()[: math.prod(sizes)]).reshape(sizes)
  return jax.sharding.Mesh(devices, tuple(shape))


def model_config_of(config: Any) -> config_lib.ModelConfig:
  """The architecture: `model.preset`, a 'random:NAME' path, or the
  config.json of an HF directory (no weights are read)."""
  name = config.model.get('preset', '')
  path = config.model.path
  if not name and path.startswith('random:'):
    name = path.split(':', 1)[1]
  if name:
    if name not in config_lib.PRESETS:
      raise ValueError(
        f'Unknown model preset {name!r}; known: {sorted(config_lib.PRESETS)}'
      )
    return config_lib.PRESETS[name]()
  if not os.path.exists(os.path.join(path, 'config.json')):
    raise ValueError(
      f'model.path={path!r} has no config.json here: set model.preset to one '
      f'of {sorted(config_lib.PRESETS)} to plan without the files'
    )
  from transformers import AutoConfig  # pylint: disable=g-import-not-at-top

  hf = AutoConfig.from_pretrained(path, local_files_only=True)
  return convert.config_from_hf(hf)


def abstract_split(
  model_config: config_lib.ModelConfig, config: Any
) -> tuple[lora_lib.ModelDef, Any, Any]:
  """(mdef, base, lora) of the model with shapes and dtypes only: the base
  in `model.dtype`, the LoRA tree in float32 (as fine-tuning keeps it)."""
  dtype = jnp.dtype(config.model.dtype)
  abstract = nnx.eval_shape(
    lambda: Transformer(
      model_config,
      lora=lora_config_from(config),
      dtype=dtype,
      rngs=nnx.Rngs(0),
    )
  )
  mdef, base, lora = lora_lib.split(abstract)
  lora = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, jnp.float32), lora
  )
  return mdef, base, lora


def _placed(tree, placement: Callable[[Any], jax.sharding.Sharding]):
  return jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=placement(x)),
    tree,
  )


def _cast(tree, dtype):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, dtype), tree)


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


@dataclasses.dataclass
class StagePlan:
  """One stage's step: what to compile, and how often the run calls it."""

  name: str
  jitted: Any
  args: tuple
  kwargs: dict
  calls: float
  shapes: str
  sharding: str
  # Positions in `args` of the model's parameters (frozen base, LoRA trees).
  param_args: tuple[int, ...] = ()


def stage_plans(
  config: Any, mesh: jax.sharding.Mesh, shard_params: bool = False
) -> list[StagePlan]:
  """The step of every stage with abstract inputs placed on `mesh`.

  Inputs are sized for the config's run: documents of `data.max_length`
  tokens (every document at the longest width: an upper bound), the training
  split of `data.n_docs`. With `shard_params`, the frozen base, the LoRA
  tree and the AdamW state follow `sharding.param_shardings` (FSDP over
  'data', tensor parallelism over 'model'); otherwise they are replicated,
  as the stages place them today.
  """
  model_config = model_config_of(config)
  mdef, base, lora = abstract_split(model_config, config)
  rep = sharding.replicated(mesh)
  n_data = sharding.axis_size(mesh, sharding.DATA_AXIS)
  rows = lambda ndim: sharding.row_sharding(mesh, ndim)
  rep_of = lambda tree: _placed(tree, lambda _: rep)
  spec = lambda shape, dtype, shard: jax.ShapeDtypeStruct(
    shape, dtype, sharding=shard
  )
  width = _round_up(config.data.max_length, config.data.bucket_multiple)
  n_train = int(round(config.data.n_docs * (1 - config.data.heldout_fraction)))
  if shard_params:
    params_of = lambda tree: jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      tree,
      sharding.param_shardings(tree, mesh),
    )
    param_sharding = (
      "frozen base and LoRA by sharding.param_shardings (embed over 'data', "
      "heads/MLP/vocab over 'model')"
    )
    opt_sharding = 'AdamW moments like the LoRA tree'
  else:
    params_of = rep_of
    param_sharding = 'frozen base and LoRA replicated'
    opt_sharding = 'AdamW state replicated'
  plans = []

  # Fine-tuning: one optimiser micro-step of batch_size documents.
  ft = config.finetune
  optimizer = finetune.make_optimizer(ft)
  opt_state = jax.eval_shape(optimizer.init, lora)
  batch_rows = _round_up(ft.batch_size, n_data)
  loss_width = _round_up(width - 1, ft.loss_multiple)
  batch = {
    'tokens': spec((batch_rows, width), jnp.int32, rows(2)),
    'index': spec((batch_rows, loss_width), jnp.int32, rows(2)),
    'weight': spec((batch_rows, loss_width), jnp.float32, rows(2)),
    'scale': spec((), jnp.float32, rep),
  }
  plans.append(
    StagePlan(
      'finetune',
      finetune.make_train_step(mdef, optimizer),
      (params_of(lora), params_of(opt_state), params_of(base), batch),
      {},
      calls=ft.steps * ft.grad_accum,
      param_args=(0, 2),
      shapes=f'batch {batch_rows} x {width} tokens',
      sharding=f'documents over data; {param_sharding}; {opt_sharding}',
    )
  )

  # Factor pass: Σ a aᵀ, Σ s sᵀ over one batch of documents.
  cv = config.curvature
  cv_rows = _round_up(cv.batch_size, n_data)
  factor_step = jax.jit(
    curvature._factor_batch,  # the stage's own step (FactorAccumulator)
    static_argnums=(1, 8),
    # Shardings come with the arguments (the stage places them).
    out_shardings=rep,
  )
  n_factor_docs = min(n_train, cv.max_docs) if cv.max_docs else n_train
  plans.append(
    StagePlan(
      'curvature',
      factor_step,
      (
        params_of(lora),
        mdef,
        params_of(base),
        spec((cv_rows, width), jnp.int32, rows(2)),
        spec((cv_rows, loss_width), jnp.int32, rows(2)),
        spec((cv_rows, loss_width), jnp.float32, rows(2)),
        spec((cv_rows, width), jnp.float32, rows(2)),
        spec((), jax.random.key(0).dtype, rep),
        cv.fisher,
      ),
      {},
      calls=math.ceil(n_factor_docs / cv_rows),
      param_args=(0, 2),
      shapes=f'batch {cv_rows} x {width} tokens',
      sharding=f'documents over data; {param_sharding}; factor sums '
      'all-reduced, replicated',
    )
  )

  # Per-document gradients: one slab of R rows x T tokens (the extractor's
  # default 512 tokens per slab, R a multiple of the data axis).
  gc = config.gradients
  compute = jnp.dtype(gc.compute_dtype)
  slab_rows = _round_up(min(max(1, 512 // width), gc.batch_size or 512), n_data)
  slab_sharding = lambda ndim: jax.sharding.NamedSharding(
    mesh, jax.P(None, sharding.DATA_AXIS, *([None] * (ndim - 2)))
  )
  slab_loss = _round_up(width * slab_rows // n_data, 8)
  slab = grads.Slab(
    tokens=spec((1, slab_rows, width), jnp.int32, slab_sharding(3)),
    positions=spec((1, slab_rows, width), jnp.int32, slab_sharding(3)),
    segments=spec((1, slab_rows, width), jnp.int32, slab_sharding(3)),
    index=spec((1, n_data, slab_loss), jnp.int32, slab_sharding(3)),
    targets=spec((1, n_data, slab_loss), jnp.int32, slab_sharding(3)),
    weight=spec((1, n_data, slab_loss), jnp.float32, slab_sharding(3)),
    doc_index=spec((1, slab_rows, 1), jnp.int32, slab_sharding(3)),
  )
  plans.append(
    StagePlan(
      'gradients',
      # The extractor's own call, its parameter shardings from the arguments.
      jax.jit(
        functools.partial(grads._call_fn, method='taps', packed=False),
        static_argnums=(1,),
        out_shardings=slab_sharding(4),
      ),
      (
        params_of(_cast(lora, compute)),
        mdef,
        params_of(_cast(base, compute)),
        slab,
      ),
      {},
      calls=math.ceil(n_train / slab_rows),
      param_args=(0, 2),
      shapes=f'slab {slab_rows} x {width} tokens, {gc.compute_dtype}',
      sharding=f'slab rows over data; {param_sharding} (cast to '
      f'{gc.compute_dtype})',
    )
  )

  # Projection of one GradientStore chunk onto the kept eigenbasis entries.
  leaves = tuple(
    (path, tuple(int(s) for s in x.shape))
    for path, x in lora_lib.lora_leaves(lora)
  )
  dim = sum(i * o for _, (i, o) in leaves)
  top_k = config.projection.top_k
  kept = {p: min(top_k, i * o) for p, (i, o) in leaves}
  params = (
    {p: spec((i, i), jnp.float32, rep) for p, (i, _) in leaves},
    {p: spec((o, o), jnp.float32, rep) for p, (_, o) in leaves},
    {p: spec((kept[p],), jnp.int32, rep) for p, _ in leaves},
    {p: spec((kept[p],), jnp.float32, rep) for p, _ in leaves},
  )
  chunk = _round_up(gc.chunk_size, n_data)
  project = jax.jit(
    lambda r, p: projection._project_rows(r, leaves, *p),  # Projector's fn
    in_shardings=(rows(2), rep),
    out_shardings=rows(2),
  )
  plans.append(
    StagePlan(
      'projection',
      project,
      (spec((chunk, dim), jnp.float32, rows(2)), params),
      {},
      calls=math.ceil(n_train / chunk),
      shapes=f'chunk {chunk} x d={dim}',
      sharding='gradient rows over data; eigenbases replicated',
    )
  )

  # Dictionary learning: one full-batch outer iteration on all rows.
  dc = config.dictionary
  k_total = sum(kept.values())
  n_rows = _round_up(n_train, n_data)
  n_atoms = dc.n_atoms
  dict_step = dictionary._full_step_fn(  # the stage's own step
    mesh,
    dc.coder,
    dc.learn_coder_max_iter,
    float(dc.coder_tol),
    dc.bcd_sweeps,
    dc.bcd_block,
  )
  plans.append(
    StagePlan(
      'dictionary',
      dict_step,
      (
        spec((n_atoms, k_total), jnp.float32, rep),
        spec((n_rows, n_atoms), jnp.float32, rows(2)),
        spec((n_rows, k_total), jnp.float32, rows(2)),
        spec((), jnp.float32, rep),
        spec((), jnp.float32, rep),
        spec((), jnp.int32, rep),
        spec((), jnp.int32, rep),
      ),
      {},
      calls=dc.n_iter,
      shapes=f'X {n_rows} x {k_total}, {n_atoms} atoms (loops counted once)',
      sharding='rows of X and codes over data; dictionary replicated',
    )
  )

  # Steered generation: one decode step of max_rows rows over stacked
  # adapters (variants x prompts), cache of prompt bucket + new tokens.
  sc = config.steering
  gen_rows = _round_up(sc.max_rows, n_data)
  n_variants = 1 + (sc.atoms_per_behavior + sc.n_random_controls) * 2 * len(
    sc.kl_levels
  )
  stacked = params_of(
    jax.tree.map(
      lambda x: jax.ShapeDtypeStruct((n_variants, *x.shape), base_dtype(base)),
      lora,
    )
  )
  slots = _round_up(sc.min_prompt_bucket + sc.max_new_tokens - 1, 8)
  cache = jax.eval_shape(
    lambda: {
      'layers': [
        {
          'k': jnp.zeros(
            (gen_rows, model_config.num_kv_heads, slots, model_config.head_dim),
            base_dtype(base),
          ),
          'v': jnp.zeros(
            (gen_rows, model_config.num_kv_heads, slots, model_config.head_dim),
            base_dtype(base),
          ),
          'pos': jnp.zeros((gen_rows, slots), jnp.int32),
          'valid': jnp.zeros((gen_rows, slots), bool),
        }
        for _ in range(model_config.num_layers)
      ]
    }
  )
  row_of = lambda x: rows(x.ndim)
  state = {
    'cache': _placed(cache, row_of),
    'tok': spec((gen_rows,), jnp.int32, rows(1)),
    'done': spec((gen_rows,), jnp.bool_, rows(1)),
    'lengths': spec((gen_rows,), jnp.int32, rows(1)),
  }
  scalar = lambda dtype: spec((), dtype, rep)
  n_generations = sc.prompts_per_behavior * len(sc.behaviors) * n_variants
  plans.append(
    StagePlan(
      'generation',
      decode.decode_segment,
      (
        mdef,
        params_of(base),
        stacked,
        spec((gen_rows, n_variants), jnp.float32, rows(2)),
        state,
        spec((gen_rows,), jax.random.key(0).dtype, rows(1)),
        spec((2,), jnp.int32, rep),
        (scalar(jnp.float32), scalar(jnp.float32)),
        scalar(jnp.int32),
        scalar(jnp.int32),
        scalar(jnp.int32),
      ),
      {'n_steps': 1, 'mode': 'greedy'},
      calls=math.ceil(n_generations / gen_rows) * sc.max_new_tokens,
      param_args=(1, 2),
      shapes=f'{gen_rows} rows, {n_variants} stacked adapters, '
      f'{slots} cache slots; one decode step',
      sharding=f'rows and KV cache over data; {param_sharding}',
    )
  )
  return plans


def base_dtype(base) -> Any:
  return jax.tree.leaves(base)[0].dtype


def _memory_bytes(compiled) -> Optional[int]:
  stats = compiled.memory_analysis()
  if stats is None:
    return None
  return int(
    stats.argument_size_in_bytes
    + stats.output_size_in_bytes
    + stats.temp_size_in_bytes
    - stats.alias_size_in_bytes
  )


def _bf16_argument_bytes(args) -> int:
  """Bytes of the bfloat16 arguments one device holds (its shards).

  XLA:CPU multiplies bfloat16 in float32 and keeps float32 copies of bf16
  matmul operands (measured: a jitted bf16 (8, 4096) @ (4096, 4096) needs
  64 MiB of temporaries, a float32 one 0.1 MiB); GPUs and TPUs multiply
  bf16 natively. So up to twice the bf16 weights' bytes of the CPU figure
  are absent on an accelerator. Only parameters are counted: in the paper
  plan's decode step the temporaries (16.0 GB) match f32 copies of the
  weights (15.5 GB), not of the bf16 KV cache as well.
  """
  total = 0
  for x in jax.tree.leaves(args):
    if not isinstance(x, jax.ShapeDtypeStruct) or x.dtype != jnp.bfloat16:
      continue
    shape = x.shape if x.sharding is None else x.sharding.shard_shape(x.shape)
    total += math.prod(shape) * 2
  return total


def _flops(compiled) -> Optional[float]:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  if not cost or 'flops' not in cost:
    return None
  return float(cost['flops'])


def compile_stage(plan: StagePlan, mesh) -> tuple[Any, float]:
  """Lowers and compiles one stage's step; returns (compiled, seconds)."""
  import time

  t0 = time.perf_counter()
  compiled = plan.jitted.lower(*plan.args, **plan.kwargs).compile()
  return compiled, time.perf_counter() - t0


def plan_run(
  config: Any,
  mesh: jax.sharding.Mesh,
  *,
  stages: tuple[str, ...] = STAGES,
  flop_efficiency: float = DEFAULT_FLOP_EFFICIENCY,
  shard_params: bool = False,
  log: Callable[[str], None] = lambda _: None,
) -> dict:
  """Compiles each stage's step on `mesh` and projects the run's wall time.

  Returns:
    {'mesh': {...}, 'n_devices', 'flop_efficiency', 'accelerators': {name:
    {peak_flops, memory_bytes, source}}, 'stages': {stage: {
    'bytes_per_device' (+ 'argument_bytes', 'temp_bytes',
    'cpu_f32_copies_max_bytes': see `_bf16_argument_bytes`), 'flops' (per
    device, one call), 'calls',
    'projected_seconds' {accelerator: s}, 'fits' {accelerator: bool},
    'shapes', 'sharding', 'compile_seconds'}}}.
  """
  unknown = sorted(set(stages) - set(STAGES))
  if unknown:
    raise ValueError(f'Unknown stage(s) {unknown}; choose from {STAGES}')
  if not 0 < flop_efficiency <= 1:
    raise ValueError(f'flop_efficiency={flop_efficiency}: must be in (0, 1]')
  out = {
    'mesh': dict(mesh.shape),
    'n_devices': int(mesh.devices.size),
    'shard_params': shard_params,
    'flop_efficiency': flop_efficiency,
    'accelerators': {
      name: dataclasses.asdict(a) for name, a in ACCELERATORS.items()
    },
    'stages': {},
  }
  for plan in stage_plans(config, mesh, shard_params):
    if plan.name not in stages:
      continue
    compiled, seconds = compile_stage(plan, mesh)
    memory, flops = _memory_bytes(compiled), _flops(compiled)
    stats = compiled.memory_analysis()
    entry = {
      'bytes_per_device': memory,
      'argument_bytes': None if stats is None else stats.argument_size_in_bytes,
      'temp_bytes': None if stats is None else stats.temp_size_in_bytes,
      # Upper bound on XLA:CPU's float32 copies of the bf16 weights (they
      # are temporaries, so at most the temporaries).
      'cpu_f32_copies_max_bytes': min(
        2 * _bf16_argument_bytes([plan.args[i] for i in plan.param_args]),
        0 if stats is None else stats.temp_size_in_bytes,
      ),
      'flops': flops,
      'calls': plan.calls,
      'projected_seconds': {
        name: (
          None
          if flops is None
          else flops * plan.calls / (a.peak_flops * flop_efficiency)
        )
        for name, a in ACCELERATORS.items()
      },
      'fits': {
        name: None if memory is None else memory <= a.memory_bytes
        for name, a in ACCELERATORS.items()
      },
      'shapes': plan.shapes,
      'sharding': plan.sharding,
      'compile_seconds': round(seconds, 1),
    }
    out['stages'][plan.name] = entry
    log(f'{plan.name}: compiled in {seconds:.1f} s')
  return out


def format_table(result: dict) -> str:
  """A plain-text table of a `plan_run` result."""
  names = list(result['accelerators'])
  head = ['stage', 'GB/device', 'GB w/o f32 copies', 'GFLOP/call', 'calls'] + [
    f'{n} s' for n in names
  ]
  lines = [' | '.join(head)]
  for stage, e in result['stages'].items():
    gb = (
      '?'
      if e['bytes_per_device'] is None
      else f'{e["bytes_per_device"] / 1e9:.2f}'
    )
    gf = '?' if e['flops'] is None else f'{e["flops"] / 1e9:.1f}'
    lean = (
      '?'
      if e['bytes_per_device'] is None
      else f'{(e["bytes_per_device"] - e["cpu_f32_copies_max_bytes"]) / 1e9:.2f}'
    )
    cells = [stage, gb, lean, gf, f'{e["calls"]:g}']
    for n in names:
      s = e['projected_seconds'][n]
      fit = '' if e['fits'][n] in (None, True) else ' (no fit)'
      cells.append(('?' if s is None else f'{s:.3g}') + fit)
    lines.append(' | '.join(cells))
  return '\n'.join(lines)
