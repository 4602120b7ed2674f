"""Researchers' own checkpoints, converted from the flags their training scripts were given: the
flags read as guided-diffusion's and improved-diffusion's scripts read them, and the converted
models sampled through the pipeline equal the reference's samplers from the same noise (DDIM, with
and without classifier guidance; T = 4000 with t rescaled as improved-diffusion's default)."""

import json
import subprocess
import sys

from guided_diffusion import script_util
import jax
import numpy as np
import pytest
from test_convert import FAST_COMPILING, randomized
import torch

import ddpm_jax
from ddpm_jax import convert
from ddpm_jax.convert import guided_diffusion, presets
from helpers import REPO


def test_the_defaults_are_the_reference_scripts():
  assert guided_diffusion.MODEL_AND_DIFFUSION_DEFAULTS == script_util.model_and_diffusion_defaults()
  assert (
    guided_diffusion.CLASSIFIER_AND_DIFFUSION_DEFAULTS
    == script_util.classifier_and_diffusion_defaults()
  )
  assert (
    guided_diffusion.SR_MODEL_AND_DIFFUSION_DEFAULTS
    == script_util.sr_model_and_diffusion_defaults()
  )


def test_flags_are_read_onto_the_defaults_with_their_types():
  flags = convert.parse_model_flags(
    "--attention_resolutions 16 --dropout 0 --class_cond yes --image_size=32 --num_channels 64"
  )
  assert flags["attention_resolutions"] == "16" and flags["dropout"] == 0.0
  assert isinstance(flags["dropout"], float) and flags["class_cond"] is True
  assert flags["image_size"] == 32 and flags["num_channels"] == 64
  assert flags["num_heads"] == 4 and flags["use_scale_shift_norm"] is True  # the defaults'
  improved = convert.parse_model_flags(
    "--image_size 32", guided_diffusion.IMPROVED_DIFFUSION_DEFAULTS
  )
  assert improved["rescale_timesteps"] is True and improved["rescale_learned_sigmas"] is True
  for text, message in [
    ("--num_head 4", "Unknown flag --num_head; the source's flags: image_size"),
    ("--class_cond maybe", "--class_cond maybe: expected a bool"),
    ("--num_channels 12.5", "--num_channels 12.5: expected a int"),
    ("--image_size", "'--name value' pairs"),
  ]:
    with pytest.raises(ValueError, match=message):
      convert.parse_model_flags(text)


@pytest.mark.parametrize(
  "flags,expected",
  [
    ({}, dict(mean_type="eps", var_type="fixed_large", loss_type="mse", rescale_timesteps=False)),
    ({"learn_sigma": True}, dict(var_type="learned_range", loss_type="mse")),  # L_simple + L_t
    ({"learn_sigma": True, "rescale_learned_sigmas": True}, dict(loss_type="hybrid")),
    ({"learn_sigma": True, "use_kl": True}, dict(loss_type="rescaled_kl")),
    ({"predict_xstart": True, "rescale_timesteps": True}, dict(mean_type="x0")),
    ({"sigma_small": True}, dict(var_type="fixed_small")),
  ],
)
def test_every_diffusion_flag_is_honoured(flags, expected):
  base = {**guided_diffusion.IMPROVED_DIFFUSION_DEFAULTS, "rescale_timesteps": False}
  base["rescale_learned_sigmas"] = False
  diffusion_config, _ = presets.diffusion_settings({**base, **flags})
  assert {k: diffusion_config[k] for k in expected} == expected


