"""The public math and sampling functions given wrong ranks, dtypes or mismatched batch sizes raise
a ValueError naming the argument, at trace time (before anything compiles), not an error from
deep inside."""

from conftest import make
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_jax import diffusion, editing, sampling, schedules, sde, vdm

D = make(schedules.get_beta_schedule("linear", 100))
X = jnp.zeros((2, 4, 4, 1))
T = jnp.array([3, 7])
ZERO_EPS = lambda x, t: jnp.zeros_like(x)  # noqa: E731
VP = sde.VPSDE(N=10)
SCHEDULE = vdm.init_schedule(None, "fixed")

CASES = [
  ("q_sample, x0 of ints", lambda: diffusion.q_sample(D, X.astype(jnp.int32), T, X), "x0 must be"),
  ("q_sample, float t", lambda: diffusion.q_sample(D, X, T.astype(jnp.float32), X), "t must be"),
  ("q_sample, t of another batch", lambda: diffusion.q_sample(D, X, T[:1], X), "t must have"),
  ("q_sample, noise of another batch", lambda: diffusion.q_sample(D, X, T, X[:1]), "noise must"),
  ("q_sample, a vector x0", lambda: diffusion.q_sample(D, X[:, 0, 0, 0], T, X), "x0 must be"),
  ("posterior, x0 mismatched", lambda: diffusion.q_posterior_mean_variance(D, X[:1], X, T), "x0"),
  ("p_mean_variance, output", lambda: diffusion.p_mean_variance(D, X[:1], X, T), "model_output"),
  ("training_losses, t", lambda: diffusion.training_losses(D, ZERO_EPS, X, T[:1], X), "t must"),
  ("vb_terms_bpd, x_t", lambda: diffusion.vb_terms_bpd(D, X, X, X[:1], T), "x_t must"),
  (
    "ddpm_sample, shape",
    lambda: sampling.ddpm_sample(D, ZERO_EPS, jax.random.key(0), (2,)),
    "shape",
  ),
  (
    "ddim_sample, x_T ints",
    lambda: sampling.ddim_sample(
      D, ZERO_EPS, jax.random.key(0), x_T=X.astype(jnp.int32), num_steps=5
    ),
    "x_T must",
  ),
  (
    "sigma_sample, x rank 1",
    lambda: sampling.sigma_sample(lambda x, s: x, jnp.zeros(3), jnp.array([1.0, 0.0]), "euler"),
    "x must",
  ),
  ("dsm_loss, t", lambda: sde.dsm_loss(VP, lambda x, t: x, X, jnp.ones(3), X), "t must have"),
  (
    "vdm.vlb_terms, noise",
    lambda: vdm.vlb_terms(SCHEDULE, lambda z, g: z, X, jnp.ones(2) / 2, X[:1], X),
    "noise must",
  ),
  (
    "inpaint, mask images",
    lambda: editing.inpaint(D, ZERO_EPS, jax.random.key(0), X[0], jnp.ones((4, 4, 1))),
    "x_known must",
  ),
]


@pytest.mark.parametrize("name,call,message", CASES, ids=[case[0] for case in CASES])
def test_bad_arguments_raise_a_value_error_naming_them(name, call, message):
  with pytest.raises(ValueError, match=message):
    jax.eval_shape(call)  # traced only: the check comes before any computation


def test_the_checked_functions_still_take_good_arguments():
  out = jax.eval_shape(lambda: diffusion.q_sample(D, X, T, X))
  assert out.shape == X.shape and np.dtype(out.dtype) == np.float32
  assert jax.eval_shape(lambda: sde.dsm_loss(VP, lambda x, t: x, X, jnp.ones(2) / 2, X)).shape == (
    2,
  )
