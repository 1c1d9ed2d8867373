r"""Benchmark: per-document LoRA gradients, gatoms_jax vs PyTorch + PEFT.

SmolLM2-135M-Instruct (the embedded GGUF, dequantised to fp32), LoRA r=8,
alpha=16 on q_proj/v_proj (d = 460,800), a "trained-like" adapter (A as PEFT
initialises it, B ~ N(0, b_std²) seeded: at B = 0 every lora_a gradient
vanishes). The same `n_docs` documents, whose real token lengths spread over
[min_len, max_len], go through, side by side in ONE process and interleaved
over `repeats` rounds (medians reported; the CPU may be shared):

  (a) jax         `GradientExtractor` with its own planning (default method,
                  packing, slabs); compile time measured separately.
  (b) torch_loop  the reference style: transformers' LlamaForCausalLM from the
                  same GGUF + a PEFT LoRA holding OUR A/B (transposed); one
                  document at a time at its own length, no padding: forward,
                  summed CE over the assistant tokens, backward.
  (c) torch_vmap  torch.func.vmap(grad) over the LoRA params
                  (functional_call) on length-sorted padded batches.
  (b') torch_loop_1thread  (b) with torch.set_num_threads(1): on a shared
                  CPU, OpenMP with all threads can be several times slower
                  than one thread, which would flatter (a); reported as a
                  robustness check, together with useful GFLOP per CPU-second
                  of every method.

Both torch paths score every position with the LM head, as the reference code
does. max_rel_err = max over documents of ‖g_jax − g_torch‖₂ / ‖g_torch‖₂
(per-document relative L2: downstream steps use rows through inner products
and cosines, and an elementwise relative error is meaningless on the many
near-zero entries).

flop_efficiency = useful FLOPs of (a) per second / the machine's fp32 matmul
rate (best of jnp and torch square matmuls, 1024–4096, best of several).
Useful FLOPs per document, with n = positions up to the last one whose logits
are scored (later tokens feed no loss), c = scored positions, P = Σ_layers
(q, k, v, o, gate, up, down) weights, matmul FLOPs only:
  forward   2·P·n + causal attention 4·H·e·n(n+1)/2 per layer
            + LM head 2·d·V·c + LoRA 2·n·(i·r + r·o) per module;
  backward  input gradients 2·P·n (minus layer 0's q/k/v, whose input
            gradient would only feed the frozen embedding) + attention
            2 × forward + LM head 2·d·V·c + LoRA input gradients and
            weight gradients 2 × 2·n·(i·r + r·o) per module.
Elementwise work (norms, softmax, RoPE) is not counted.

The generated task mixture's documents are 46–121 tokens long; to cover
64–256 tokens, consecutive mixture documents are joined into multi-turn chats
(user/assistant pairs, greedily chosen to approach evenly spaced target
lengths); the output says so in `docs_source`. The last line of stdout is one
JSON object.

  .venv/bin/python experiments/bench_gradients.py
  .venv/bin/python -m experiments.bench_gradients --repeats=5
"""

from __future__ import annotations

import functools
import json
import os
import resource
import statistics
import sys
import time

if __package__ in (None, ''):  # run as a script: make `gatoms_jax` importable
  sys.path.insert(
    0, os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  )

import numpy as np
from absl import app, flags, logging

from configs import common
from experiments import _bench

FLAGS = flags.FLAGS
flags.DEFINE_integer('n_docs', 32, 'Documents.')
flags.DEFINE_integer('min_len', 64, 'Shortest target document length.')
flags.DEFINE_integer('max_len', 256, 'Longest target document length.')
flags.DEFINE_integer('seed', 0, 'Mixture and LoRA seed.')
flags.DEFINE_float('b_std', 0.02, 'Std of the seeded random LoRA B.')
flags.DEFINE_integer('repeats', 3, 'Interleaved timing rounds (medians).')
flags.DEFINE_string('method', 'taps', 'gatoms_jax method: taps | vmap.')
flags.DEFINE_integer('tokens_per_slab', None, 'Extractor override.')
flags.DEFINE_integer('slabs_per_call', None, 'Extractor override.')
flags.DEFINE_integer('ladder_steps', None, 'Extractor override.')
flags.DEFINE_integer('torch_vmap_batch', 4, 'Documents per torch vmap call.')
flags.DEFINE_bool('skip_torch', False, 'Only time gatoms_jax (tuning).')
flags.DEFINE_bool('skip_torch_vmap', False, 'Skip (c).')
flags.DEFINE_bool(
  'torch_1thread',
  True,
  'Also time the torch loop with 1 thread: OpenMP with all threads degrades '
  'badly when other processes share the cores.',
)

