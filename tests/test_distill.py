"""Progressive distillation's math (Salimans & Ho 2022, Algorithm 2) against oracles: the DDIM of a
distillation grid is the project's DDIM sampler on that grid; the target x̃ makes one student step
land where two teacher steps do; with the exact teacher of Gaussian data, a student trained on the
loss reproduces the teacher's two-step map, and after all rounds its one step maps noise onto the
data's mean and std."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ddpm_jax import diffusion, sampling, schedules

T = 1000
MU = np.array([0.5, -0.3, 0.1], np.float32)  # the data: independent N(μ_i, s_i²)
STD = np.array([0.2, 0.6, 0.05], np.float32)


@pytest.fixture(scope="module")
def d():
  return diffusion.GaussianDiffusion.from_betas(
    schedules.get_beta_schedule("cosine", T), mean_type="x0"
  )


def exact_x0(d):
  """E[x0 | z_k] of the Gaussian data: μ + α s²/(α² s² + σ²) (z - α μ)."""

  def x0_fn(z, k):
    alpha, sigma = (a[:, None] for a in diffusion.alpha_sigma(d, k))
    return MU + alpha * STD**2 / (alpha**2 * STD**2 + sigma**2) * (z - alpha * MU)

  return x0_fn


def test_the_grids_nest_and_their_ddim_is_the_ddim_sampler(d):
  fine, coarse = diffusion.distillation_grid(T, 16), diffusion.distillation_grid(T, 4)
  assert fine[0] == coarse[0] == -1 and fine[-1] == coarse[-1] == T - 1
  np.testing.assert_array_equal(fine[::4], coarse)
  z = jax.random.normal(jax.random.key(0), (5, 3))
  got = diffusion.ddim_on_grid(d, exact_x0(d), z, coarse)
  model = lambda x, t: exact_x0(d)(x, t)  # mean_type "x0": the model's output is x̂0
  respaced = diffusion.respace(d, coarse[1:])
  want = sampling.ddim_sample(
    respaced, model, jax.random.key(9), x_T=z, num_steps=None, clip_denoised=False
  )
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_the_target_makes_one_step_land_where_two_do(d):
  k = jnp.array([999, 600, 63])
  k_mid, k_s = jnp.array([749, 300, 31]), jnp.array([499, -1, -1])
  z_t = jax.random.normal(jax.random.key(1), (3, 3))
  z_s = diffusion.two_teacher_steps(d, exact_x0(d), z_t, k, k_mid, k_s)
  (a_t, s_t), (a_s, s_s) = diffusion.alpha_sigma(d, k), diffusion.alpha_sigma(d, k_s)
  target = diffusion.distillation_target(z_t, z_s, a_t, s_t, a_s, s_s)
  one_step = diffusion.ddim_step_from_x0(target, z_t, a_t, s_t, a_s, s_s)
  np.testing.assert_allclose(one_step, z_s, atol=1e-5)
  np.testing.assert_allclose(
    diffusion.truncated_snr_weight(a_t, s_t)[1:], [1.0, a_t[2] ** 2 / s_t[2] ** 2], rtol=1e-6
  )


def affine_student(params):
  """x̂(z, k) = a_j z + b_j per dimension, j the grid point of k (a table over all T)."""
  return lambda z, k: params["a"][k] * z + params["b"][k]


def distil_round(d, teacher_x0_fn, grid, student_steps, key, num_updates=1500):
  """One round: an affine student of `student_steps` steps trained on the loss; -> its x0 fn."""
  stride = (len(grid) - 1) // (2 * student_steps)  # the teacher's step, in fine grid points
  params = {"a": jnp.zeros((T, 3)), "b": jnp.zeros((T, 3))}
  optimizer = optax.adam(3e-2)
  state = optimizer.init(params)
  grid = jnp.asarray(grid)

  def loss(params, key):
    keys = jax.random.split(key, 3)
    j = 2 * stride * jax.random.randint(keys[0], (512,), 1, student_steps + 1)
    x0 = MU + STD * jax.random.normal(keys[1], (512, 3))
    noise = jax.random.normal(keys[2], (512, 3))
    per_example = diffusion.progressive_distillation_loss(
      d, affine_student(params), teacher_x0_fn, x0, noise, grid[j], grid[j - stride],
      grid[j - 2 * stride],
    )  # fmt: skip
    return jnp.mean(per_example)

  @jax.jit
  def update(params, state, key):
    grads = jax.grad(loss)(params, key)
    updates, state = optimizer.update(grads, state)
    return optax.apply_updates(params, updates), state

  for i in range(num_updates):
    params, state = update(params, state, jax.random.fold_in(key, i))
  return affine_student(params)


def test_a_round_reproduces_two_teacher_steps_and_all_rounds_the_data(d):
  """8 rounds from a 256-step teacher: each student's step equals two of its teacher's (checked at
  its first, middle and last step), and the last student's one step gives the data's moments as
  the 256-step teacher does (whose DDIM is within 4 % of the data's std; 8 steps would be 35 %
  short, which the one-step student of an 8-step teacher inherits)."""
  fine = 256
  grid = diffusion.distillation_grid(T, fine)
  z = jax.random.normal(jax.random.key(2), (256, 3)) * 1.5
  teacher = exact_x0(d)
  noise = jax.random.normal(jax.random.key(3), (20000, 3))
  teacher_samples = diffusion.ddim_on_grid(d, teacher, noise, grid)
  for round_index in range(8):
    student_steps = fine // 2 ** (round_index + 1)
    student = distil_round(d, teacher, grid, student_steps, jax.random.key(round_index))
    stride = fine // (2 * student_steps)
    for step in sorted({1, (student_steps + 1) // 2, student_steps}):
      j = 2 * stride * step
      k = lambda i: jnp.full((256,), grid[i])
      two = diffusion.two_teacher_steps(d, teacher, z, k(j), k(j - stride), k(j - 2 * stride))
      one = diffusion.ddim_on_grid(d, student, z, grid[[j - 2 * stride, j]])
      np.testing.assert_allclose(one, two, atol=2e-2 * float(jnp.std(two)) + 1e-3)
    teacher = student
  samples = diffusion.ddim_on_grid(d, teacher, noise, grid[[0, fine]])
  np.testing.assert_allclose(samples.mean(0), teacher_samples.mean(0), atol=0.01)
  np.testing.assert_allclose(samples.std(0), teacher_samples.std(0), rtol=0.05)
  np.testing.assert_allclose(samples.mean(0), MU, atol=0.02)
  np.testing.assert_allclose(samples.std(0), STD, rtol=0.1)
