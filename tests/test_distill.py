"""Progressive distillation's math (Salimans & Ho 2022, Algorithm 2) against oracles: the DDIM of a
distillation grid is the project's DDIM sampler on that grid; the target x̃ makes one student step
land where two teacher steps do; with the exact teacher of Gaussian data, a student trained on the
loss reproduces the teacher's two-step map, and after all rounds its one step maps noise onto the
data's mean and std."""

import copy
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ddpm_jax import diffusion, edm, sampling, schedules

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
  assert list(coarse[1:]) == sampling.space_timesteps(T, "trailing4")  # DDIM's trailing grid
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


def affine(table):
  """x̂(z, k) = a_k z + b_k per dimension, from a table over all T timesteps."""
  return lambda z, k: table["a"][k] * z + table["b"][k]


def exact_table(d):
  """The exact teacher as such a table: a_k = α s²/(α² s² + σ²), b_k = μ - a_k α μ."""
  alpha, sigma = (a[:, None] for a in diffusion.alpha_sigma(d, jnp.arange(T)))
  a = alpha * STD**2 / (alpha**2 * STD**2 + sigma**2)
  return {"a": a, "b": MU - a * alpha * MU}


@jax.jit
def update(d, student, teacher, opt_state, grid, student_steps, key):
  """One Adam step of an affine student of `student_steps` steps on the distillation loss."""
  stride = (grid.shape[0] - 1) // (2 * student_steps)  # the teacher's step, in grid points

  def loss(student):
    keys = jax.random.split(key, 3)
    j = 2 * stride * jax.random.randint(keys[0], (512,), 1, student_steps + 1)
    x0 = MU + STD * jax.random.normal(keys[1], (512, 3))
    noise = jax.random.normal(keys[2], (512, 3))
    k_t = grid[j]
    z_t, target = diffusion.distillation_pair(
      d, affine(teacher), x0, noise, k_t, grid[j - stride], grid[j - 2 * stride]
    )
    return jnp.mean(diffusion.progressive_distillation_loss(d, affine(student), z_t, target, k_t))

  updates, opt_state = OPTIMIZER.update(jax.grad(loss)(student), opt_state)
  return optax.apply_updates(student, updates), opt_state


OPTIMIZER = optax.adam(5e-2)


@jax.jit
def student_and_teacher_maps(d, student, teacher, z, grid, j, stride):
  """(the student's one step, the teacher's two steps) from grid point j [B]."""
  k = lambda i: grid[i]
  two = diffusion.two_teacher_steps(d, affine(teacher), z, k(j), k(j - stride), k(j - 2 * stride))
  (a_t, s_t), (a_s, s_s) = (diffusion.alpha_sigma(d, k(i)) for i in (j, j - 2 * stride))
  one = diffusion.ddim_step_from_x0(affine(student)(z, k(j)), z, a_t, s_t, a_s, s_s)
  return one, two