flags.DEFINE_bool(
  'scan_layers',
  None,
  'The model runs its layers under lax.scan (else unrolled); default: the '
  "gradients stage's layout (configs/common.py gradients.scan_layers).",
)
flags.DEFINE_enum(
  'remat', 'dots', ['none', 'dots', 'full'], "The layers' remat policy."
)
flags.DEFINE_list(
  'matmul_sizes', ['1024', '2048', '4096'], 'Square matmuls for the rates.'
)
flags.DEFINE_list(
  'precisions',
  ['float32', 'bfloat16'],
  'Compared at equal precision: float32 (jax fp32 vs torch fp32) and '
  'bfloat16 (jax bf16 compute with fp32 accumulation vs torch autocast bf16).',
)

TARGETS = ('q_proj', 'v_proj')
RANK, ALPHA = 8, 16.0
# Per-document relative L2 error vs the torch fp32 loop that each precision
# must stay within: fp32 differs by summation order only (observed ~1e-5);
# bf16 keeps 8 significant bits, and over 30 layers the rows drift by a few
# % (the project's bf16 contract, tests/test_mixed.py).
REL_ERR_BOUND = {'float32': 1e-3, 'bfloat16': 0.25}


# ---------------------------------------------------------------------------
# Documents.


def build_documents(tokenizer, n_docs, min_len, max_len, seed):
  """n_docs chats with token lengths spread evenly over [min_len, max_len].

  Returns:
    (TokenizedDocs, source description).
  """
  from gatoms_jax.core.data.documents import Document, make_messages
  from gatoms_jax.demo.mixture import generate_mixture
  from gatoms_jax.core.data.tokenize import tokenize_documents

  pool = generate_mixture(max(400, 12 * n_docs), seed=seed)
  single, _ = tokenize_documents(pool, tokenizer, max_length=4096)
  by_id = {d.doc_id: d for d in pool}

  def joined(ids, doc_id='probe'):
    pairs = [(m['role'], m['content']) for i in ids for m in by_id[i].messages]
    return Document(
      doc_id=doc_id,
      messages=make_messages(pairs),
      label='+'.join(by_id[i].label for i in ids),
      source='joined:' + ','.join(ids),
    )

  # Joining two chats shares the template's preamble (system prompt): a
  # document adds (its length - preamble) tokens to a multi-turn chat.
  a, b = single[0], single[1]
  both, _ = tokenize_documents([joined([a.doc_id, b.doc_id])], tokenizer, 4096)
  preamble = a.length + b.length - both[0].length
  turn_len = {d.doc_id: d.length - preamble for d in single}
  longest = max(d.length for d in single)
  unused = [d.doc_id for d in single]
  out, joined_counts = [], []
  targets = np.linspace(min_len, max_len, n_docs)
  for j, target in enumerate(targets):
    room = int(target) - preamble
    chosen = []
    while True:
      fits = [i for i in unused if turn_len[i] <= room]
      if not fits:
        break
      best = max(fits, key=lambda i: turn_len[i])
      chosen.append(best)
      unused.remove(best)
      room -= turn_len[best]
    if not chosen:  # target below one document: take the shortest
      best = min(unused, key=lambda i: turn_len[i])
      chosen.append(best)
      unused.remove(best)
    out.append(joined(chosen, f'bench-{j:03d}'))
    joined_counts.append(len(chosen))
  tokenized, _ = tokenize_documents(out, tokenizer, max_length=4096)
  source = (
    f'generated mixture (seed {seed}): its documents are '
    f'{min(d.length for d in single)}-{longest} tokens, so each benchmark '
    f'document joins {min(joined_counts)}-{max(joined_counts)} mixture '
    'documents into one multi-turn chat (greedy fill towards evenly spaced '
    f'target lengths {min_len}-{max_len})'
  )
  return tokenized, source


