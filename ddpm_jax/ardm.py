"""Order-agnostic Autoregressive Diffusion Models (Hoogeboom et al. 2021) for discrete data.

Data are integer arrays x [B, ...] with values in {0, …, K-1} and D = prod(shape[1:]) dimensions
(pixels, or the sub-pixels of an image: each channel is its own variable). A random order σ is given
per example as `rank` [B, ...], a permutation of 0..D-1: the variable of rank r is generated at step
r + 1. With t variables known (those of rank < t), the network predicts every unknown one:

  logits_fn(x, known, t) -> logits [B, ..., K]     x [B, ...] int (unknown entries arbitrary),
                                                    known [B, ...] bool, t [B] int, the number of
                                                    known variables

The log-likelihood bound over orders is log p(x) ≥ E_σ Σ_{t=0}^{D-1} log p(x_σ(t+1) | x_σ(≤t)); its
one-step
estimate (eq. 5) is  L = -D/(D - t) Σ_{k unknown} log p(x_k | x_known),  t ~ U{0, …, D-1},
unbiased.

Sampling generates the variables in a random order, all of one step in parallel from one network
call; with a budget of S ≤ D steps the sizes of the steps are chosen by dynamic programming over the
per-step losses (`parallel_decoding_plan`, ARDM §3.2).

Upscale ARDMs (ARDM §4, bit upscaling): x of `num_bits` bits is generated in S = num_bits / k stages
of k bits each, most significant first. Stage s (0, …, S-1) is an order-agnostic ARDM over the D
digits d_s = (x >> (num_bits - k (s+1))) mod 2^k given the coarser x^(s) = x >> (num_bits - k s) of
every variable, so that

  log p(x) = Σ_s log p(d_s | x^(s)) ≥ Σ_s E_σ Σ_t log p(d_s,σ(t+1) | d_s,σ(≤t), x^(s)),

  logits_fn(d, known, t, coarse, stage) -> logits [B, ..., 2^k]   (coarse = x^(s) [B, ...] int,
                                                                   stage [B] int)
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ddpm_jax import losses

Array = jax.Array
LogitsFn = Callable[[Array, Array, Array], Array]


def _num_dims(shape) -> int:
  return math.prod(shape[1:])


def random_order(rng: Array, shape) -> Array:
  """rank [B, ...]: an independent uniformly random permutation of 0..D-1 per example."""
  keys = jax.random.uniform(rng, (shape[0], _num_dims(shape)))
  return jnp.argsort(jnp.argsort(keys, axis=-1), axis=-1).reshape(shape).astype(jnp.int32)


def log_probs_of_data(logits_fn: LogitsFn, x: Array, known: Array, t: Array) -> Array:
  """log p(x_k | x_known) of every variable k [B, ...] (the known ones included; callers mask)."""
  logits = logits_fn(jnp.where(known, x, 0), known, t)
  return jnp.take_along_axis(jax.nn.log_softmax(logits), x[..., None], axis=-1)[..., 0]


def loss_at(logits_fn: LogitsFn, x: Array, t: Array, rank: Array) -> Array:
  """The estimate -D/(D - t) Σ_{rank ≥ t} log p(x_k | x_{rank < t}) in nats [B], at given t [B] and
  orders."""
  num_dims = _num_dims(x.shape)
  known = rank < losses.expand_to(t, rank)
  log_p = log_probs_of_data(logits_fn, x, known, t)
  return -num_dims / (num_dims - t) * losses.sum_flat(jnp.where(known, 0.0, log_p))


def random_step(t_rng: Array, order_rng: Array, shape) -> tuple[Array, Array]:
  """The one-step estimate's draws: t ~ U{0..D-1} [B] and an order per example (its rank [B,
  ...])."""
  return jax.random.randint(t_rng, (shape[0],), 0, _num_dims(shape)), random_order(order_rng, shape)


def nll_along_order(logits_fn: LogitsFn, x: Array, rank: Array) -> tuple[Array, Array]:
  """-log p(x | σ) exactly, by D network calls in one `lax.scan` -> (nats [B], per-step losses [B,
  D]: the t-th is -log p(x_σ(t+1) | x_σ(≤t)), whose mean over data is the loss component l_t of the
  decoding plan)."""

  def step(total, t):
    t_b = jnp.full((x.shape[0],), t)
    log_p = log_probs_of_data(logits_fn, x, rank < t, t_b)
    step_loss = -losses.sum_flat(jnp.where(rank == t, log_p, 0.0))
    return total + step_loss, step_loss

  total, per_step = jax.lax.scan(step, jnp.zeros((x.shape[0],)), jnp.arange(_num_dims(x.shape)))
  return total, per_step.T


def parallel_decoding_plan(loss_components: np.ndarray, budget: int) -> np.ndarray:
  """Step boundaries [budget + 1] (0 = b_0 < … < b_S = D) minimising the expected loss of generating
  variables b_j … b_{j+1} - 1 together from one network call, each at the cost l_{b_j} of the first
  (ARDM §3.2):

    min Σ_j (b_{j+1} - b_j) · l_{b_j},
  by dynamic programming over (steps, variables done), O(S · D²).
  """
  costs = np.asarray(loss_components, np.float64)
  num_dims = costs.shape[0]
  if not 1 <= budget <= num_dims:
    raise ValueError(
      f"The step budget must be in [1, {num_dims}] for {num_dims} variables; got {budget}."
    )
  # cost[a, b] of one step from a to b > a variables done: (b - a) · l_a.
  done = np.arange(num_dims + 1)
  step_cost = np.where(
    done[None, :] > done[:, None],
    (done[None, :] - done[:, None]) * np.append(costs, 0)[:, None],
    np.inf,
  )
  best = np.full(num_dims + 1, np.inf)
  best[0] = 0.0
  choices = []
  for _ in range(budget):
    total = best[:, None] + step_cost  # [from, to]
    choices.append(np.argmin(total, axis=0))
    best = np.min(total, axis=0)
  bounds = [num_dims]
  for choice in reversed(choices):
    bounds.append(int(choice[bounds[-1]]))
  return np.asarray(bounds[::-1], np.int32)


def sample(
  logits_fn: LogitsFn, rng: Array, shape, plan: np.ndarray | None = None
) -> tuple[Array, Array]:
  """Samples in a random order per example, step j generating the variables of rank in [plan[j],
  plan[j+1]) in parallel from one network call; one `lax.scan` over the steps. `plan` defaults to
  one variable per step (D).
  -> (x [B, ...] int in [0, K), the step that generated each variable [B, ...])."""
  num_dims = _num_dims(shape)
  plan = np.arange(num_dims + 1) if plan is None else np.asarray(plan)
  if plan[0] != 0 or plan[-1] != num_dims or np.any(np.diff(plan) <= 0):
    raise ValueError(
      f"A decoding plan must increase strictly from 0 to D = {num_dims}; got {plan}."
    )
  order_rng, rng = jax.random.split(rng)
  rank = random_order(order_rng, shape)

  def step(carry, j_start_end):
    x, generated_at = carry
    j, start, end = j_start_end
    t = jnp.full((shape[0],), start)
    logits = logits_fn(x, rank < start, t)
    draw = jax.random.categorical(jax.random.fold_in(rng, j), logits)
    now = (rank >= start) & (rank < end)
    return (jnp.where(now, draw, x), jnp.where(now, j, generated_at)), None

  init = (jnp.zeros(shape, jnp.int32), jnp.full(shape, -1, jnp.int32))
  steps = (jnp.arange(len(plan) - 1), jnp.asarray(plan[:-1]), jnp.asarray(plan[1:]))
  (x, generated_at), _ = jax.lax.scan(step, init, steps)
  return x, generated_at


# --------------------------------------------------------------------------------------------------
# Upscale ARDMs (bit upscaling, ARDM §4).

UpscaleLogitsFn = Callable[[Array, Array, Array, Array, Array], Array]


def num_stages(num_bits: int, bits_per_stage: int) -> int:
  if bits_per_stage < 1 or num_bits % bits_per_stage:
    raise ValueError(
      f"bits_per_stage={bits_per_stage} must divide the {num_bits} bits of the values."
    )
  return num_bits // bits_per_stage


def coarse_values(x: Array, stage: Array, bits_per_stage: int, num_bits: int) -> Array:
  """x^(s) = x >> (num_bits - k s): the first s digits of x [B, ...] at stage s [B] (0: none)."""
  shift = num_bits - bits_per_stage * losses.expand_to(stage, x)
  return jnp.where(shift >= num_bits, 0, x >> jnp.minimum(shift, num_bits - 1))


def stage_digit(x: Array, stage: Array, bits_per_stage: int, num_bits: int) -> Array:
  """d_s = x^(s+1) mod 2^k, the digit stage s [B] generates of x [B, ...]."""
  return coarse_values(x, stage + 1, bits_per_stage, num_bits) & (2**bits_per_stage - 1)


def _stage_logits(logits_fn: UpscaleLogitsFn, coarse: Array, stage: Array) -> LogitsFn:
  return lambda d, known, t: logits_fn(d, known, t, coarse, stage)


def upscale_loss_at(
  logits_fn: UpscaleLogitsFn,
  x: Array,
  stage: Array,
  t: Array,
  rank: Array,
  bits_per_stage: int,
  num_bits: int = 8,
) -> Array:
  """S · stage s's one-step estimate in nats [B]: unbiased for Σ_s E_σ -log p(d_s | σ, x^(s)) with
  s ~ U{0..S-1}."""
  stages = num_stages(num_bits, bits_per_stage)
  coarse = coarse_values(x, stage, bits_per_stage, num_bits)
  digit = stage_digit(x, stage, bits_per_stage, num_bits)
  return stages * loss_at(_stage_logits(logits_fn, coarse, stage), digit, t, rank)


def upscale_nll_along_orders(
  logits_fn: UpscaleLogitsFn, x: Array, rank: Array, bits_per_stage: int, num_bits: int = 8
) -> tuple[Array, Array]:
  """-log p(x | σ_0, …, σ_{S-1}) exactly, S · D network calls (`lax.map` over the stages of
  `nll_along_order`), rank [S, B, ...] one order per stage -> (nats [B], per-step losses [S, B,
  D])."""
  stages = num_stages(num_bits, bits_per_stage)

  def stage_nll(stage_and_rank):
    stage, stage_rank = stage_and_rank
    stage_b = jnp.full((x.shape[0],), stage)
    coarse = coarse_values(x, stage_b, bits_per_stage, num_bits)
    digit = stage_digit(x, stage_b, bits_per_stage, num_bits)
    return nll_along_order(_stage_logits(logits_fn, coarse, stage_b), digit, stage_rank)

  nats, per_step = jax.lax.map(stage_nll, (jnp.arange(stages), rank))
  return jnp.sum(nats, axis=0), per_step


def upscale_sample(
  logits_fn: UpscaleLogitsFn,
  rng: Array,
  shape,
  bits_per_stage: int,
  num_bits: int = 8,
  plans: list[np.ndarray | None] | None = None,
) -> Array:
  """x [B, ...] in [0, 2^num_bits), stage by stage (`sample` of each stage's digits given the
  coarser values, in a random order, `plans[s]` its parallel-decoding plan; None: D steps)."""
  stages = num_stages(num_bits, bits_per_stage)
  plans = plans or [None] * stages
  if len(plans) != stages:
    raise ValueError(f"Give one decoding plan per stage ({stages}); got {len(plans)}.")
  coarse = jnp.zeros(shape, jnp.int32)
  for stage, plan in enumerate(plans):
    stage_b = jnp.full((shape[0],), stage, jnp.int32)
    fn = _stage_logits(logits_fn, coarse, stage_b)
    digit, _ = sample(fn, jax.random.fold_in(rng, stage), shape, plan)
    coarse = (coarse << bits_per_stage) | digit
  return coarse
