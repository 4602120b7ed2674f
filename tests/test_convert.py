"""Checkpoint import: openai's guided_diffusion UNetModel (the guided-diffusion-sdk package) with
random weights, converted, gives the reference's output for every architecture option."""

import json
import os
import pickle

from guided_diffusion import script_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from ddpm_jax import convert, models

SMALL = dict(
  image_size=16, num_channels=32, num_res_blocks=1, channel_mult="1,2", attention_resolutions="16,8"
)
OPTIONS = {
  "ddpm_like": {},
  "adm": dict(
    num_head_channels=16,
    use_scale_shift_norm=True,
    resblock_updown=True,
    learn_sigma=True,
    class_cond=True,
  ),
  "heads_upsample": dict(num_heads=2, num_heads_upsample=4),
  "new_attention_order": dict(num_heads=2, use_new_attention_order=True),
  "three_levels_dropout": dict(
    channel_mult="1,1,2",
    num_res_blocks=2,
    dropout=0.1,
    attention_resolutions="4",
    use_scale_shift_norm=True,
  ),
  # resolutions the network has no level of (32; 3, i.e. ds = 5): the reference ignores them
  "absent_attention_resolutions": dict(attention_resolutions="8,32,3"),
}

# the converted workdirs' U-Nets with XLA's convolutions: "auto" (Winograd on CPU from 16×16) is the
# faster at run time, but compiles slower than the few calls of a test repay
FAST_COMPILING = "xla"


