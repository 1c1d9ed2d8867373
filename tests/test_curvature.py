"""Tests for gatoms_jax.method.curvature (EK-FAC factors, eigensolver, correction).

The factor pass gets its output gradients s from zero probes added to every
LoRA output (`LoraTaps`). The brute-force references here avoid that trick:

  * module inputs x are recomputed layer by layer from the model's own
    sub-modules (norms, attention, MLP), without taps;
  * output gradients come from the plain (untapped) model's gradient w.r.t.
    the frozen base kernel W of the adapted Linear: ∂L/∂W = Xᵀ Γ with X the
    (T × i) inputs of one document and Γ (T × o) the per-token gradients
    ∂L/∂y_t of the Linear's output. With T < i the rows of X are independent,
    so Γ = (X Xᵀ)⁻¹ X ∂L/∂W exactly. Then s_t(lora_b) = scale·Γ_t and
    s_t(lora_a) = scale·Γ_t Bᵀ, and the lora_b input is h_t = x_t A.

The true Fisher is checked statistically against E_y[s sᵀ] computed exactly
from the softmax (Σ_t' J_t'ᵀ (diag p − p pᵀ) J_t') on a model whose
predictions are peaked, so that it differs clearly from the empirical Fisher.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized

from gatoms_jax.method import curvature, gradients as grads
from gatoms_jax.core import sharding
from gatoms_jax.core import store as store_lib
from gatoms_jax.core.losses import token_nll
from gatoms_jax.core.models import config as config_lib
from gatoms_jax.core.models import lora as lora_lib
from gatoms_jax.core.models.transformer import LoraConfig, LoraTaps

TARGETS = ('q_proj', 'v_proj', 'down_proj')


@functools.lru_cache(maxsize=None)
def _model(family: str):
  """(mdef, base, lora, lora_config) of a tiny random model, cached.

  Tied embeddings are scaled ×20 so that predictions are peaked (max p 0.2–0.9,
  not one-hot): the true and empirical Fisher then differ clearly. One cached
  model per family, and one batch shape per test kind, keep the number of
  XLA compilations (the bulk of this file's run time) small.
  """
  lcfg = LoraConfig(rank=4, alpha=8.0, targets=TARGETS)
  if family == 'gemma3':  # 2 layers: one sliding, one full attention
    config = config_lib.tiny_gemma3(num_layers=2, sliding_window_pattern=2)
  else:
    config = config_lib.tiny_llama()
  model = lora_lib.make_model(config, lcfg, seed=1)
  model.embed_tokens[...] = model.embed_tokens[...] * 20.0
  mdef, base, lora = lora_lib.split(model)
  # b_std > 0: at PEFT's B = 0 every lora_a output gradient would be zero.
  lora = lora_lib.init_lora(lora, seed=2, b_std=0.1)
  return mdef, base, lora, lcfg


def _batch(lengths, width, seed=0, vocab=256):
  """Right-padded random docs; some have real tokens after the last loss token.

  Returns:
    tokens (b, width) int32, loss_mask (b, width), valid (b, width) float32.
  """
  rng = np.random.default_rng(seed)
  b = len(lengths)
  tokens = np.zeros((b, width), np.int32)
  mask = np.zeros((b, width), np.float32)
  valid = np.zeros((b, width), np.float32)
  for row, n in enumerate(lengths):
    tokens[row, :n] = rng.integers(1, vocab, n)
    trailing = row % 2  # odd rows end with one real non-loss token
    mask[row, 3 : n - trailing] = 1.0
    valid[row, :n] = 1.0
  return tokens, mask, valid


# The shared factor-pass batch: 6 docs of 7–13 tokens in width 16.
LENGTHS, WIDTH = (10, 13, 7, 12, 9, 11), 16


def _one_device_mesh(axis=sharding.DATA_AXIS):
  return sharding.make_mesh(axis, jax.devices()[:1])


# ---------------------------------------------------------------------------
# Brute-force reference (no probes).


def _module_inputs(model, config, tokens):
  """Inputs x (b, t, i) of every adapted Linear, recomputed by hand."""
  b, t = tokens.shape
  positions = jnp.broadcast_to(jnp.arange(t), (b, t))
  valid = jnp.ones((b, t), bool)
  x = model.embed(tokens)
  xs = {}
  for l, layer in enumerate(model.layers):
    xn = layer.input_layernorm(x)
    for name in ('q_proj', 'k_proj', 'v_proj'):
      xs[f'layers.{l}.self_attn.{name}'] = xn
    h, _ = layer.self_attn(xn, positions, valid, None, None, None)
    if config.sandwich_norms:
      x = x + layer.post_attention_layernorm(h)
      xm = layer.pre_feedforward_layernorm(x)
    else:
      x = x + h
      xm = layer.post_attention_layernorm(x)
    gate = layer.mlp.gate_proj(xm)
    if config.activation == 'silu':
      gate = jax.nn.silu(gate)
    else:
      gate = jax.nn.gelu(gate, approximate=True)
    xs[f'layers.{l}.mlp.down_proj'] = gate * layer.mlp.up_proj(xm)
    out = layer.mlp(xm, None)
    x = x + (
      layer.post_feedforward_layernorm(out) if config.sandwich_norms else out
    )
  return xs


@functools.partial(jax.jit, static_argnums=0)
def _reference_parts(mdef, base, lora, tokens, loss_mask):
  """Per-doc module inputs x and base-kernel gradients ∂L_doc/∂W (untapped).

  Returns:
    ({module: x (b, t, i)}, {module: ∂L_doc/∂W (b, i, o)}).
  """
  flat, treedef = jax.tree_util.tree_flatten_with_path(base)
  paths = [lora_lib.path_str(p) for p, _ in flat]
  values = [v for _, v in flat]
  modules = lora_lib.lora_modules(lora)
  # Differentiate only the adapted modules' kernels (a smaller backward pass).
  chosen = [paths.index(f'{m}.kernel') for m in modules]

  def doc_loss(kernels, tok, lm):
    vals = list(values)
    for k, w in zip(chosen, kernels):
      vals[k] = w
    model = lora_lib.merge(
      mdef, jax.tree_util.tree_unflatten(treedef, vals), lora
    )
    logits = model(tok[None])[0, :-1]
    return jnp.sum(token_nll(logits, tok[1:]) * lm[1:])

  kernel_grads = jax.vmap(jax.grad(doc_loss), in_axes=(None, 0, 0))(
    [values[k] for k in chosen], tokens, loss_mask
  )
  model = lora_lib.merge(mdef, base, lora)
  xs = _module_inputs(model, mdef.config, tokens)
  return {m: xs[m] for m in modules}, dict(zip(modules, kernel_grads))


def brute_force_factors(mdef, base, lora, lcfg, tokens, loss_mask, weights):
  """A_m, S_m (float64) and the token count, without the probe trick."""
  xs, kernel_grads = _reference_parts(mdef, base, lora, tokens, loss_mask)
  leaves = {p: np.asarray(x, np.float64) for p, x in lora_lib.lora_leaves(lora)}
  a_cov, s_cov = {}, {}
  for module in lora_lib.lora_modules(lora):
    a, b = leaves[f'{module}.lora_a'], leaves[f'{module}.lora_b']
    x_all = np.asarray(xs[module], np.float64)
    d_all = np.asarray(kernel_grads[module], np.float64)
    for doc in range(tokens.shape[0]):
      # Positions after the doc's real tokens have zero output gradient
      # (causal model, no loss there): the doc's real rows carry all of ∂L/∂W.
      n = int(np.max(np.nonzero(tokens[doc])[0])) + 1
      x = x_all[doc, :n]
      gamma = np.linalg.solve(x @ x.T, x @ d_all[doc])  # (n, o) = ∂L/∂y_t
      s_b = lcfg.scale * gamma
      s_a = s_b @ b.T
      h = x @ a
      w = weights[doc, :n, None]
      for side, inp, out in (('a', x, s_a), ('b', h, s_b)):
        leaf = f'{module}.lora_{side}'
        a_cov[leaf] = a_cov.get(leaf, 0.0) + (w * inp).T @ inp
        s_cov[leaf] = s_cov.get(leaf, 0.0) + (w * out).T @ out
  count = float(weights.sum())
  return (
    {k: v / count for k, v in a_cov.items()},
    {k: v / count for k, v in s_cov.items()},
    count,
  )


def _rel(x, y):
  """Max-abs error relative to the reference's largest entry."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  return float(np.max(np.abs(x - y)) / max(np.max(np.abs(y)), 1e-30))


def _fro_rel(x, y):
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  return float(np.linalg.norm(x - y) / np.linalg.norm(y))


class ScopeWeightsTest(absltest.TestCase):
  def test_scopes(self):
    #            pos 0  1  2  3  4  5
    loss_mask = np.array([[0, 0, 1, 1, 0, 0]], np.float32)
    valid = np.array([[1, 1, 1, 1, 1, 0]], np.float32)
    np.testing.assert_array_equal(
      curvature.scope_weights(loss_mask, 'loss'), [[0, 1, 1, 0, 0, 0]]
    )
    np.testing.assert_array_equal(
      curvature.scope_weights(loss_mask, 'all', valid), valid
    )
    # Without `valid`: every position up to and including the last loss token.
    np.testing.assert_array_equal(
      curvature.scope_weights(loss_mask, 'all'), [[1, 1, 1, 1, 0, 0]]
    )


class FactorsTest(parameterized.TestCase):
  @parameterized.named_parameters(
    ('llama_loss', 'llama', 'loss'),
    ('llama_all', 'llama', 'all'),
    ('gemma3_all', 'gemma3', 'all'),
  )
  def test_empirical_factors_match_brute_force(self, family, scope):
    mdef, base, lora, lcfg = _model(family)
    tokens, mask, valid = _batch(LENGTHS, WIDTH)
    acc = curvature.FactorAccumulator(
      mdef, base, lora, fisher='empirical', token_scope=scope,
      mesh=_one_device_mesh(),
    )  # fmt: skip
    # Two updates (docs 0–2, then 3–5; the other rows get zero weight, which
    # keeps one batch shape) must accumulate like one pass.
    first = (np.arange(len(LENGTHS)) < 3)[:, None].astype(np.float32)
    for keep in (first, 1.0 - first):
      acc.update(tokens, mask * keep, valid * keep)
    factors = acc.finalize()
    weights = curvature.scope_weights(mask, scope, valid)
    ref_a, ref_s, count = brute_force_factors(
      mdef, base, lora, lcfg, tokens, mask, weights
    )
    self.assertEqual(factors.n_tokens, count)
    self.assertEqual(sorted(factors.modules), sorted(ref_a))
    for leaf in ref_a:
      # fp32 forward/backward vs an fp64 solve of a well-conditioned (cond(X)
      # < 10) T×T system: observed ≤ 2e-6; 1e-4 leaves room for other BLAS.
      self.assertLess(_rel(factors.a_cov[leaf], ref_a[leaf]), 1e-4, leaf)
      self.assertLess(_rel(factors.s_cov[leaf], ref_s[leaf]), 1e-4, leaf)
      self.assertGreater(np.abs(ref_s[leaf]).max(), 0.0, leaf)

  def test_fit_factors_uses_batch_valid(self):
    mdef, base, lora, _ = _model('llama')
    tokens, mask, valid = _batch(LENGTHS, WIDTH)

    class Batch:
      pass

    with_valid, without = Batch(), Batch()
    with_valid.tokens = without.tokens = tokens
    with_valid.loss_mask = without.loss_mask = mask
    with_valid.valid = valid
    kw = dict(
      fisher='empirical', token_scope='all', mesh=_one_device_mesh(),
      progress=False,
    )  # fmt: skip
    a = curvature.fit_factors(mdef, base, lora, [with_valid], **kw)
    b = curvature.fit_factors(mdef, base, lora, [without], **kw)
    self.assertEqual(a.n_tokens, valid.sum())
    # Odd rows have one real token after their last loss token: without
    # `valid` those 3 tokens are (knowingly) missed.
    self.assertEqual(b.n_tokens, valid.sum() - 3)


class TrueFisherTest(absltest.TestCase):
  def test_true_fisher_matches_softmax_expectation(self):
    # Peaked predictions and random data labels: the empirical Fisher is far
    # from the true one, so sampling the wrong labels (data, argmax, shifted
    # logits) fails the tolerance below.
    mdef, base, lora, _ = _model('llama')
    tokens, mask, _ = _true_fisher_batch()
    t = tokens.shape[1]
    weights = curvature.scope_weights(mask, 'loss')

    @jax.jit
    def exact(tok):
      """Per probe position t: the exact E_y[s sᵀ], the empirical s sᵀ, a aᵀ.

      E_y[s_t s_tᵀ] = Σ_p J_ptᵀ (diag p_p − p_p p_pᵀ) J_pt with J_pt =
      ∂logits_p/∂o_t (labels at different positions are independent).
      """
      probes = curvature._zero_probes(mdef, lora, 1, t, jnp.float32)

      def logits_fn(probes):
        model = lora_lib.merge(mdef, base, lora)
        taps = LoraTaps(probes, record=True)
        hidden, _ = model.hidden_states(tok[None], taps=taps)
        return model.logits(hidden)[0, :-1], taps.record  # every p scored

      logits, record = logits_fn(probes)
      prob = jax.nn.softmax(logits)
      cov = jax.vmap(jnp.diag)(prob) - prob[:, :, None] * prob[:, None, :]
      resid = prob - jax.nn.one_hot(tok[1:], prob.shape[-1])  # data labels
      jac = jax.jacrev(lambda p: logits_fn(p)[0])(probes)  # (t-1, v, 1, t, ·)
      s_true, s_emp, a_out = {}, {}, {}
      for module, sides in jac.items():
        for side, j in sides.items():
          leaf = f'{module}.lora_{side}'
          j = j[:, :, 0]
          s_true[leaf] = jnp.einsum('pvti,pvw,pwtj->tij', j, cov, j)
          s = jnp.einsum('pvti,pv->ti', j, resid)
          s_emp[leaf] = s[:, :, None] * s[:, None, :]
          x = record[module][f'{side}_in'][0]
          a_out[leaf] = x[:, :, None] * x[:, None, :]
      return s_true, s_emp, a_out

    refs = [{}, {}, {}]
    for doc in range(3):
      for ref, per_pos in zip(refs, exact(tokens[doc])):
        for leaf, v in per_pos.items():
          v = np.einsum('t,tij->ij', weights[doc], np.asarray(v, np.float64))
          ref[leaf] = ref.get(leaf, 0.0) + v / weights[:3].sum()
    s_true, s_emp, a_ref = refs

    acc = curvature.FactorAccumulator(
      mdef, base, lora, fisher='true', token_scope='loss',
      mesh=_one_device_mesh(), seed=5,
    )  # fmt: skip
    for _ in range(TRUE_FISHER_UPDATES):  # fresh labels per update (fold_in)
      acc.update(tokens, mask)
    sampled = acc.finalize()
    for leaf, ref in s_true.items():
      mc_err = _fro_rel(sampled.s_cov[leaf], ref)
      # Monte-Carlo error with 1600 draws per doc: observed ≤ 4.4% over the
      # leaves (it shrinks as 1/√draws: 18%, 9.5%, 6.2%, 4.4% at 160…1600
      # draws); 10% is > 2× that.
      self.assertLess(mc_err, 0.10, leaf)
      # The empirical Fisher is ≥ 75% away (so this test can fail).
      self.assertGreater(_fro_rel(s_emp[leaf], ref), 0.5, leaf)
      # Labels do not enter A; fp32 sums in another order only.
      self.assertLess(_rel(sampled.a_cov[leaf], a_ref[leaf]), 1e-4, leaf)


# 3 full-length docs of 8 tokens, all positions scored, tiled 32× per batch:
# with 50 updates, 1600 label draws per doc. Also used by ShardingTest so the
# true-Fisher factor pass compiles once per mesh.
TRUE_FISHER_UPDATES = 50


def _true_fisher_batch():
  tokens, mask, valid = _batch([8, 8, 8], 8, seed=3)
  mask[:, 1:] = 1.0
  tile = lambda x: np.tile(x, (32, 1))
  return tile(tokens), tile(mask), tile(valid)


class EigenvalueCorrectionTest(absltest.TestCase):
  def test_lambda_is_exact_fisher_diagonal_in_eigenbasis(self):
    mdef, base, lora, _ = _model('llama')
    tokens, mask, valid = _batch(LENGTHS, WIDTH)
    mesh = _one_device_mesh()
    acc = curvature.FactorAccumulator(
      mdef, base, lora, fisher='empirical', token_scope='loss', mesh=mesh
    )
    acc.update(tokens, mask, valid)
    factors = curvature.eigendecompose(
      acc.finalize(), _one_device_mesh(sharding.MODULE_AXIS)
    )
    layout = store_lib.layout_from_tree(lora)
    # Per-doc gradients G_i as the pipeline computes them (grads.py).
    rows = grads.GradientExtractor(mdef, base, lora, mesh=mesh)(tokens, mask)
    self.assertEqual(rows.shape, (len(LENGTHS), store_lib.layout_dim(layout)))
    offsets = np.cumsum([0] + [leaf.size for leaf in layout])

    ids = [f'doc{i}' for i in range(len(rows))]
    chunks = [(ids[:4], rows[:4]), (ids[4:], rows[4:])]  # streamed in 2 chunks
    factors = curvature.correct_eigenvalues(
      factors, chunks, layout, mesh=mesh, progress=False
    )
    self.assertEqual(factors.n_corrected_docs, len(rows))
    for n, leaf in enumerate(layout):
      g = rows[:, offsets[n] : offsets[n + 1]].astype(np.float64)
      fisher = g.T @ g / len(g)  # exact (i·o)² empirical Fisher of the leaf
      # Row-major vec: vec(Q_Aᵀ G Q_S) = (Q_A ⊗ Q_S)ᵀ vec(G).
      k = np.kron(
        np.asarray(factors.q_a[leaf.path], np.float64),
        np.asarray(factors.q_s[leaf.path], np.float64),
      )
      diag = np.einsum('ij,ik,kj->j', k, fisher, k).reshape(leaf.shape)
      # fp32 rotation and squares vs fp64: observed ≤ 1e-5 of the max entry.
      self.assertLess(_rel(factors.corrected[leaf.path], diag), 1e-4, leaf.path)
      # The rotation is orthogonal: Σ Λ = tr F (catches a dropped block).
      np.testing.assert_allclose(
        factors.corrected[leaf.path].sum(), np.trace(fisher), rtol=1e-4
      )

  def test_row_width_mismatch_raises(self):
    factors = _synthetic_factors(
      np.random.default_rng(0), [('m.lora_a', (4, 2))]
    )
    with self.assertRaisesRegex(curvature.CurvatureError, 'width 8'):
      curvature.correct_eigenvalues(
        factors, [(['x'], np.zeros((1, 9)))], [('m.lora_a', (4, 2))],
        mesh=_one_device_mesh(), progress=False,
      )  # fmt: skip


# ---------------------------------------------------------------------------
# Sharding and the eigensolver.


def _spd(rng, n, spread=True):
  """A symmetric PD matrix with well-separated eigenvalues (gaps ≥ 10%)."""
  q, _ = np.linalg.qr(rng.standard_normal((n, n)))
  vals = 1.2 ** np.arange(n) if spread else rng.uniform(0.1, 1.0, n)
  rng.shuffle(vals)
  return (q * vals) @ q.T, np.sort(vals)


def _synthetic_factors(rng, leaves):
  a_cov, s_cov = {}, {}
  for path, (i, o) in leaves:
    a_cov[path] = _spd(rng, i)[0]
    s_cov[path] = _spd(rng, o)[0]
  factors = curvature.Factors(a_cov, s_cov, 100.0, 'empirical', 'loss')
  return curvature.eigendecompose(
    factors, _one_device_mesh(sharding.MODULE_AXIS)
  )


class ShardingTest(parameterized.TestCase):
  @parameterized.parameters('empirical', 'true')
  def test_factor_pass_sharded_equals_one_device(self, fisher):
    mdef, base, lora, _ = _model('llama')
    if fisher == 'empirical':  # 6 docs: padded to 8 rows on 4 devices
      tokens, mask, valid = _batch(LENGTHS, WIDTH)
    else:  # 96 rows (the true-Fisher test's batch, compiled once per mesh)
      tokens, mask, valid = _true_fisher_batch()
    out = []
    for mesh in (_one_device_mesh(), sharding.make_mesh()):
      acc = curvature.FactorAccumulator(
        mdef, base, lora, fisher=fisher, token_scope='all', mesh=mesh, seed=3
      )
      acc.update(tokens, mask, valid)
      out.append(acc.finalize())
    self.assertEqual(sharding.axis_size(sharding.make_mesh(), 'data'), 4)
    one, four = out
    self.assertEqual(one.n_tokens, four.n_tokens)
    for leaf in one.modules:
      # Same math, per-device partial sums added in another order: fp32
      # rounding (observed ≤ 1e-6). For 'true' this also needs the same
      # sampled labels on every layout (threefry-partitionable sampling).
      self.assertLess(_rel(four.a_cov[leaf], one.a_cov[leaf]), 1e-5, leaf)
      self.assertLess(_rel(four.s_cov[leaf], one.s_cov[leaf]), 1e-5, leaf)

  def test_eigh_sharded_equals_numpy(self):
    rng = np.random.default_rng(0)
    # 5 + 3 + 1 matrices of three sizes: every bucket needs identity padding.
    matrices, true_vals = {}, {}
    for size, count in ((24, 5), (8, 3), (4, 1)):
      for k in range(count):
        name = f'layers.{k}.q_proj.lora_a/{size}'
        matrices[name], true_vals[name] = _spd(rng, size)
    # A bitwise duplicate (as q/v lora_a A factors of one layer are) is
    # solved once and must get the same, separately owned, result.
    matrices['dup'] = matrices['layers.0.q_proj.lora_a/24'].copy()
    true_vals['dup'] = true_vals['layers.0.q_proj.lora_a/24']
    mesh = sharding.make_mesh(sharding.MODULE_AXIS)
    self.assertEqual(mesh.shape[sharding.MODULE_AXIS], 4)
    solved = curvature.batched_eigh(matrices, mesh)
    twin = solved['layers.0.q_proj.lora_a/24']
    np.testing.assert_array_equal(solved['dup'][0], twin[0])
    np.testing.assert_array_equal(solved['dup'][1], twin[1])
    self.assertIsNot(solved['dup'][1], twin[1])
    single = curvature.batched_eigh(
      matrices, _one_device_mesh(sharding.MODULE_AXIS)
    )
    self.assertEqual(list(solved), list(matrices))
    for name, m in matrices.items():
      ref_vals, ref_vecs = np.linalg.eigh(m)
      vals, vecs = solved[name]
      # fp32 eigh of a matrix with norm ≤ 1.2^23 ≈ 66: absolute error ~1e-5.
      np.testing.assert_allclose(
        vals, ref_vals, rtol=1e-4, atol=1e-4 * ref_vals[-1]
      )
      np.testing.assert_allclose(ref_vals, true_vals[name], rtol=1e-10)
      # Eigenvectors are unique up to sign for separated eigenvalues (gaps
      # ≥ 20% of λ, so perturbation ~1e-6/gap): |Q1ᵀQ2| = I.
      overlap = np.abs(ref_vecs.T @ vecs.astype(np.float64))
      np.testing.assert_allclose(overlap, np.eye(len(m)), atol=1e-3)
      # Sharded vs one device: the same per-matrix solver (bitwise expected;
      # 1e-6 allows for a different vectorised code path).
      np.testing.assert_allclose(vals, single[name][0], rtol=1e-6, atol=1e-6)
      np.testing.assert_allclose(
        np.abs(vecs.T @ single[name][1]), np.eye(len(m)), atol=1e-5
      )

  def test_correction_sharded_equals_one_device(self):
    rng = np.random.default_rng(1)
    leaves = [
      ('l0.lora_a', (8, 4)),
      ('l0.lora_b', (4, 6)),
      ('l1.lora_a', (8, 4)),
    ]
    d = sum(i * o for _, (i, o) in leaves)
    rows = rng.standard_normal((10, d)).astype(np.float32)
    ids = [str(i) for i in range(10)]
    out = []
    for mesh in (_one_device_mesh(), sharding.make_mesh()):
      factors = _synthetic_factors(np.random.default_rng(2), leaves)
      chunks = [(ids[:7], rows[:7]), (ids[7:], rows[7:])]  # 7 → padded to 8
      out.append(
        curvature.correct_eigenvalues(
          factors, chunks, leaves, mesh=mesh, progress=False
        )
      )
    for path, _ in leaves:
      # fp32 sums in a different order: ≤ 1e-6 relative observed.
      self.assertLess(
        _rel(out[1].corrected[path], out[0].corrected[path]), 1e-5
      )
    self.assertEqual(out[1].n_corrected_docs, 10)


class NanGuardTest(parameterized.TestCase):
  @parameterized.parameters(np.nan, np.inf)
  def test_non_finite_factor_names_module(self, bad):
    rng = np.random.default_rng(0)
    factors = curvature.Factors(
      a_cov={'layers.1.self_attn.v_proj.lora_b': _spd(rng, 4)[0]},
      s_cov={'layers.1.self_attn.v_proj.lora_b': _spd(rng, 6)[0]},
      n_tokens=10.0,
      fisher='empirical',
      token_scope='loss',
    )
    factors.s_cov['layers.1.self_attn.v_proj.lora_b'][2, 3] = bad
    with self.assertRaisesRegex(
      curvature.CurvatureError, r'layers\.1\.self_attn\.v_proj\.lora_b'
    ):
      curvature.eigendecompose(
        factors, sharding.make_mesh(sharding.MODULE_AXIS)
      )


if __name__ == '__main__':
  absltest.main()