# ---------------------------------------------------------------------------
# FLOPs and the machine's matmul rate.


def useful_flops(config, n_in: int, n_loss: int) -> float:
  """Matmul FLOPs a per-document gradient needs (module docstring)."""
  d, e = config.hidden_size, config.head_dim
  h, kv, f = config.num_heads, config.num_kv_heads, config.intermediate_size
  n_layers, vocab = config.num_layers, config.vocab_size
  qkv = d * h * e + 2 * d * kv * e
  per_layer = qkv + h * e * d + 3 * d * f
  lora = {'q_proj': d * RANK + RANK * h * e, 'v_proj': d * RANK + RANK * kv * e}
  lora_params = n_layers * sum(lora[t] for t in TARGETS)
  attention = n_layers * 4 * h * e * n_in * (n_in + 1) / 2
  head = 2 * d * vocab * n_loss
  forward = 2 * per_layer * n_layers * n_in + attention + head
  forward += 2 * n_in * lora_params
  backward = 2 * (per_layer * n_layers - qkv) * n_in + 2 * attention + head
  backward += 2 * 2 * n_in * lora_params
  return float(forward + backward)


def matmul_gflops(sizes, bf16: bool = False) -> dict:
  """Best square-matmul rate of jnp and torch (GFLOP/s): fp32, or bf16
  inputs with fp32 accumulation (jax: preferred_element_type; torch: its
  bf16 matmul, which accumulates in fp32)."""
  import jax
  import jax.numpy as jnp
  import torch

  best = {}
  for n in sizes:
    a = jnp.asarray(
      np.random.default_rng(0).standard_normal((n, n), np.float32)
    )
    ta = torch.from_numpy(np.asarray(a))
    if bf16:
      a, ta = a.astype(jnp.bfloat16), ta.to(torch.bfloat16)
      mm = jax.jit(lambda x: jnp.dot(x, x, preferred_element_type=jnp.float32))
    else:
      mm = jax.jit(lambda x: x @ x)
    mm(a).block_until_ready()
    t = min(_timed(lambda: mm(a).block_until_ready()) for _ in range(4))
    best[f'jax_{n}'] = 2 * n**3 / t / 1e9
    ta @ ta
    t = min(_timed(lambda: ta @ ta) for _ in range(4))
    best[f'torch_{n}'] = 2 * n**3 / t / 1e9
  return best


def _timed(fn) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def _cpu_seconds() -> float:
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime + r.ru_stime


# ---------------------------------------------------------------------------
# The three implementations.


def load_jax(seed, b_std, scan_layers=True, remat='dots'):
  from gatoms_jax.core.models import convert
  from gatoms_jax.core.models import lora as lora_lib
  from gatoms_jax.core.models.transformer import LoraConfig
  from gatoms_jax.core.models.transformer import set_layer_execution

  model = convert.load_model(
    'embedded', lora=LoraConfig(rank=RANK, alpha=ALPHA, targets=TARGETS)
  )
  set_layer_execution(model, scan_layers=scan_layers, remat=remat)
  mdef, base, lora = lora_lib.split(model)
  lora = lora_lib.init_lora(lora, seed, b_std=b_std)
  return mdef, base, lora