def test_a_round_reproduces_two_teacher_steps_and_all_rounds_the_data(d):
  """8 rounds from a 256-step teacher: each student's step equals two of its teacher's (checked at
  its first, middle and last step), and the last student's one step gives the data's moments as
  the 256-step teacher does (whose DDIM is within 4 % of the data's std; 8 steps would be 35 %
  short, which the one-step student of an 8-step teacher inherits)."""
  fine = 256
  grid = jnp.asarray(diffusion.distillation_grid(T, fine))
  z = jax.random.normal(jax.random.key(2), (256, 3)) * 1.5
  teacher = exact_table(d)
  noise = jax.random.normal(jax.random.key(3), (20000, 3))
  teacher_samples = diffusion.ddim_on_grid(d, affine(teacher), noise, grid)
  for round_index in range(8):
    student_steps = fine // 2 ** (round_index + 1)
    student = {"a": jnp.zeros((T, 3)), "b": jnp.zeros((T, 3))}
    opt_state = OPTIMIZER.init(student)
    for i in range(800):
      key = jax.random.fold_in(jax.random.key(round_index), i)
      student, opt_state = update(d, student, teacher, opt_state, grid, student_steps, key)
    stride = fine // (2 * student_steps)
    for step in sorted({1, (student_steps + 1) // 2, student_steps}):
      j = jnp.full((256,), 2 * stride * step)
      one, two = student_and_teacher_maps(d, student, teacher, z, grid, j, stride)
      np.testing.assert_allclose(one, two, atol=2e-2 * float(jnp.std(two)) + 1e-3)
    teacher = student
  samples = diffusion.ddim_on_grid(d, affine(teacher), noise, grid[jnp.array([0, fine])])
  np.testing.assert_allclose(samples.mean(0), teacher_samples.mean(0), atol=0.01)
  np.testing.assert_allclose(samples.std(0), teacher_samples.std(0), rtol=0.05)
  np.testing.assert_allclose(samples.mean(0), MU, atol=0.02)
  np.testing.assert_allclose(samples.std(0), STD, rtol=0.1)


# Consistency models: the data N(μ, s²) per dimension in EDM's x_σ = x + σ n, whose probability-flow
# ODE keeps (x_σ - μ)/√(s² + σ²) constant: the exact consistency function is that flow to σ_min.
SIGMA_MIN, SIGMA_MAX, SIGMA_DATA = 0.002, 80.0, 0.5


def exact_denoiser(x, sigma):
  return MU + STD**2 / (STD**2 + sigma[:, None] ** 2) * (x - MU)


def exact_consistency(std=STD):
  def f(x, sigma):
    return MU + (x - MU) * jnp.sqrt(std**2 + SIGMA_MIN**2) / jnp.sqrt(std**2 + sigma[:, None] ** 2)

  return f


def test_the_boundary_condition_holds_for_any_network():
  network = lambda x, c_noise: jnp.sin(3 * x) + c_noise[:, None]
  x = jax.random.normal(jax.random.key(0), (4, 3))
  sigma = jnp.full((4,), SIGMA_MIN)
  np.testing.assert_allclose(
    edm.consistency_function(network, x, sigma, SIGMA_DATA, SIGMA_MIN), x, atol=1e-7
  )
  c_skip, c_out = edm.consistency_scalings(jnp.array(1e3), SIGMA_DATA, SIGMA_MIN)
  assert float(c_skip) < 1e-6 and abs(float(c_out) - SIGMA_DATA) < 1e-3  # at large σ: the network


def test_the_consistency_loss_is_zero_for_the_exact_function_and_positive_otherwise():
  """Consistency distillation's loss with the exact teacher and one Heun step on iCT's final
  1281-point grid: 0 to float precision for the exact consistency function (as with the exact ODE
  step), far larger for the consistency function of a wrong data std."""
  n = 1281
  index = jax.random.randint(jax.random.key(1), (4096,), 0, n - 1)
  sigma = edm.consistency_sigmas(index, n, SIGMA_MIN, SIGMA_MAX)
  sigma_next = edm.consistency_sigmas(index + 1, n, SIGMA_MIN, SIGMA_MAX)
  x0 = MU + STD * jax.random.normal(jax.random.key(2), (4096, 3))
  x_next = x0 + sigma_next[:, None] * jax.random.normal(jax.random.key(3), (4096, 3))
  x_hat = edm.heun_ode_step(exact_denoiser, x_next, sigma_next, sigma)
  distance = lambda a, b: edm.pseudo_huber(a, b, 0.00054 * np.sqrt(3))

  def loss(f, x):
    return float(jnp.mean(edm.consistency_loss(f, f, x_next, sigma_next, x, sigma, distance)))

  exact_step = exact_consistency()(x_next, sigma_next)  # the flow to σ_min
  flow_back = MU + (exact_step - MU) * jnp.sqrt(STD**2 + sigma[:, None] ** 2) / jnp.sqrt(
    STD**2 + SIGMA_MIN**2
  )  # the exact ODE step σ_{i+1} -> σ_i
  assert loss(exact_consistency(), flow_back) < 1e-7  # (measured 2e-9: float32 rounding)
  wrong = loss(exact_consistency(1.2 * STD), x_hat)  # measured 4.4e-3
  assert loss(exact_consistency(), x_hat) < 1e-7 and wrong > 1e-3


def test_icts_curriculum_and_noise_levels():
  steps = jnp.array([0, 49_999, 50_000, 100_000, 350_000, 399_999])
  np.testing.assert_array_equal(
    edm.ict_num_scales(steps, 400_000), [11, 11, 21, 41, 1281, 1281]
  )  # iCT: K' = 400k / 8
  sigmas = edm.consistency_sigmas(jnp.arange(41), 41, SIGMA_MIN, SIGMA_MAX)
  assert float(sigmas[0]) == pytest.approx(SIGMA_MIN) and float(sigmas[-1]) == pytest.approx(80.0)
  probs = edm.ict_index_probabilities(sigmas)
  # Monte Carlo: ln σ ~ N(-1.1, 2²) falling in each interval [σ_i, σ_{i+1}), among those in range
  log_sigma = -1.1 + 2.0 * np.random.default_rng(0).normal(size=1_000_000)
  inside = log_sigma[(log_sigma >= np.log(sigmas[0])) & (log_sigma < np.log(sigmas[-1]))]
  counts = np.histogram(inside, bins=np.log(np.asarray(sigmas)))[0]
  np.testing.assert_allclose(probs, counts / counts.sum(), atol=2e-3)


def test_pseudo_huber_is_l2_far_and_quadratic_near():
  x, y = jnp.array([[3.0, 4.0]]), jnp.zeros((1, 2))
  assert float(edm.pseudo_huber(x, y, 1e-6)[0]) == pytest.approx(5.0, abs=1e-5)
  assert float(edm.pseudo_huber(1e-3 * x, y, 1.0)[0]) == pytest.approx(25e-6 / 2, rel=1e-3)


def test_multistep_consistency_sampling_with_the_exact_function_gives_the_data():
  noise = jax.random.normal(jax.random.key(4), (3, 20000, 3))
  for sigmas in ([SIGMA_MAX], [SIGMA_MAX, 0.8, 0.1]):
    x = edm.consistency_sample(exact_consistency(), noise, sigmas, SIGMA_MIN)
    np.testing.assert_allclose(x.mean(0), MU, atol=0.01)
    np.testing.assert_allclose(x.std(0), STD, rtol=0.03)


# The family: a student of the teacher's workdir, its rounds as stages of one run.


@pytest.fixture(scope="module")
def teacher_workdir(tmp_path_factory):
  """A 'gaussian' run of the digits default at its (random) initial weights."""
  from configs import default as default_config
  from ddpm_jax.convert import presets
  from ddpm_jax.jobs.train_state import create_train_state

  workdir = str(tmp_path_factory.mktemp("teacher"))
  config = default_config.get_config()
  state = create_train_state(config, jax.random.key(5))
  presets.write_workdir(config, state.params, workdir, "test", "random initial weights")
  return workdir


def distill_config(teacher_workdir):
  from configs import distill_progressive_default

  config = distill_progressive_default.get_config()
  config.distill.update(teacher_workdir=teacher_workdir, rounds=2, steps_per_round=2)
  config.distill.teacher_steps = 8
  config.training.update(num_train_steps=4, batch_size=8)
  config.sampling.num_steps = 2
  config.optim.update(lr=1e-3, warmup_steps=0)
  return config


@pytest.mark.slow  # (12 s: two models compiled)
def test_a_student_starts_as_its_teacher_and_becomes_the_next_teacher(teacher_workdir):
  from configs import workdir as workdir_configs
  from ddpm_jax import families
  from ddpm_jax.families.config_validation import validate_config
  from ddpm_jax.jobs import train
  from ddpm_jax.jobs.train_state import create_train_state, restore_ema_params, warm_started
  from ddpm_jax.runtime import parallel

  config = families.completed(distill_config(teacher_workdir))
  validate_config(config)
  assert config.training.init_from_workdir == teacher_workdir
  assert config.diffusion.mean_type == "eps" and config.model.name == "unet"  # the teacher's
  mesh = parallel.make_mesh()
  state = warm_started(config, create_train_state(config, jax.random.key(0), mesh), mesh)
  teacher, _ = restore_ema_params(workdir_configs.load(teacher_workdir), teacher_workdir, mesh)
  same = lambda a, b: jax.tree_util.tree_all(jax.tree_util.tree_map(np.array_equal, a, b))
  assert same(state.params, teacher) and same(state.family_state["teacher"], teacher)
  # round 0: student steps from grid points 2, 4, 6, 8 of the 8-step grid, the teacher's halves
  family = families.get_family(config)
  grid = diffusion.distillation_grid(1000, 8)
  batch = {
    "image": jax.random.uniform(jax.random.key(1), (8, 8, 8, 1), minval=-1),
    "label": jnp.zeros(8, jnp.int32),
  }
  draws = family.draw(families.step_keys(jax.random.key(2)), batch, state.family_state)
  assert set(np.asarray(draws["k_t"])) <= set(grid[2::2])
  step = train.make_train_step(config, mesh)
  params_after = []
  for i in range(4):
    previous = jax.device_get(state.params)  # (the step donates the state)
    state, _ = step(state, batch, jax.random.key(3))
    params_after.append(jax.device_get(state.params))
    if i == 0:  # inside round 0: the teacher stays
      assert same(state.family_state["teacher"], teacher) and not same(state.params, previous)
      assert int(state.family_state["round"]) == 0
  # the end of round 0 (step 2): the student became the teacher, its EMA restarted there
  assert int(state.family_state["round"]) == 1
  assert same(state.family_state["teacher"], params_after[1])
  assert not same(state.ema_params, state.params)  # (EMA since step 2, two steps behind)


def test_an_eps_teachers_student_predicts_v_and_learns_the_teachers_two_steps(teacher_workdir):
  """distill.student_mean_type="auto": an ε teacher's student predicts v (x0 and v teachers' keep
  theirs); its loss is max(SNR, 1) ‖x̃ - x̂‖² with x̂ from the network's output read as v, and one
  DDIM step to x̃ lands where two DDIM steps of the teacher's output do, read as ε in round 0 (the
  teacher run's) and as v in round 1 (the round-0 student's), x̂ clipped as the teacher's sampler
  clips it; without sampling.clip_denoised, not clipped."""
  from ddpm_jax import families
  from ddpm_jax.families import distill, gaussian
  from ddpm_jax.jobs import train

  config = families.completed(distill_config(teacher_workdir))
  for teacher_type, chosen, student_type in [
    ("eps", "auto", "v"), ("x0", "auto", "x0"), ("v", "auto", "v"), ("eps", "eps", "eps"),
    ("v", "x0", "x0"),
  ]:  # fmt: skip
    trial = copy.deepcopy(config)
    trial.diffusion.mean_type, trial.distill.student_mean_type = teacher_type, chosen
    assert distill.with_student_mean_type(trial).diffusion.mean_type == student_type
  assert config.diffusion.mean_type == "eps"  # the teacher's, in the student's run
  state = train.create_train_state(config, jax.random.key(0))
  params = state.params
  batch = {
    "image": jax.random.uniform(jax.random.key(1), (8, 8, 8, 1), minval=-1),
    "label": jnp.zeros(8, jnp.int32),
  }
  d = gaussian.make_diffusion(config)
  grid = np.asarray(diffusion.distillation_grid(1000, 8))
  # round 0's teacher is the ε run; round 1's, the round-0 student, predicts v
  teacher_reading = {0: diffusion.predict_x0_from_eps, 1: diffusion.predict_x0_from_v}
  targets = {}
  for clip, round_ in itertools.product((True, False), teacher_reading):
    config.sampling.clip_denoised = clip
    family = families.get_family(config)
    net = lambda p, z, k: family.model.apply(p, z, k, None, train=False)
    family_state = {**state.family_state, "round": jnp.asarray(round_, jnp.int32)}
    draws = family.draw(families.step_keys(jax.random.key(2)), batch, family_state)
    z_t, k_t, target, stride = draws["z_t"], draws["k_t"], draws["target"], 2**round_
    targets[clip, round_] = target
    j = np.searchsorted(grid, np.asarray(k_t))
    assert not np.any(j % (2 * stride))
    z = z_t
    for k, k_next in ((k_t, grid[j - stride]), (grid[j - stride], grid[j - 2 * stride])):
      x0_hat = teacher_reading[round_](d, z, k, net(family_state["teacher"], z, k))
      z = diffusion.ddim_step_from_x0(
        jnp.clip(x0_hat, -1, 1) if clip else x0_hat,
        z,
        *diffusion.alpha_sigma(d, k),
        *diffusion.alpha_sigma(d, jnp.asarray(k_next)),
      )
    one_step = diffusion.ddim_step_from_x0(
      target, z_t, *diffusion.alpha_sigma(d, k_t), *diffusion.alpha_sigma(d, grid[j - 2 * stride])
    )
    np.testing.assert_allclose(one_step, z, rtol=1e-4, atol=2e-4)
    x0_as_v = diffusion.predict_x0_from_v(d, z_t, k_t, net(params, z_t, k_t))
    weight = diffusion.truncated_snr_weight(*diffusion.alpha_sigma(d, k_t))
    expected = weight * np.mean((np.asarray(target) - x0_as_v) ** 2, axis=(1, 2, 3))
    np.testing.assert_allclose(family.loss(params, batch, draws, None), expected, rtol=1e-5)
  assert not np.allclose(targets[True, 0], targets[False, 0])  # (the clip acts here)


def run(*args):
  from helpers import run_module

  run_module("ddpm_jax.main", *args)


def resumed_equals_straight(common, tmp_path, removed_steps, last_step):
  """Runs `common` in tmp_path/straight, then again in a copy without the checkpoints at
  `removed_steps` (as if killed after the one before): both end in the same state, bit for bit.
  -> that state."""
  import shutil

  from configs import workdir as workdir_configs
  from ddpm_jax.jobs.train_state import abstract_train_state
  from ddpm_jax.runtime import checkpoint, parallel

  straight, preempted = tmp_path / "straight", tmp_path / "preempted"
  run(*common, f"--workdir={straight}")
  shutil.copytree(straight, preempted)
  for step in removed_steps:
    shutil.rmtree(preempted / "checkpoints" / str(step))
  run(*common, f"--workdir={preempted}")
  config, mesh = workdir_configs.load(str(straight)), parallel.make_mesh()
  states = []
  for workdir in (straight, preempted):
    ckpt = checkpoint.Checkpointer(str(workdir))
    state, step = ckpt.restore_latest(abstract_train_state(config, mesh), config)
    ckpt.close()
    assert step == last_step
    states.append(jax.device_get(state))
  for a, b in zip(*(jax.tree_util.tree_leaves(s) for s in states), strict=True):
    np.testing.assert_array_equal(a, b)
  return states[0]


def sample_and_evaluate(workdir, step):
  """The student in `workdir` samples with 1 step and evaluates (feature-FD) on samples of 2."""
  import json

  run("--mode=sample", f"--config=workdir:{workdir}", f"--workdir={workdir}",
      "--config.sampling.num_steps=1", "--config.sampling.num_samples=16")  # fmt: skip
  assert np.load(workdir / "samples" / f"samples_{step}.npz")["images"].shape == (16, 8, 8, 1)
  run("--mode=eval", f"--config=workdir:{workdir}", f"--workdir={workdir}",
      "--config.sampling.num_steps=2", "--config.eval.num_fid_samples=64",
      "--config.eval.allow_fewer_fid_samples=True")  # fmt: skip
  results = json.loads((workdir / f"eval_{step}.json").read_text())
  assert np.isfinite(results["feature_fd"]), results


@pytest.mark.slow
def test_progressive_distillation_from_the_command_line_resumes_inside_its_rounds(
  tmp_path, teacher_workdir
):
  """From a teacher's workdir (the digits default), 2 rounds distil its 8 steps into 2; the run
  preempted after step 3 (its newer checkpoints gone) resumes across the round boundary into the
  same state, bit for bit; the student samples with 1 and 2 steps and evaluates."""
  from helpers import REPO

  common = [
    f"--config={REPO}/configs/distill_progressive_default.py",
    f"--config.distill.teacher_workdir={teacher_workdir}",
    "--config.distill.rounds=2",
    "--config.distill.steps_per_round=6",
    "--config.distill.teacher_steps=8",
    "--config.training.num_train_steps=12",
    "--config.training.checkpoint_every_steps=3",
    "--config.training.keep_checkpoints=10",
    "--config.sampling.num_steps=2",
  ]
  state = resumed_equals_straight(common, tmp_path, removed_steps=(6, 9, 12), last_step=12)
  assert int(state.family_state["round"]) == 1  # (killed inside round 0)
  sample_and_evaluate(tmp_path / "straight", 12)


def test_a_fresh_config_starts_from_a_workdir_of_its_model(teacher_workdir):
  """training.init_from_workdir: a config file's model (tuples) equals the same model read from the
  workdir's config.json (lists); another model is refused."""
  from configs import default as default_config
  from ddpm_jax.families.config_validation import InvalidConfigError, validate_config

  config = default_config.get_config()
  config.training.init_from_workdir = teacher_workdir
  validate_config(config)
  config.model.ch_mult = (1, 1)
  with pytest.raises(InvalidConfigError, match="training.init_from_workdir=.* another model"):
    validate_config(config)


# --------------------------------------------------------------------------------------------------
# Consistency models as distill.method="consistency".


def test_consistency_from_a_denoiser_is_cms_parameterisation():
  """For EDM's network F, f from its denoiser D = c_skip^EDM x + c_out^EDM F equals CM's
  c_skip x + c_out F; for a VP ε-model's denoiser f(x, σ_min) = x."""
  network = lambda x, c_noise: jnp.sin(3 * x) + c_noise[:, None]
  x = jax.random.normal(jax.random.key(0), (5, 3))
  sigma = jnp.array([SIGMA_MIN, 0.1, 1.0, 10.0, 80.0])
  denoiser = lambda x, sigma: edm.denoise(network, x, sigma, SIGMA_DATA)
  np.testing.assert_allclose(
    edm.consistency_from_denoiser(denoiser, x, sigma, SIGMA_DATA, SIGMA_MIN),
    edm.consistency_function(network, x, sigma, SIGMA_DATA, SIGMA_MIN),
    rtol=1e-5,
    atol=1e-6,
  )
  vp = diffusion.GaussianDiffusion.from_betas(schedules.get_beta_schedule("linear", 100))
  vp_denoiser = sampling.discrete_denoiser(vp, lambda x_t, t: jnp.cos(x_t) * t[:, None])
  sigma_min = float(sampling.discrete_sigmas(vp)[0])
  at_min = jnp.full((5,), sigma_min)
  np.testing.assert_allclose(
    edm.consistency_from_denoiser(vp_denoiser, x, at_min, SIGMA_DATA, sigma_min), x, atol=1e-6
  )


def consistency_config(teacher_workdir=None):
  from configs import consistency_default
  from ddpm_jax import families

  config = consistency_default.get_config("distillation" if teacher_workdir else "training")
  config.distill.teacher_workdir = teacher_workdir
  config.training.update(num_train_steps=4, batch_size=8)
  config.optim.update(lr=1e-3, warmup_steps=0)
  return families.completed(config)


def test_consistency_training_draws_follow_icts_curriculum():
  """iCT's pairs (σ_i, σ_{i+1}) are neighbours on EDM's grid of N(k) levels, N(k) from the
  curriculum at the run's step, i by the log-normal masses (Monte Carlo); x_{σ_i} and x_{σ_{i+1}}
  share one noise."""
  from ddpm_jax import families

  config = consistency_config()
  config.distill.update(initial_scales=11, num_scales=41)
  config.training.num_train_steps = 300  # 3 stages of 100 steps: N = 11, 21, 41
  family = families.get_family(config)
  x0 = jax.random.uniform(jax.random.key(1), (4096, 8, 8, 1), minval=-1)
  batch = {"image": x0, "label": jnp.zeros(4096, jnp.int32)}
  for step, scales in ((0, 11), (150, 21), (299, 41)):
    state = {"step": jnp.asarray(step, jnp.int32)}
    draws = family.draw(families.step_keys(jax.random.key(step)), batch, state)
    grid = edm.consistency_sigmas(jnp.arange(scales), scales, config.edm.sigma_min, 80.0)
    i = np.searchsorted(np.asarray(grid), np.asarray(draws["sigma"]) * (1 - 1e-6))
    np.testing.assert_allclose(draws["sigma"], grid[i], rtol=1e-5)
    np.testing.assert_allclose(draws["sigma_next"], grid[i + 1], rtol=1e-5)
    frequencies = np.bincount(i, minlength=scales - 1) / i.size
    expected = np.asarray(edm.ict_index_probabilities(grid))
    np.testing.assert_allclose(frequencies, expected, atol=0.03)
    z = (draws["x_next"] - x0) / draws["sigma_next"][:, None, None, None]
    np.testing.assert_allclose(draws["x"], x0 + draws["sigma"][:, None, None, None] * z, atol=1e-4)


@pytest.mark.slow  # (15 s: the student, teacher and target compiled)
def test_consistency_distillation_starts_from_its_teacher_and_tracks_a_target(teacher_workdir):
  """The student and θ⁻ start as the teacher; the draws' x̂_{σ_i} is one Heun step of the teacher's
  ODE from x_{σ_{i+1}} (the VP model's denoiser, x̂0 clipped where sampling.clip_denoised); after a
  step θ⁻ = μ θ⁻ + (1 - μ) θ."""
  from configs import workdir as workdir_configs
  from ddpm_jax import families
  from ddpm_jax.families import distill
  from ddpm_jax.families.config_validation import validate_config
  from ddpm_jax.jobs import train
  from ddpm_jax.jobs.train_state import create_train_state, restore_ema_params, warm_started
  from ddpm_jax.runtime import parallel

  config = consistency_config(teacher_workdir)
  validate_config(config)
  mesh = parallel.make_mesh()
  state = warm_started(config, create_train_state(config, jax.random.key(0), mesh), mesh)
  teacher, _ = restore_ema_params(workdir_configs.load(teacher_workdir), teacher_workdir, mesh)
  same = lambda a, b: jax.tree_util.tree_all(jax.tree_util.tree_map(np.array_equal, a, b))
  assert same(state.params, teacher) and same(state.family_state["target"], teacher)
  batch = {
    "image": jax.random.uniform(jax.random.key(1), (8, 8, 8, 1), minval=-1),
    "label": jnp.zeros(8, jnp.int32),
  }
  denoiser_of, sigma_min, sigma_max = distill.gaussian_denoiser(config)
  heun_steps = {}
  for clip in (True, False):  # the teacher's x̂0 clipped as its own Heun sampler clips it
    config.sampling.clip_denoised = clip
    draws = families.get_family(config).draw(
      families.step_keys(jax.random.key(2)), batch, state.family_state
    )
    unclipped = denoiser_of(teacher, None, train=False)
    teacher_d = (lambda x, s: jnp.clip(unclipped(x, s), -1, 1)) if clip else unclipped
    x0_hat = teacher_d(draws["x_next"], draws["sigma_next"])  # Heun, written out
    per = lambda a: a[:, None, None, None]
    d1 = (draws["x_next"] - x0_hat) / per(draws["sigma_next"])
    x_euler = draws["x_next"] + per(draws["sigma"] - draws["sigma_next"]) * d1
    d2 = (x_euler - teacher_d(x_euler, draws["sigma"])) / per(draws["sigma"])
    heun = draws["x_next"] + per(draws["sigma"] - draws["sigma_next"]) * (d1 + d2) / 2
    np.testing.assert_allclose(draws["x"], heun, rtol=1e-4, atol=1e-4)
    heun_steps[clip] = draws["x"]
  assert not np.allclose(heun_steps[True], heun_steps[False])  # (the clip acts here)
  grid = edm.consistency_sigmas(jnp.arange(18), 18, sigma_min, sigma_max)
  assert set(np.round(np.asarray(draws["sigma"]), 4)) <= set(np.round(np.asarray(grid[:-1]), 4))
  step = train.make_train_step(config, mesh)
  state, _ = step(state, batch, jax.random.key(3))
  mu = config.distill.target_ema
  expected = jax.tree_util.tree_map(lambda a, b: mu * a + (1 - mu) * b, teacher, state.params)
  for a, b in zip(
    *(jax.tree_util.tree_leaves(t) for t in (state.family_state["target"], expected))
  ):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  assert same(state.family_state["teacher"], teacher)


@pytest.mark.slow
def test_consistency_models_from_the_command_line_resume_and_sample(tmp_path, teacher_workdir):
  """Consistency distillation from a teacher's workdir (the digits default), preempted after step 3
  (its newer checkpoints gone), resumes into the same state bit for bit; the student samples with
  1 and 2 steps and evaluates; consistency training (no teacher) trains and samples its grid."""
  from helpers import REPO

  common = [
    f"--config={REPO}/configs/consistency_default.py",
    f"--config.distill.teacher_workdir={teacher_workdir}",
    "--config.training.num_train_steps=6",
    "--config.training.checkpoint_every_steps=3",
    "--config.training.keep_checkpoints=10",
  ]
  resumed_equals_straight(common, tmp_path, removed_steps=(6,), last_step=6)
  sample_and_evaluate(tmp_path / "straight", 6)
  trained = tmp_path / "trained"
  run(f"--config={REPO}/configs/consistency_default.py:training", f"--workdir={trained}",
      "--config.training.num_train_steps=4", "--config.training.checkpoint_every_steps=4",
      "--config.training.sample_every_steps=4")  # fmt: skip
  assert (trained / "samples" / "ema_step_00000004.png").exists()  # (its sampler, as above)


@pytest.fixture(scope="module")
def edm_teacher_workdir(tmp_path_factory):
  """An 'edm' run of the digits at its (random) initial weights, trained on ln σ ~ N(-1, 1)."""
  from configs import default as default_config
  from ddpm_jax.convert import presets
  from ddpm_jax.jobs.train_state import create_train_state

  workdir = str(tmp_path_factory.mktemp("edm_teacher"))
  config = default_config.get_config("edm")
  config.edm.update(p_mean=-1.0, p_std=1.0)
  state = create_train_state(config, jax.random.key(6))
  presets.write_workdir(config, state.params, workdir, "test", "random initial weights")
  return workdir


def test_the_teacher_blocks_fields_a_student_does_not_read_are_refused(
  teacher_workdir, edm_teacher_workdir
):
  """The family carries the diffusion and EDM blocks for either teacher: each field that the
  method and the teacher leave unread is refused by name, once; the read ones are not."""
  from ddpm_jax import families
  from ddpm_jax.families.config_validation import InvalidConfigError, validate_config

  progressive = lambda: families.completed(distill_config(teacher_workdir))
  cases = [  # (config, read or copied: legal, unread: refused)
    (progressive, [], [("edm", "p_mean", -1.0), ("edm", "sigma_data", 1.0)]),
    (
      lambda: consistency_config(teacher_workdir),
      [("edm", "sigma_data", 1.0)],
      [("edm", "sigma_max", 20.0), ("edm", "p_std", 2.0)],
    ),
    (lambda: consistency_config(edm_teacher_workdir), [], [("diffusion", "num_timesteps", 500)]),
    (
      consistency_config,  # training: EDM's network and σ range, iCT's levels
      [("edm", "sigma_max", 20.0)],
      [("diffusion", "mean_type", "v"), ("edm", "p_mean", -1.1)],
    ),
  ]
  for make_config, read, unread in cases:
    config = make_config()
    validate_config(config)
    for block, field, value in read:
      config = make_config()
      config[block][field] = value
      validate_config(config)
    for block, field, value in unread:
      config = make_config()
      config[block][field] = value
      with pytest.raises(
        InvalidConfigError, match=rf"^Invalid config: {block}\.{field}=.*not read"
      ):
        validate_config(config)
  # the EDM teacher's own p_mean is copied, not refused
  assert consistency_config(edm_teacher_workdir).edm.p_mean == -1.0


# --------------------------------------------------------------------------------------------------
# Progressive distillation of a flow's Euler sampler.


def gaussian_data_velocity(s):
  """The exact velocity of the linear path x_t = (1 - t) x0 + t ε for x0 ~ N(0, s²): a(t) x, with
  a(t) = Cov(ε - x0, x_t) / Var(x_t) = (t - (1 - t) s²) / ((1 - t)² s² + t²)."""
  a = lambda t: (t - (1 - t) * s**2) / ((1 - t) ** 2 * s**2 + t**2)
  return a, lambda x, t: a(t)[:, None] * x


def test_the_flow_distillation_target_is_two_euler_steps_in_one():
  """For straight trajectories (data at one point c: v = (x - c)/t) the target is the teacher's own
  velocity (Euler is exact there); for N(0, s²) data the regression of the target on z_t is the
  slope of two Euler steps of a(t) x, (1 + Δ1 a(t))(1 + Δ2 a(t_mid)) - 1 over Δ, computed apart."""
  from ddpm_jax import flow

  z = jax.random.normal(jax.random.key(0), (4096, 1))
  t, t_mid, t_s = (jnp.full((4096,), value) for value in (0.9, 0.6, 0.3))
  c = 0.7
  straight = lambda x, t: (x - c) / t[:, None]
  np.testing.assert_allclose(
    flow.euler_distillation_target(straight, z, t, t_mid, t_s), straight(z, t), atol=1e-5
  )
  a, curved = gaussian_data_velocity(0.5)
  target = flow.euler_distillation_target(curved, z, t, t_mid, t_s)
  slope = float(jnp.sum(target * z) / jnp.sum(z * z))  # least squares: the target is linear
  a1, a2 = float(a(np.float64(0.9))), float(a(np.float64(0.6)))
  want = ((1 + (0.6 - 0.9) * a1) * (1 + (0.3 - 0.6) * a2) - 1) / (0.3 - 0.9)
  assert slope == pytest.approx(want, rel=1e-5)
  assert abs(slope - a1) > 0.05  # (curved: one step of the teacher's own velocity would miss)


@pytest.fixture(scope="module")
def flow_teacher_workdir(tmp_path_factory):
  """A 'flow' run of the digits at its (random) initial weights, on a shifted grid."""
  from configs import default as default_config
  from ddpm_jax.convert import presets
  from ddpm_jax.jobs.train_state import create_train_state

  workdir = str(tmp_path_factory.mktemp("flow_teacher"))
  config = default_config.get_config("flow")
  config.flow.shift = 2.0
  state = create_train_state(config, jax.random.key(7))
  presets.write_workdir(config, state.params, workdir, "test", "random initial weights")
  return workdir


@pytest.mark.slow  # (a flow student compiled, trained 4 steps and sampled)
def test_a_flow_teacher_is_distilled_round_by_round_and_its_student_samples(flow_teacher_workdir):
  from ddpm_jax import families, flow
  from ddpm_jax.families.config_validation import InvalidConfigError, validate_config
  from ddpm_jax.jobs import sample as sample_lib
  from ddpm_jax.jobs import train
  from ddpm_jax.runtime import parallel

  def make_config(sampler="euler"):
    config = distill_config(flow_teacher_workdir)
    config.sampling.sampler = sampler
    return families.completed(config)

  config = make_config()
  validate_config(config)
  assert config.flow.shift == 2.0 and config.training.init_from_workdir == flow_teacher_workdir
  with pytest.raises(InvalidConfigError, match="a distilled flow student samples with 'euler'"):
    validate_config(make_config(sampler="heun"))
  unread = make_config()
  unread.diffusion.mean_type = "v"
  with pytest.raises(InvalidConfigError, match="diffusion.mean_type='v' is not read by"):
    validate_config(unread)
  # round 0's draws: times of the teacher's 8-step shifted grid at even points
  family = families.get_family(config)
  state = train.create_train_state(config, jax.random.key(0))
  batch = {"image": jnp.zeros((8, 8, 8, 1)), "label": jnp.zeros(8, jnp.int32)}
  draws = family.draw(families.step_keys(jax.random.key(2)), batch, state.family_state)
  grid = flow.timesteps(8, 2.0)[::-1]
  assert set(np.round(np.asarray(draws["t"]), 6)) <= set(np.round(grid[2::2], 6))
  final = train.train_and_evaluate(config, str(flow_teacher_workdir) + "_student")
  assert int(final.family_state["round"]) == 1
  images, _ = sample_lib.generate(config, final.ema_params, 4, parallel.make_mesh())
  assert images.shape == (4, 8, 8, 1)