def randomized(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
  """Random weights everywhere, the zero-initialised output layers included (they would hide
  errors), scaled so that activations stay O(1)."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in module.named_parameters():
      if p.ndim > 1:
        p.copy_(torch.randn(p.shape, generator=gen) * (1.0 / p[0].numel()) ** 0.5)
      elif "norm" in name or name.endswith("in_layers.0.weight") or ".0.weight" in name:
        p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
      else:
        p.copy_(0.1 * torch.randn(p.shape, generator=gen))
  return module.eval()


def reference_and_converted(options):
  kwargs = {**SMALL, **options}
  reference = randomized(script_util.create_model(**kwargs))
  model_config, params = convert.from_guided_diffusion(reference.state_dict(), **kwargs)
  return reference, models.get_model(model_config), params


def outputs(reference, model, params, class_cond: bool, batch: int = 3):
  rng = np.random.default_rng(1)
  x = rng.normal(size=(batch, 16, 16, 3)).astype(np.float32)
  t = np.array([0, 417, 999][:batch])
  y = rng.integers(0, 1000, batch) if class_cond else None
  with torch.no_grad():
    want = reference(
      torch.from_numpy(x.transpose(0, 3, 1, 2)),
      torch.from_numpy(t),
      None if y is None else torch.from_numpy(y),
    ).numpy()
  got = jax.jit(model.apply)(
    params, jnp.asarray(x), jnp.asarray(t), None if y is None else jnp.asarray(y)
  )
  return np.asarray(got).transpose(0, 3, 1, 2), want


@pytest.mark.parametrize("name", OPTIONS)
def test_converted_unet_gives_guided_diffusions_output(name):
  options = OPTIONS[name]
  reference, model, params = reference_and_converted(options)
  got, want = outputs(reference, model, params, options.get("class_cond", False))
  assert got.shape == want.shape
  assert np.max(np.abs(got - want)) <= 1e-4 * np.max(np.abs(want)), name


def test_attention_resolutions_as_one_number_or_absent_levels_convert(caplog):
  # `--attention_resolutions 8` parses as the number 8; a resolution of no level is ignored
  one = convert.guided_diffusion_model_config(**{**SMALL, "attention_resolutions": 8})
  assert one.attn_resolutions == (8,)
  with caplog.at_level("WARNING"):
    absent = convert.guided_diffusion_model_config(**{**SMALL, "attention_resolutions": "8,32,3"})
  assert absent.attn_resolutions == (8,) and "ignored" in caplog.text
  classifier = convert.guided_diffusion_classifier_config(64, classifier_attention_resolutions=16)
  assert classifier.attn_resolutions == (16,)


def test_a_checkpoint_trained_in_fp16_converts_to_float32():
  options = dict(num_head_channels=16, use_scale_shift_norm=True)
  reference = randomized(script_util.create_model(**SMALL, **options))
  # saved in half precision; the reference runs (in float32, on the CPU) on the same rounded values
  half = {k: v.half() for k, v in reference.state_dict().items()}
  reference.load_state_dict({k: v.float() for k, v in half.items()})
  model_config, params = convert.from_guided_diffusion(half, **SMALL, **options, use_fp16=True)
  assert model_config.dtype == "float32"
  got, want = outputs(reference, models.get_model(model_config), params, False)
  assert np.max(np.abs(got - want)) <= 1e-4 * np.max(np.abs(want))


def test_flags_that_do_not_fit_the_checkpoint_name_the_keys_and_shapes():
  state_dict = script_util.create_model(**SMALL, learn_sigma=True).state_dict()
  with pytest.raises(ValueError, match=r"shapes that differ.*conv_out.*\(3, 3, 32, 6\)"):
    convert.from_guided_diffusion(state_dict, **SMALL)  # learn_sigma forgotten: 3 outputs
  with pytest.raises(ValueError, match=r"missing keys \(1\): label_emb.weight"):
    convert.from_guided_diffusion(state_dict, **SMALL, learn_sigma=True, class_cond=True)
  with pytest.raises(ValueError, match=r"unexpected keys \(\d+\): input_blocks.1.1.norm.bias"):
    convert.from_guided_diffusion(
      state_dict, **{**SMALL, "attention_resolutions": "8"}, learn_sigma=True
    )


class _RunsCode:
  def __reduce__(self):
    return (os.system, ("touch ran_code_from_checkpoint",))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  path = tmp_path / "evil.pt"
  with open(path, "wb") as f:
    pickle.dump({"conv.weight": _RunsCode()}, f)
  with pytest.raises(ValueError, match="could run code"):
    convert.from_guided_diffusion(str(path), **SMALL)
  assert not (tmp_path / "ran_code_from_checkpoint").exists()


def test_a_pt_file_of_plain_tensors_loads(tmp_path):
  reference = randomized(script_util.create_model(**SMALL))
  torch.save(reference.state_dict(), tmp_path / "model.pt")
  model_config, params = convert.from_guided_diffusion(str(tmp_path / "model.pt"), **SMALL)
  got, want = outputs(reference, models.get_model(model_config), params, False, batch=1)
  assert np.max(np.abs(got - want)) <= 1e-4 * np.max(np.abs(want))


def test_adm_imagenet64_preset_has_create_models_parameter_count():
  import importlib

  import jax

  config = importlib.import_module("configs.adm_imagenet64").get_config()
  flags = dict(
    image_size=64,
    num_channels=192,
    num_res_blocks=3,
    attention_resolutions="32,16,8",
    num_head_channels=64,
    resblock_updown=True,
    use_scale_shift_norm=True,
    learn_sigma=True,
    class_cond=True,
    dropout=0.1,
  )
  reference = sum(p.numel() for p in script_util.create_model(**flags).parameters())
  assert reference == 295_904_454
  shapes = jax.eval_shape(
    models.get_model(config.model).init,
    jax.random.key(0),
    jnp.zeros((1, 64, 64, 3)),
    jnp.zeros((1,), jnp.int32),
  )
  assert sum(np.prod(p.shape) for p in jax.tree_util.tree_leaves(shapes)) == reference
  converted = convert.guided_diffusion_model_config(**flags)
  for field in converted:
    if field != "dtype":
      assert tuple(np.atleast_1d(converted[field])) == tuple(np.atleast_1d(config.model[field])), (
        field
      )


def test_the_command_writes_a_workdir_that_loads_samples_and_evaluates(tmp_path):
  import subprocess
  import sys

  import jax

  from configs import workdir as workdir_config
  import ddpm_jax
  from ddpm_jax import main as main_lib
  from ddpm_jax.jobs import sample as sample_lib
  from helpers import REPO

  options = dict(
    num_head_channels=16,
    use_scale_shift_norm=True,
    resblock_updown=True,
    learn_sigma=True,
    class_cond=True,
    use_new_attention_order=True,
  )
  reference = randomized(script_util.create_model(**SMALL, **options))
  torch.save(reference.state_dict(), tmp_path / "model.pt")
  flags = " ".join(f"--{k} {v}" for k, v in {**SMALL, **options}.items())
  workdir = tmp_path / "converted"
  subprocess.run(
    [
      sys.executable,
      "-m",
      "ddpm_jax.convert",
      "--source=guided_diffusion",
      f"--checkpoint={tmp_path / 'model.pt'}",
      f"--workdir={workdir}",
      f"--model_flags={flags} --diffusion_steps 40 --noise_schedule cosine",
    ],
    cwd=REPO,
    check=True,
    capture_output=True,
  )
  config = workdir_config.get_config(str(workdir))
  config.model.conv_impl = FAST_COMPILING
  pipe = ddpm_jax.load(str(workdir), config)
  assert (
    pipe.config.diffusion.num_timesteps == 40 and pipe.config.diffusion.beta_schedule == "cosine"
  )
  assert pipe.config.diffusion.var_type == "learned_range" and pipe.config.model.num_classes == 1000
  assert "EMA" in pipe.config.convert.weights
  got, want = outputs(reference, pipe.family.model, pipe.params, True)
  assert np.max(np.abs(got - want)) <= 1e-4 * np.max(np.abs(want))
  images = pipe.sample(2, num_steps=4, labels=[3, 999])
  assert images.shape == (2, 16, 16, 3) and images.dtype == np.uint8
  # the command line's --config=workdir:DIR reads the same config.json
  argv = main_lib.shipped_config_paths([f"--config=workdir:{workdir}"])
  assert argv[0].endswith(f"configs/workdir.py:{workdir}")
  config.sampling.num_samples, config.sampling.batch_size, config.sampling.num_steps = 2, 2, 4
  assert np.load(sample_lib.sample(config, str(workdir)))["images"].shape == (2, 16, 16, 3)
  # --mode=eval on the converted workdir: held-out bits/dim of an image folder with class folders
  from PIL import Image

  from ddpm_jax.jobs import evaluate

  rng = np.random.default_rng(0)
  for split, label in [("train", "a"), ("test", "a"), ("test", "b")]:
    (tmp_path / "images" / split / label).mkdir(parents=True)
    pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "images" / split / label / "0.png")
  config.data.data_dir, config.data.num_workers = str(tmp_path / "images"), 0
  config.training.batch_size, config.eval.bpd_num_batches, config.eval.num_fid_samples = 2, 1, 0
  results = evaluate.evaluate(config, str(workdir))
  # the VLB of a random-weight model (learned variances far from the posterior's): finite, > 0
  assert set(results) == {"loss", "bpd"} and np.isfinite(results["loss"])
  assert 0 < results["bpd"] < np.inf
  assert json.loads((workdir / "eval_0.json").read_text())["bpd"] == results["bpd"]
  del jax


DIFFUSERS_OPTIONS = {
  # google/ddpm-cifar10-32's conventions at a small size
  "ddpm": dict(downsample_padding=0, norm_eps=1e-6, flip_sin_to_cos=False, freq_shift=1),
  "multi_head_cos_first": dict(
    flip_sin_to_cos=True,
    freq_shift=0,
    dropout=0.1,
    attention_head_dim=16,
    layers_per_block=2,
  ),
}


@pytest.mark.parametrize("name", DIFFUSERS_OPTIONS)
def test_converted_diffusers_unet_gives_its_output(name, tmp_path):
  from diffusers import UNet2DModel

  options = {"layers_per_block": 1, "attention_head_dim": None, **DIFFUSERS_OPTIONS[name]}
  reference = randomized(
    UNet2DModel(
      sample_size=16,
      in_channels=3,
      out_channels=3,
      block_out_channels=(32, 64, 64),
      down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
      up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
      **options,
    )
  )
  reference.save_pretrained(tmp_path / "unet")  # config.json + safetensors
  model_config, params = convert.from_diffusers(str(tmp_path / "unet"))
  rng = np.random.default_rng(2)
  x = rng.normal(size=(2, 16, 16, 3)).astype(np.float32)
  t = np.array([3, 871])
  with torch.no_grad():
    want = reference(torch.from_numpy(x.transpose(0, 3, 1, 2)), torch.from_numpy(t)).sample.numpy()
  got = jax.jit(models.get_model(model_config).apply)(params, jnp.asarray(x), jnp.asarray(t))
  got = np.asarray(got).transpose(0, 3, 1, 2)
  assert np.max(np.abs(got - want)) <= 1e-4 * np.max(np.abs(want)), name


def test_diffusers_options_the_converter_lacks_are_named():
  config = dict(
    sample_size=16,
    out_channels=3,
    block_out_channels=(32, 64),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D"),
    layers_per_block=1,
    time_embedding_type="fourier",
    resnet_time_scale_shift="scale_shift",
  )
  with pytest.raises(
    ValueError, match="block types.*time_embedding_type='fourier'.*resnet_time_scale_shift"
  ):
    convert.diffusers_model_config(config)


def test_a_diffusers_ddpm_pipeline_directory_becomes_a_workdir(tmp_path):
  from diffusers import DDPMScheduler, UNet2DModel

  import ddpm_jax

  reference = randomized(
    UNet2DModel(
      sample_size=16,
      in_channels=3,
      out_channels=3,
      block_out_channels=(32, 64),
      down_block_types=("DownBlock2D", "AttnDownBlock2D"),
      up_block_types=("AttnUpBlock2D", "UpBlock2D"),
      layers_per_block=1,
      attention_head_dim=None,
      **DIFFUSERS_OPTIONS["ddpm"],
    )
  )
  reference.save_pretrained(tmp_path / "pipeline" / "unet")
  DDPMScheduler(
    num_train_timesteps=50, beta_schedule="squaredcos_cap_v2", variance_type="fixed_large"
  ).save_config(tmp_path / "pipeline" / "scheduler")
  config, params = convert.diffusers_config(str(tmp_path / "pipeline"), "celeb_a_hq/256")
  assert (config.diffusion.num_timesteps, config.diffusion.beta_schedule) == (50, "cosine")
  assert config.diffusion.var_type == "fixed_large" and config.data.eval_split == "train[95%:]"
  config.model.conv_impl = FAST_COMPILING
  convert.write_workdir(config, params, str(tmp_path / "workdir"), "diffusers", "pipeline")
  pipe = ddpm_jax.load(str(tmp_path / "workdir"))
  x = np.random.default_rng(3).normal(size=(1, 16, 16, 3)).astype(np.float32)
  with torch.no_grad():
    want = reference(torch.from_numpy(x.transpose(0, 3, 1, 2)), torch.tensor([7])).sample.numpy()
  got = np.asarray(jax.jit(pipe.family.model.apply)(pipe.params, jnp.asarray(x), jnp.array([7])))
  assert np.max(np.abs(got.transpose(0, 3, 1, 2) - want)) <= 1e-4 * np.max(np.abs(want))
  assert pipe.sample(1, num_steps=3).shape == (1, 16, 16, 3)


# guided-diffusion's README: the 64×64 classifier (depth 4, the other flags create_classifier's
# defaults)
CLASSIFIER_64 = dict(
  image_size=64,
  classifier_width=128,
  classifier_depth=4,
  classifier_attention_resolutions="32,16,8",
  classifier_use_scale_shift_norm=True,
  classifier_resblock_updown=True,
  classifier_pool="attention",
  classifier_use_fp16=False,
)


def test_converted_noisy_classifier_gives_guided_diffusions_logits():
  kwargs = dict(
    CLASSIFIER_64, classifier_width=64, classifier_depth=1, classifier_attention_resolutions="16,8"
  )
  reference = randomized(script_util.create_classifier(**kwargs))
  model_config, params = convert.from_guided_diffusion_classifier(reference.state_dict(), **kwargs)
  x = np.random.default_rng(4).normal(size=(2, 64, 64, 3)).astype(np.float32)
  t = np.array([5, 640])
  with torch.no_grad():
    want = reference(torch.from_numpy(x.transpose(0, 3, 1, 2)), torch.from_numpy(t)).numpy()
  got = jax.jit(models.get_model(model_config).apply)(params, jnp.asarray(x), jnp.asarray(t))
  assert got.shape == want.shape == (2, 1000)
  assert np.max(np.abs(got - want)) <= 1e-4 * np.max(np.abs(want))


def test_the_64x64_classifier_has_create_classifiers_parameter_count():
  import jax

  kwargs = CLASSIFIER_64
  reference = sum(p.numel() for p in script_util.create_classifier(**kwargs).parameters())
  assert reference == 65_438_568
  model = models.get_model(convert.guided_diffusion_classifier_config(**kwargs))
  shapes = jax.eval_shape(
    model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)), jnp.zeros((1,), jnp.int32)
  )
  assert sum(np.prod(p.shape) for p in jax.tree_util.tree_leaves(shapes)) == reference