def load_torch(lora_tree):
  """transformers' GGUF SmolLM2 + PEFT LoRA holding our A/B (transposed)."""
  import peft
  import torch
  import transformers

  from gatoms_jax.core.models import lora as lora_lib
  from gatoms_jax.core.data.tokenizer import embedded_gguf_path

  path = embedded_gguf_path()
  model = transformers.AutoModelForCausalLM.from_pretrained(
    os.path.dirname(path),
    gguf_file=os.path.basename(path),
    torch_dtype=torch.float32,
  )
  model = peft.get_peft_model(
    model,
    peft.LoraConfig(
      r=RANK, lora_alpha=ALPHA, target_modules=list(TARGETS), lora_dropout=0.0
    ),
  )
  model.eval()
  params = dict(model.named_parameters())
  order = []  # torch parameter names in our flatten order
  with torch.no_grad():
    for path, leaf in lora_lib.lora_leaves(lora_tree):
      module, which = path.rsplit('.', 1)
      side = 'A' if which == 'lora_a' else 'B'
      name = f'base_model.model.model.{module}.lora_{side}.default.weight'
      params[name].copy_(torch.from_numpy(np.asarray(leaf).T.copy()))
      order.append(name)
  trainable = {n for n, p in params.items() if p.requires_grad}
  if trainable != set(order):
    raise AssertionError('PEFT trainable parameters differ from our LoRA tree')
  return model, order


torch_loop = _bench.torch_doc_loop


def make_torch_vmap(model, order, batch):
  """torch.func.vmap(grad) over the LoRA params on padded batches."""
  import torch
  from torch.func import functional_call, grad, vmap

  params = dict(model.named_parameters())
  lora = {n: params[n].detach() for n in order}

  def loss(lora_params, ids, mask):
    out = functional_call(model, lora_params, (ids[None],))
    logits = out.logits[0, :-1]
    logp = torch.log_softmax(logits, dim=-1)
    nll = -torch.gather(logp, 1, ids[1:, None])[:, 0]
    return (nll * mask[1:]).sum()

  per_example = vmap(grad(loss), in_dims=(None, 0, 0))

  def run(docs):
    order_idx = np.argsort([d.length for d in docs], kind='stable')
    rows = [None] * len(docs)
    for s in range(0, len(docs), batch):
      group = [int(i) for i in order_idx[s : s + batch]]
      width = max(docs[i].length for i in group)
      ids = np.zeros((len(group), width), np.int64)
      mask = np.zeros((len(group), width), np.float32)
      for r, i in enumerate(group):
        ids[r, : docs[i].length] = docs[i].tokens
        mask[r, : docs[i].length] = docs[i].loss_mask
      g = per_example(lora, torch.from_numpy(ids), torch.from_numpy(mask))
      flat = torch.cat(
        [g[n].transpose(1, 2).reshape(len(group), -1) for n in order], 1
      ).numpy()
      for r, i in enumerate(group):
        rows[i] = flat[r]
    return np.stack(rows)

  return run


# ---------------------------------------------------------------------------