def test_the_converted_loss_is_the_references(tmp_path):
  """guided-diffusion's training loss (L_simple + L_t, rescaled, KL) at T = 400 with t rescaled,
  on the converted network and config, equals the reference's training_losses."""
  flags = {**script_util.model_and_diffusion_defaults(), "diffusion_steps": 400}
  flags |= dict(image_size=16, num_channels=32, num_res_blocks=1, channel_mult="1,2")
  flags |= dict(attention_resolutions="8", learn_sigma=True, num_heads=2, rescale_timesteps=True)
  reference = randomized(script_util.create_model_and_diffusion(**flags)[0])
  state_dict = reference.state_dict()
  params = convert.from_guided_diffusion(state_dict, **presets.create_model_kwargs(flags))[1]
  rng = np.random.default_rng(0)
  x0 = rng.uniform(-1, 1, (3, 16, 16, 3)).astype(np.float32)
  noise = rng.normal(size=x0.shape).astype(np.float32)
  # t > 0: at t = 0 the decoder NLL takes the exact normal CDF, the reference a tanh approximation
  t = np.array([1, 171, 399])
  for options in [{}, {"rescale_learned_sigmas": True}, {"use_kl": True}]:
    reference_diffusion = script_util.create_model_and_diffusion(**{**flags, **options})[1]
    with torch.no_grad():
      want = reference_diffusion.training_losses(
        reference,
        torch.from_numpy(x0.transpose(0, 3, 1, 2)),
        torch.from_numpy(t),
        noise=torch.from_numpy(noise.transpose(0, 3, 1, 2)),
      )["loss"].numpy()
    config = convert.guided_diffusion_config({**flags, **options})
    config.model.conv_impl = FAST_COMPILING
    family = ddpm_jax.families.get_family(config)
    draws = {"t": t, "eps": noise, "labels": None, "conditions": {}}
    got = family.loss(params, {"image": x0}, draws, None)
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-4, err_msg=str(options))


def _workdir(tmp_path, name, source, reference, flags_text):
  """The command line's conversion of `reference`'s weights with `flags_text`."""
  torch.save(reference.state_dict(), tmp_path / f"{name}.pt")
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "ddpm_jax.convert",
      f"--source={source}",
      f"--checkpoint={tmp_path / name}.pt",
      f"--workdir={tmp_path / name}",
      f"--model_flags={flags_text}",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
  )
  assert result.returncode == 0, result.stderr[-2000:]
  # XLA's convolutions compile faster: in config.json, for everything that reads the workdir
  path = tmp_path / name / "config.json"
  config = json.loads(path.read_text())
  config["model"]["conv_impl"] = FAST_COMPILING
  path.write_text(json.dumps(config))
  return ddpm_jax.load(str(tmp_path / name))


def _flags_text(flags: dict) -> str:
  return " ".join(f"--{k} {v}" for k, v in flags.items())


def _reference_ddim(diffusion_flags, model, noise, labels=None, cond_fn=None):
  reference_diffusion = script_util.create_gaussian_diffusion(**diffusion_flags)
  with torch.no_grad() if cond_fn is None else torch.enable_grad():
    sample = reference_diffusion.ddim_sample_loop(
      model,
      noise.shape,
      noise=torch.from_numpy(noise),
      clip_denoised=True,
      model_kwargs={} if labels is None else {"y": torch.from_numpy(labels)},
      cond_fn=cond_fn,
    )
  return sample.detach().numpy().transpose(0, 2, 3, 1)


def test_flags_left_to_the_defaults_convert_and_sample_as_the_reference(tmp_path):
  """MODEL_FLAGS without --num_heads / --use_scale_shift_norm (guided-diffusion's defaults: 4 heads,
  AdaGN), attention_resolutions as one number: the workdir's DDIM samples are the reference's."""
  given = dict(image_size=16, num_channels=64, num_res_blocks=1, channel_mult="1,2")
  given |= dict(attention_resolutions=8, learn_sigma=True, diffusion_steps=100)
  given["timestep_respacing"] = "ddim10"
  flags = {**script_util.model_and_diffusion_defaults(), **given, "attention_resolutions": "8"}
  reference = randomized(script_util.create_model_and_diffusion(**flags)[0])
  pipe = _workdir(tmp_path, "model", "guided_diffusion", reference, _flags_text(given))
  assert pipe.config.model.num_heads == 4 and pipe.config.model.scale_shift_norm
  assert (pipe.config.sampling.sampler, pipe.config.sampling.num_steps) == ("ddim", 10)
  noise = np.random.default_rng(3).normal(size=(2, 3, 16, 16)).astype(np.float32)
  diffusion_flags = dict(steps=100, learn_sigma=True, timestep_respacing="ddim10")
  want = _reference_ddim(diffusion_flags, reference, noise)
  got = pipe.sample(2, x_T=noise.transpose(0, 2, 3, 1), uint8=False)
  np.testing.assert_allclose(got, want, atol=2e-4)


