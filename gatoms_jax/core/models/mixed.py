"""bf16 matmuls that really run in bf16: bf16 inputs, fp32 accumulation.

Why this exists (checked in the optimised HLO of jax 0.10 on XLA:CPU, see
/work/notes/peers.md): a plain `x @ w` with bf16 x and w and a bf16 result is
rewritten by XLA:CPU into convert(x)→f32, convert(w)→f32, an f32 dot and a
convert back, so a bf16 model runs the fp32 kernel plus three converts (it was
0.97× the fp32 speed). The same dot asked for an fp32 result
(`preferred_element_type=float32`) stays a bf16×bf16→f32 dot and runs on the
CPU's bf16 units (avx512_bf16 / AMX; 5× the fp32 rate at 2048×576×1536).

Autodiff of that dot is not enough: its cotangent is fp32, so the transposed
dots are f32×bf16 and fall back to fp32. `matmul` therefore has its own VJP
whose backward dots are again bf16×bf16→f32 (the cotangent is rounded to bf16
first, as torch autocast does), with the results rounded to the input dtypes.

fp32 inputs (or mixed dtypes) take the plain `x @ w` path, so fp32 models
compute bit-for-bit what they did before this module existed.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

Array = jax.Array

_LOW = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def _contract_last_first(x: Array, w: Array) -> Array:
  """x (..., i) · w (i, o) → (..., o) in fp32."""
  return jax.lax.dot_general(
    x,
    w,
    (((x.ndim - 1,), (0,)), ((), ())),
    preferred_element_type=jnp.float32,
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _low_matmul(x: Array, w: Array, out_dtype) -> Array:
  return _contract_last_first(x, w).astype(out_dtype)


def _low_matmul_fwd(x, w, out_dtype):
  return _low_matmul(x, w, out_dtype), (x, w)


def _low_matmul_bwd(out_dtype, res, g):
  x, w = res
  g = g.astype(x.dtype)
  # dx = g wᵀ: contract g's last axis with w's last axis.
  dx = jax.lax.dot_general(
    g, w, (((g.ndim - 1,), (1,)), ((), ())), preferred_element_type=jnp.float32
  ).astype(x.dtype)
  # dw = Σ_rows xᵀ g over every leading axis. Callers that differentiate
  # only activations (frozen weights) never use it and XLA removes it.
  lead = tuple(range(x.ndim - 1))
  dw = jax.lax.dot_general(
    x, g, ((lead, lead), ((), ())), preferred_element_type=jnp.float32
  ).astype(w.dtype)
  return dx, dw


_low_matmul.defvjp(_low_matmul_fwd, _low_matmul_bwd)


def is_low_precision(*arrays: Array) -> bool:
  """True when every array is bf16 (or fp16) of one dtype."""
  dtypes = {jnp.dtype(a.dtype) for a in arrays}
  return len(dtypes) == 1 and dtypes.pop() in _LOW


def matmul(x: Array, w: Array, *, fp32_out: bool = False) -> Array:
  """x (..., i) @ w (i, o).

  bf16 x and w: a bf16×bf16 dot accumulated in fp32, rounded to bf16 (or
  kept in fp32 with `fp32_out`, e.g. for logits), forward and backward.
  Anything else: exactly `x @ w`.
  """
  if w.ndim != 2 or x.ndim < 1 or x.shape[-1] != w.shape[0]:
    raise ValueError(
      f'matmul needs x (..., i) and w (i, o); got {x.shape} and {w.shape}'
    )
  if is_low_precision(x, w):
    return _low_matmul(x, w, jnp.float32 if fp32_out else x.dtype)
  return x @ w


def matmul_transposed(x: Array, w: Array, *, fp32_out: bool = False) -> Array:
  """x (..., i) @ w (o, i)ᵀ (e.g. a tied LM head over the embedding table).

  bf16 x and w: as `matmul`. Anything else: exactly
  `jnp.einsum('...i,oi->...o', x, w)`.
  """
  if w.ndim != 2 or x.ndim < 1 or x.shape[-1] != w.shape[1]:
    raise ValueError(
      f'matmul_transposed needs x (..., i) and w (o, i); got {x.shape} and '
      f'{w.shape}'
    )
  if is_low_precision(x, w):
    return _low_matmul(x, w.T, jnp.float32 if fp32_out else x.dtype)
  return jnp.einsum('...i,oi->...o', x, w)
