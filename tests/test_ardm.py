"""ARDM: the one-step loss is unbiased for the bound averaged over all orderings (brute force on a
tiny problem), the exact per-order NLL matches a direct chain-rule computation, the decoding plan is
optimal (brute force), and sampling visits every variable once, with one network call per step."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_jax import ardm

D, K = 3, 3
_rng = np.random.default_rng(0)
# logits of variable k from the known one-hots
A = jnp.asarray(_rng.normal(size=(D, K, D, K)), jnp.float32)
BIAS = jnp.asarray(_rng.normal(size=(D, K)), jnp.float32)
T_WEIGHT = jnp.asarray(_rng.normal(size=(D, K)), jnp.float32)


def toy_logits(x, known, t):
  """An arbitrary context-dependent conditional: x [B, D] -> logits [B, D, K]."""
  context = jax.nn.one_hot(x, K) * known[..., None]  # [B, D, K]
  return jnp.einsum("dkjc,bjc->bdk", A, context) + BIAS + t[:, None, None] * T_WEIGHT


def chain_rule_nll(x, order):
  """-log p(x | σ) by the chain rule, one variable at a time (plain numpy over the toy network's
  outputs)."""
  total, known = 0.0, np.zeros(D, bool)
  for t, k in enumerate(order):
    logits = np.asarray(
      toy_logits(
        jnp.asarray(np.where(known, x, 0))[None], jnp.asarray(known)[None], jnp.asarray([t])
      )
    )[0, k]
    total -= logits[x[k]] - np.log(np.sum(np.exp(logits)))
    known[k] = True
  return total


def test_loss_is_unbiased_for_the_bound_over_all_orderings():
  x = np.array([2, 0, 1])
  orders = list(itertools.permutations(range(D)))
  bound = np.mean([chain_rule_nll(x, order) for order in orders])  # E_σ -log p(x | σ), D! orders
  # rank[k] = position of k in σ
  ranks = jnp.asarray([np.argsort(order) for order in orders], jnp.int32)
  xs = jnp.asarray(np.tile(x, (len(orders), 1)))
  expected = np.mean(
    [np.mean(ardm.loss_at(toy_logits, xs, jnp.full((len(orders),), t), ranks)) for t in range(D)]
  )
  # E_t E_σ of the one-step estimate, exactly
  np.testing.assert_allclose(expected, bound, rtol=1e-5)
  exact, per_step = ardm.nll_along_order(toy_logits, xs, ranks)
  np.testing.assert_allclose(exact, [chain_rule_nll(x, order) for order in orders], rtol=1e-5)
  np.testing.assert_allclose(per_step.sum(-1), exact, rtol=1e-6)
  # And a Monte-Carlo average of the training loss (random t and σ) converges to it.
  n = 20000
  xs = jnp.asarray(np.tile(x, (n, 1)))
  draws = np.asarray(
    ardm.loss_at(toy_logits, xs, *ardm.random_step(*jax.random.split(jax.random.key(0)), xs.shape))
  )
  assert abs(draws.mean() - bound) < 4 * draws.std() / math.sqrt(n)


def _brute_force_plan_cost(costs, budget):
  d = len(costs)
  best = np.inf
  for cuts in itertools.combinations(range(1, d), budget - 1):
    bounds = (0,) + cuts + (d,)
    best = min(best, sum((b - a) * costs[a] for a, b in zip(bounds, bounds[1:])))
  return best


@pytest.mark.parametrize("budget", [1, 3, 5, 8])
def test_decoding_plan_is_the_cheapest_and_uses_the_whole_budget(budget):
  costs = np.random.default_rng(budget).uniform(0.1, 2.0, 8) * np.linspace(3, 1, 8)
  plan = ardm.parallel_decoding_plan(costs, budget)
  assert plan[0] == 0 and plan[-1] == 8 and len(plan) == budget + 1 and np.all(np.diff(plan) > 0)
  cost = sum((b - a) * costs[a] for a, b in zip(plan, plan[1:]))
  np.testing.assert_allclose(cost, _brute_force_plan_cost(costs, budget))
  with pytest.raises(ValueError, match="budget"):
    ardm.parallel_decoding_plan(costs, 9)


def test_full_budget_sampling_visits_every_variable_exactly_once():
  shape = (16, 2, 3)
  x, generated_at = ardm.sample(
    lambda x, known, t: jnp.zeros(x.shape + (5,)), jax.random.key(0), shape
  )
  steps = np.sort(np.asarray(generated_at).reshape(16, 6), axis=-1)
  # one variable per step, each once
  np.testing.assert_array_equal(steps, np.tile(np.arange(6), (16, 1)))
  assert x.min() >= 0 and x.max() < 5
  # orders differ per example
  assert len({tuple(np.asarray(generated_at[i]).ravel()) for i in range(16)}) > 1


def test_parallel_decoding_makes_one_network_call_per_step():
  calls = []

  def counting_logits(x, known, t):
    jax.debug.callback(lambda t: calls.append(int(t[0])), t)
    return toy_logits(x, known, t)

  plan = ardm.parallel_decoding_plan(np.array([3.0, 2.0, 1.0]), 2)
  x, generated_at = jax.jit(lambda rng: ardm.sample(counting_logits, rng, (4, D), plan))(
    jax.random.key(1)
  )
  jax.effects_barrier()
  assert calls == list(plan[:-1])  # k = 2 calls, with plan[j] variables known at call j
  counts = np.stack([(np.asarray(generated_at) == j).sum(-1) for j in range(2)], -1)
  np.testing.assert_array_equal(counts, np.tile(np.diff(plan), (4, 1)))


def test_samples_follow_the_model_conditionals():
  probs = np.array([0.7, 0.2, 0.1])
  logits_fn = lambda x, known, t: jnp.broadcast_to(
    jnp.log(jnp.asarray(probs, jnp.float32)), x.shape + (3,)
  )
  x, _ = ardm.sample(logits_fn, jax.random.key(2), (4000, 2), plan=np.array([0, 2]))
  np.testing.assert_allclose(
    np.bincount(np.asarray(x).ravel(), minlength=3) / 8000, probs, atol=0.02
  )


# Upscale ARDMs: D = 2 variables of 2 bits, generated in S = 2 stages of 1 bit
UP_D, UP_BITS, UP_K = 2, 2, 1
_up = np.random.default_rng(1)
UP_A = jnp.asarray(_up.normal(size=(UP_D, 2, UP_D, 2)), jnp.float32)
UP_COARSE = jnp.asarray(_up.normal(size=(UP_D, 2, UP_D, 4)), jnp.float32)
UP_STAGE = jnp.asarray(_up.normal(size=(2, UP_D, 2)), jnp.float32)


def toy_upscale_logits(d, known, t, coarse, stage):
  """Logits [B, D, 2] of each digit from the known digits, every coarse value, the stage and t."""
  context = jax.nn.one_hot(d, 2) * known[..., None]
  return (
    jnp.einsum("dkjc,bjc->bdk", UP_A, context)
    + jnp.einsum("dkjc,bjc->bdk", UP_COARSE, jax.nn.one_hot(coarse, 4))
    + UP_STAGE[stage]
    + 0.3 * t[:, None, None]
  )


def all_upscale_orders():
  """Every pair of orders (one per stage) as ranks [S, N, D]."""
  perms = [np.argsort(p) for p in itertools.permutations(range(UP_D))]
  pairs = list(itertools.product(perms, perms))
  return jnp.asarray(np.stack([[a for a, _ in pairs], [b for _, b in pairs]]), jnp.int32)


def upscale_nll(xs, ranks):
  return ardm.upscale_nll_along_orders(toy_upscale_logits, xs, ranks, UP_K, UP_BITS)


def test_upscale_ardm_is_a_distribution_with_an_unbiased_loss_and_samples_from_it():
  everything = jnp.asarray(list(itertools.product(range(4), repeat=UP_D)), jnp.int32)  # all 16 x
  ranks = all_upscale_orders()  # [2, 4, D]
  # -log p(x | σ_0, σ_1) for every x and order pair; each order pair gives a normalised law
  nll = np.stack(
    [
      np.asarray(upscale_nll(everything, jnp.repeat(ranks[:, i : i + 1], 16, 1))[0])
      for i in range(4)
    ]
  )
  np.testing.assert_allclose(np.exp(-nll).sum(axis=1), 1.0, rtol=1e-5)
  # the stage digits and coarse values recompose x
  stages = jnp.arange(2)[:, None].repeat(16, 1)
  digits = jax.vmap(lambda s: ardm.stage_digit(everything, s, UP_K, UP_BITS))(stages)
  np.testing.assert_array_equal((digits[0] << 1) | digits[1], everything)
  # E_{stage, t, σ} of the one-step estimate is the bound Σ_s E_σ -log p(d_s | σ, x^(s)), exactly
  x = np.array([3, 1])
  bound = nll[:, int(np.flatnonzero((np.asarray(everything) == x).all(1))[0])].mean()
  xs = jnp.asarray(np.tile(x, (4, 1)))
  estimates = [
    np.mean(
      ardm.upscale_loss_at(
        toy_upscale_logits, xs, jnp.full((4,), s), jnp.full((4,), t), ranks[s], UP_K, UP_BITS
      )
    )
    for s in range(2)
    for t in range(UP_D)
  ]
  np.testing.assert_allclose(np.mean(estimates), bound, rtol=1e-5)
  # sampling (random orders, stage by stage, with a one-step plan for stage 0) draws from
  # E_σ p(x | σ) with stage 0's parallel decoding: here check the D-step sampler against the law
  n = 20000
  drawn = np.asarray(
    ardm.upscale_sample(toy_upscale_logits, jax.random.key(0), (n, UP_D), UP_K, UP_BITS)
  )
  frequencies = np.bincount(drawn[:, 0] * 4 + drawn[:, 1], minlength=16) / n
  law = np.exp(-nll).mean(axis=0)
  assert np.max(np.abs(frequencies - law) / np.sqrt(law * (1 - law) / n + 1e-12)) < 4.5
  with pytest.raises(ValueError, match="divide"):
    ardm.num_stages(8, 3)