def test_improved_diffusion_flags_at_4000_steps_with_rescaled_t_sample_as_the_reference(tmp_path):
  """improved-diffusion's CIFAR-10 recipe (its defaults: rescale_timesteps, rescaled learned
  sigmas; T = 4000, cosine), small: the network it builds is guided-diffusion's with its
  channel_mult by image size, so the reference is guided-diffusion's code with the same flags."""
  given = dict(image_size=32, num_channels=32, num_res_blocks=1, learn_sigma=True, dropout=0.3)
  given |= dict(diffusion_steps=4000, noise_schedule="cosine", timestep_respacing="ddim25")
  reference = randomized(
    script_util.create_model(
      32, 32, 1, channel_mult="1,2,2,2", learn_sigma=True, num_heads=4, dropout=0.3,
      attention_resolutions="16,8", use_scale_shift_norm=True,
    )
  )  # fmt: skip
  pipe = _workdir(tmp_path, "iddpm", "improved_diffusion", reference, _flags_text(given))
  assert pipe.config.diffusion.rescale_timesteps and pipe.config.diffusion.loss_type == "hybrid"
  noise = np.random.default_rng(4).normal(size=(2, 3, 32, 32)).astype(np.float32)
  diffusion_flags = dict(steps=4000, learn_sigma=True, noise_schedule="cosine")
  diffusion_flags |= dict(rescale_timesteps=True, timestep_respacing="ddim25")
  want = _reference_ddim(diffusion_flags, reference, noise)
  got = pipe.sample(2, x_T=noise.transpose(0, 2, 3, 1), uint8=False)
  np.testing.assert_allclose(got, want, atol=2e-4)
  # t unscaled, as before the flag was honoured, is another sampler: the check can fail
  unscaled = dict(diffusion_flags, rescale_timesteps=False)
  assert np.max(np.abs(_reference_ddim(unscaled, reference, noise) - got)) > 1e-2