def main(argv):
  del argv
  os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')
  import jax
  import torch

  from gatoms_jax.method import gradients as grads
  from gatoms_jax.core.data.tokenizer import load_tokenizer

  torch.set_num_threads(os.cpu_count())
  logging.info('jax %s on %s; torch %s with %d threads', jax.__version__,
               jax.devices(), torch.__version__, torch.get_num_threads())  # fmt: skip
  tokenizer = load_tokenizer('embedded')
  docs, source = build_documents(
    tokenizer, FLAGS.n_docs, FLAGS.min_len, FLAGS.max_len, FLAGS.seed
  )
  lengths = np.array([d.length for d in docs])
  n_loss = np.array([int(d.loss_mask[1:].sum()) for d in docs])
  logging.info('documents: %s; lengths %s', source, lengths.tolist())

  load_start = _bench.load_average()

  cpu_start = _bench.cpu_snapshot()
  out = {}
  precisions = list(FLAGS.precisions)
  unknown = set(precisions) - set(REL_ERR_BOUND)
  if unknown:
    raise app.UsageError(f'unknown precisions {sorted(unknown)}')
  sizes = [int(n) for n in FLAGS.matmul_sizes]
  rates = matmul_gflops(sizes)
  out['matmul_gflops'] = max(rates.values())
  out['matmul_rates'] = {k: round(v, 1) for k, v in rates.items()}
  if 'bfloat16' in precisions:
    rates = matmul_gflops(sizes, bf16=True)
    out['matmul_gflops_bf16'] = max(rates.values())
    out['matmul_rates_bf16'] = {k: round(v, 1) for k, v in rates.items()}

  scan_layers = FLAGS.scan_layers
  if scan_layers is None:
    scan_layers = common.base_config().gradients.scan_layers
  mdef, base, lora = load_jax(
    FLAGS.seed, FLAGS.b_std, scan_layers=scan_layers, remat=FLAGS.remat
  )
  kw = {'method': FLAGS.method}
  if FLAGS.tokens_per_slab:
    kw['tokens_per_slab'] = FLAGS.tokens_per_slab
  if FLAGS.slabs_per_call:
    kw['slabs_per_call'] = FLAGS.slabs_per_call
  if FLAGS.ladder_steps:
    kw['ladder_steps'] = FLAGS.ladder_steps
  suffix = {'float32': '', 'bfloat16': '_bf16'}
  extractors, runners, warm = {}, {}, {}
  for precision in precisions:
    extractor = grads.GradientExtractor(
      mdef, base, lora, compute_dtype=precision, **kw
    )
    extractors[precision] = extractor

    def jax_pass(extractor=extractor):
      # The stage's own loop: the next call is in flight while the rows of
      # the previous one are copied out.
      return extractor.gradients(docs)

    name = 'jax' + suffix[precision]
    warm[name] = _timed(jax_pass)
    logging.info('%s warm-up pass (with compilation) %.1fs', name, warm[name])
    runners[name] = jax_pass
  extractor = next(iter(extractors.values()))

  if not FLAGS.skip_torch:
    model, order = load_torch(lora)
    threads = torch.get_num_threads()
    for precision in precisions:
      bf16 = precision == 'bfloat16'
      name = 'torch_loop' + suffix[precision]
      runners[name] = functools.partial(
        torch_loop, model, order, docs, autocast=bf16
      )
      torch_loop(model, order, docs[:1], autocast=bf16)  # warm-up
    if FLAGS.torch_1thread and threads > 1:

      def one_thread():
        torch.set_num_threads(1)
        try:
          return torch_loop(model, order, docs)
        finally:
          torch.set_num_threads(threads)

      runners['torch_loop_1thread'] = one_thread
    if not FLAGS.skip_torch_vmap:
      vmap_run = make_torch_vmap(model, order, FLAGS.torch_vmap_batch)
      runners['torch_vmap'] = lambda: vmap_run(docs)
      vmap_run(docs[: FLAGS.torch_vmap_batch])  # warm-up

  times = {k: [] for k in runners}
  cpu = {k: [] for k in runners}
  results = {}
  for r in range(FLAGS.repeats):
    for name, fn in runners.items():
      c0 = _cpu_seconds()
      start = time.perf_counter()
      results[name] = fn()
      times[name].append(time.perf_counter() - start)
      cpu[name].append(_cpu_seconds() - c0)
      logging.info(
        'round %d %s: %.2fs (%.2f CPU-s)',
        r,
        name,
        times[name][-1],
        cpu[name][-1],
      )
  med = {k: statistics.median(v) for k, v in times.items()}
  for name, w in warm.items():
    out[f'{name}_compile_s'] = round(max(w - med[name], 0.0), 2)

  n = len(docs)
  ratios = {}
  for name in runners:
    out[f'{name}_docs_per_s'] = n / med[name]
  # The reference rows: torch's fp32 loop (else jax fp32).
  ref = results.get('torch_loop', results.get('jax'))
  out['rel_err_reference'] = (
    'torch_loop'
    if 'torch_loop' in results
    else 'jax'
    if ref is not None
    else None
  )

  def rel_errs(rows):
    return np.linalg.norm(rows - ref, axis=1) / np.linalg.norm(ref, axis=1)

  for precision in precisions:
    s = suffix[precision]
    jax_name, torch_name = 'jax' + s, 'torch_loop' + s
    ratios['speedup_vs_torch_loop' + s] = (
      med[torch_name] / med[jax_name] if torch_name in med else None
    )
    if ref is not None and results[jax_name] is not ref:
      err = rel_errs(results[jax_name])
      out['max_rel_err' + s] = float(err.max())
      out['median_rel_err' + s] = float(np.median(err))
      out['rel_err_bound' + s] = REL_ERR_BOUND[precision]
      out['within_bound' + s] = bool(err.max() <= REL_ERR_BOUND[precision])
    if torch_name in results and results[torch_name] is not ref:
      out['torch_max_rel_err' + s] = float(rel_errs(results[torch_name]).max())
  if 'jax' in med and 'jax_bf16' in med:
    ratios['jax_bf16_speedup_over_fp32'] = med['jax'] / med['jax_bf16']
  if 'torch_vmap' in results and 'jax' in med:
    ratios['speedup_vs_torch_vmap'] = med['torch_vmap'] / med['jax']
    out['torch_vmap_max_rel_err'] = float(rel_errs(results['torch_vmap']).max())

  config = mdef.config
  n_in = np.array(
    [int(np.nonzero(d.loss_mask[1:] > 0)[0][-1]) + 1 for d in docs]
  )
  flops = sum(
    useful_flops(config, int(a), int(c)) for a, c in zip(n_in, n_loss)
  )
  out['useful_gflop_per_pass'] = flops / 1e9
  for name in ('jax', 'jax_bf16'):
    if name in med:
      out[f'{name}_useful_gflops'] = flops / med[name] / 1e9
  if 'jax' in med:  # against the fp32 matmul rate
    out['flop_efficiency'] = out['jax_useful_gflops'] / out['matmul_gflops']
  if 'jax_bf16' in med:  # against the bf16 (fp32-accumulating) rate
    out['flop_efficiency_bf16'] = (
      out['jax_bf16_useful_gflops'] / out['matmul_gflops_bf16']
    )
  if 'torch_loop' in med:
    out['torch_loop_flop_efficiency'] = (
      flops / med['torch_loop'] / 1e9 / out['matmul_gflops']
    )
  if 'torch_loop_1thread' in med and 'jax' in med:
    out['torch_loop_1thread_docs_per_s'] = n / med['torch_loop_1thread']
    ratios['speedup_vs_torch_loop_1thread'] = (
      med['torch_loop_1thread'] / med['jax']
    )
  # Contention-robust: useful work per CPU-second each method consumed.
  out['useful_gflop_per_cpu_s'] = {
    k: round(flops / 1e9 / statistics.median(v), 1) for k, v in cpu.items()
  }
  out['seconds_median'] = {k: round(v, 3) for k, v in med.items()}
  out['seconds_all'] = {k: [round(x, 3) for x in v] for k, v in times.items()}
  out['cpu_seconds_median'] = {
    k: round(statistics.median(v), 3) for k, v in cpu.items()
  }
  out['n_docs'] = n
  out['doc_tokens'] = {
    'min': int(lengths.min()),
    'median': float(np.median(lengths)),
    'max': int(lengths.max()),
    'total': int(lengths.sum()),
    'loss_tokens': int(n_loss.sum()),
  }
  out['docs_source'] = source
  out['jax_config'] = {
    'method': extractor.method,
    'pack': extractor.pack,
    'tokens_per_slab': extractor.tokens_per_slab,
    'slabs_per_call': extractor.slabs_per_call,
    'ladder_steps': extractor.ladder_steps,
    'compiled_shapes': extractor.n_compiled_shapes,
    'devices': extractor.n_devices,
    'scan_layers': scan_layers,
    'remat': FLAGS.remat,
  }
  out['precisions'] = precisions
  out['torch_threads'] = torch.get_num_threads()
  _bench.finish_from_flags(out, ratios, load_start, cpu_start)
  print(json.dumps(out))


if __name__ == '__main__':
  app.run(main)