def test_classifier_guided_ddim_through_the_pipeline_is_the_references(tmp_path):
  given = dict(image_size=64, num_channels=32, num_res_blocks=1, channel_mult="1,2")
  given |= dict(attention_resolutions="32", learn_sigma=True, class_cond=True)
  given |= dict(diffusion_steps=100, timestep_respacing="ddim8")
  flags = {**script_util.model_and_diffusion_defaults(), **given}
  reference = randomized(script_util.create_model_and_diffusion(**flags)[0])
  pipe = _workdir(tmp_path, "model", "guided_diffusion", reference, _flags_text(given))
  classifier_given = dict(image_size=64, classifier_width=64, classifier_depth=1)
  classifier_given |= dict(classifier_attention_resolutions="16", diffusion_steps=100)
  classifier_flags = {**script_util.classifier_and_diffusion_defaults(), **classifier_given}
  classifier = randomized(
    script_util.create_classifier(
      **{k: classifier_flags[k] for k in script_util.classifier_defaults()}
    )
  )
  classifier_pipe = _workdir(
    tmp_path, "classifier", "guided_diffusion_classifier", classifier, _flags_text(classifier_given)
  )
  classifier_dir = tmp_path / "classifier"
  noise = np.random.default_rng(5).normal(size=(2, 3, 64, 64)).astype(np.float32)
  labels, scale = np.array([3, 7]), 4.0

  def cond_fn(x, t, y=None):  # guided-diffusion's classifier_sample.py
    with torch.enable_grad():
      x_in = x.detach().requires_grad_(True)
      log_probs = torch.nn.functional.log_softmax(classifier(x_in, t), dim=-1)
      selected = log_probs[range(len(log_probs)), y.view(-1)]
      return torch.autograd.grad(selected.sum(), x_in)[0] * scale

  diffusion_flags = dict(steps=100, learn_sigma=True, timestep_respacing="ddim8")
  unguided = _reference_ddim(diffusion_flags, reference, noise, labels)
  for guide in (None, cond_fn):
    want = (
      unguided
      if guide is None
      else _reference_ddim(diffusion_flags, reference, noise, labels, guide)
    )
    got = pipe.sample(
      2,
      labels=labels,
      x_T=noise.transpose(0, 2, 3, 1),
      uint8=False,
      classifier=None if guide is None else classifier_pipe,
      classifier_scale=None if guide is None else scale,
    )
    np.testing.assert_allclose(got, want, atol=5e-4, err_msg=f"guided: {guide is not None}")
  assert np.max(np.abs(got - unguided)) > 1e-2
  # the same guided samples by --mode=sample's path with the classifier the config names
  # (sampling.classifier_workdir), and by the pipeline with its config's classifier
  from ddpm_jax.families import Cond
  from ddpm_jax.jobs import sample as sample_lib

  config, x_T = pipe.config.copy_and_resolve_references(), noise.transpose(0, 2, 3, 1)
  config.sampling.batch_size = 2
  config.sampling.classifier_workdir, config.sampling.classifier_scale = str(classifier_dir), scale
  cond = Cond(label=labels)
  images, _ = sample_lib.generate(
    config, pipe.params, 2, pipe.mesh, cond=cond, x_T=x_T, uint8=False
  )
  np.testing.assert_allclose(images, want, atol=5e-4)
  pipe.config.sampling.classifier_workdir, pipe.config.sampling.classifier_scale = (
    str(classifier_dir),
    scale,
  )
  np.testing.assert_allclose(pipe.sample(2, labels=labels, x_T=x_T, uint8=False), want, atol=5e-4)
  with pytest.raises(ValueError, match="Classifier guidance needs labels"):
    pipe.sample(2)
  # and on a σ-space solver (D + σ² s ∇ log p(y | x); exact on Gaussian mixtures in
  # test_sigma_sampling.py), through the same pipeline
  heun = {
    scale: pipe.sample(
      2, sampler="heun", num_steps=3, labels=labels, x_T=noise.transpose(0, 2, 3, 1),
      uint8=False, classifier=classifier_pipe, classifier_scale=scale,
    )
    for scale in (0.0, scale)
  }  # fmt: skip
  assert np.all(np.isfinite(heun[scale])) and np.max(np.abs(heun[scale] - heun[0.0])) > 1e-3


def test_a_wrong_flag_is_one_line_naming_it(tmp_path):
  reference = randomized(script_util.create_model(16, 32, 1, channel_mult="1,2"))
  torch.save(reference.state_dict(), tmp_path / "m.pt")
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "ddpm_jax.convert",
      "--source=guided_diffusion",
      f"--checkpoint={tmp_path / 'm.pt'}",
      f"--workdir={tmp_path / 'out'}",
      "--model_flags=--image_size 16 --num_chanels 32",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
  )
  assert result.returncode != 0 and "Traceback" not in result.stderr
  assert "Unknown flag --num_chanels" in result.stderr
  jax.clear_caches()


def test_params_that_do_not_fit_the_config_are_refused_before_a_workdir_is_written(tmp_path):
  flags = dict(image_size=16, num_channels=32, num_res_blocks=1, channel_mult="1,2")
  reference = randomized(script_util.create_model(**flags, use_scale_shift_norm=False))
  params = convert.from_guided_diffusion(reference.state_dict(), **flags)[1]
  config = convert.guided_diffusion_config(flags)  # the scripts' default: use_scale_shift_norm
  with pytest.raises(ValueError, match="do not fit config.model"):
    convert.write_workdir(config, params, str(tmp_path / "w"), "guided_diffusion", "m.pt")
  assert not (tmp_path / "w").exists()
