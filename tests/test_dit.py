"""The Diffusion Transformer (models.DiT): the paper's parameter counts, MAE's positions, and the
converted diffusers DiTTransformer2DModel / facebookresearch/DiT checkpoints computing the
reference's output (random weights, small sizes)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_convert import randomized
import torch

from ddpm_jax import convert, models
from ddpm_jax.models import dit

# the paper's Table 4 (millions of parameters) at patch 2 on 32×32×4 latents, 1000 classes with
# learned Σ: the trained parameters (DiT's frozen positional table, grid² · width, is computed here)
PAPER_MILLIONS = {"S": 33, "B": 130, "L": 458, "XL": 675}


def parameter_count(module, shape=(1, 32, 32, 4)):
  tree = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros(shape), jnp.zeros((1,)))
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(tree))


def counted_by_hand(depth, width, patch=2, channels=4, out_channels=8, classes=1000):
  """DiT's models.py layer by layer: patch conv, time MLP, label table, blocks, final layer."""
  block = (width * 6 * width + 6 * width) + (width * 3 * width + 3 * width)
  block += (width * width + width) + (width * 4 * width + 4 * width) + (4 * width * width + width)
  embedders = (channels * patch * patch * width + width) + (256 * width + width)
  embedders += (width * width + width) + (classes + 1) * width
  final = (width * 2 * width + 2 * width) + (width * patch * patch * out_channels)
  return embedders + depth * block + final + patch * patch * out_channels


@pytest.mark.parametrize("size", list(PAPER_MILLIONS))
def test_the_parameter_counts_are_the_papers(size):
  module = dit.DiT(size, 2, out_channels=8, num_classes=1000)
  count = parameter_count(module)
  depth, width, _ = dit.DIT_SIZES[size]
  assert count == counted_by_hand(depth, width)
  assert round(count / 1e6) == PAPER_MILLIONS[size]
  if size == "XL":
    assert count + 16 * 16 * width == 675_129_632  # DiT's train.py prints this for DiT-XL/2


def test_the_converters_size_names_are_table_4s():
  """convert/dit.py reads a checkpoint's size from its width without importing the model."""
  from ddpm_jax.convert import dit as dit_mapping

  assert dit_mapping.DIT_SIZE_NAMES == {width: n for n, (_, width, _) in dit.DIT_SIZES.items()}


def test_the_positions_are_maes():
  from diffusers.models.embeddings import get_2d_sincos_pos_embed

  want = get_2d_sincos_pos_embed(64, 6, base_size=6, output_type="np")
  np.testing.assert_allclose(dit.sincos_2d(64, 6), want, atol=1e-6)


def test_the_network_starts_at_zero_and_remat_keeps_its_parameters():
  module = dit.DiT("S", 4, out_channels=2, num_classes=3, depth=2, hidden_size=64, num_heads=2)
  x = jnp.ones((2, 8, 8, 1))
  t = jnp.array([1.0, 500.0])
  params = jax.jit(module.init)(jax.random.key(0), x, t)
  assert not np.any(np.asarray(jax.jit(module.apply)(params, x, t)))
  # random parameters (the zero-initialised output layer would hide the blocks' gradients)
  rng = np.random.default_rng(1)
  params = jax.tree_util.tree_map(lambda a: 0.1 * rng.normal(size=a.shape).astype(a.dtype), params)
  loss = lambda m: jax.jit(jax.value_and_grad(lambda p: jnp.sum(m.apply(p, x, t) ** 2)))(params)
  value, grads = loss(module)
  for remat in (True, "products"):
    shapes = jax.eval_shape(module.clone(remat=remat).init, jax.random.key(0), x, t)
    assert jax.tree_util.tree_structure(shapes) == jax.tree_util.tree_structure(params)
    remat_value, remat_grads = loss(module.clone(remat=remat))
    np.testing.assert_allclose(remat_value, value, rtol=1e-5)
    jax.tree_util.tree_map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), remat_grads, grads
    )


def small_diffusers_dit(out_channels=8, num_classes=10, seed=0, heads=2, head_width=16, depth=2):
  from diffusers import DiTTransformer2DModel

  return randomized(
    DiTTransformer2DModel(
      num_attention_heads=heads,
      attention_head_dim=head_width,
      in_channels=4,
      out_channels=out_channels,
      num_layers=depth,
      sample_size=8,
      patch_size=2,
      num_embeds_ada_norm=num_classes,
    ),
    seed,
  )


def equal_embedder_copies(reference):
  """diffusers' every block's embedder set to block 0's, as in converted checkpoints."""
  with torch.no_grad():
    first = reference.transformer_blocks[0].norm1.emb.state_dict()
    for block in reference.transformer_blocks[1:]:
      block.norm1.emb.load_state_dict(first)
  return reference


def reference_output(reference, x, t, y):
  with torch.no_grad():
    out = reference(
      torch.from_numpy(x.transpose(0, 3, 1, 2)), torch.from_numpy(t), torch.from_numpy(y)
    )
  return out.sample.numpy().transpose(0, 2, 3, 1)


def inputs(seed=1):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(3, 8, 8, 4)).astype(np.float32)
  return x, np.array([0, 417, 999]), np.array([3, 10, 7])  # 10: the null class ∅


@pytest.mark.parametrize("learned_sigma", [True, False])
def test_a_converted_diffusers_dit_gives_its_output(learned_sigma, tmp_path):
  reference = equal_embedder_copies(small_diffusers_dit(8 if learned_sigma else 4))
  reference.save_pretrained(tmp_path / "transformer")
  (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "DiTPipeline"}))
  x, t, y = inputs()
  want = reference_output(reference, x, t, y)
  for directory in (tmp_path / "transformer", tmp_path):  # the model, and its pipeline
    model_config, params = convert.from_diffusers(str(directory))
    assert model_config.name == "dit" and model_config.out_channels == want.shape[-1]
    got = jax.jit(models.get_model(model_config).apply)(params, x, t, y)
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-4 * np.abs(want).max())


def test_a_diffusers_dit_whose_embedder_copies_differ_is_refused(tmp_path):
  small_diffusers_dit().save_pretrained(tmp_path)  # randomized: every copy its own
  with pytest.raises(ValueError, match="copies of the shared time/class embedder differ"):
    convert.from_diffusers(str(tmp_path))


def as_facebook_state_dict(reference):
  """The diffusers model's weights under facebookresearch/DiT's names (fused qkv, one embedder,
  the frozen positions)."""
  sd = {k: v.numpy() for k, v in reference.state_dict().items()}
  emb = "transformer_blocks.0.norm1.emb."
  width, grid = reference.inner_dim, reference.config.sample_size // reference.config.patch_size
  out = {
    "x_embedder.proj.weight": sd["pos_embed.proj.weight"],
    "x_embedder.proj.bias": sd["pos_embed.proj.bias"],
    "pos_embed": dit.sincos_2d(width, grid)[None],
    "y_embedder.embedding_table.weight": sd[emb + "class_embedder.embedding_table.weight"],
    "final_layer.adaLN_modulation.1.weight": sd["proj_out_1.weight"],
    "final_layer.adaLN_modulation.1.bias": sd["proj_out_1.bias"],
    "final_layer.linear.weight": sd["proj_out_2.weight"],
    "final_layer.linear.bias": sd["proj_out_2.bias"],
  }
  for ours, theirs in (("mlp.0", "linear_1"), ("mlp.2", "linear_2")):
    for kind in ("weight", "bias"):
      out[f"t_embedder.{ours}.{kind}"] = sd[f"{emb}timestep_embedder.{theirs}.{kind}"]
  for i in range(reference.config.num_layers):
    block = f"transformer_blocks.{i}."
    for kind in ("weight", "bias"):
      out[f"blocks.{i}.attn.qkv.{kind}"] = np.concatenate(
        [sd[f"{block}attn1.to_{n}.{kind}"] for n in "qkv"]
      )
      for ours, theirs in (
        ("attn.proj", "attn1.to_out.0"),
        ("mlp.fc1", "ff.net.0.proj"),
        ("mlp.fc2", "ff.net.2"),
        ("adaLN_modulation.1", "norm1.linear"),
      ):
        out[f"blocks.{i}.{ours}.{kind}"] = sd[f"{block}{theirs}.{kind}"]
  return out


def test_a_converted_facebook_dit_checkpoint_computes_the_same_network(tmp_path):
  """DiT's own names read onto the same network: with diffusers' two departures (its sinusoid of
  t, its MLP norm's ε) set, it gives diffusers' output; as read, DiT's own embedder and ε."""
  reference = equal_embedder_copies(small_diffusers_dit())
  state_dict = {k: torch.from_numpy(v) for k, v in as_facebook_state_dict(reference).items()}
  torch.save(state_dict, tmp_path / "DiT-tiny.pt")
  model_config, params = convert.from_dit(str(tmp_path / "DiT-tiny.pt"), num_heads=2)
  assert (model_config.depth, model_config.hidden_size, model_config.num_classes) == (2, 32, 10)
  assert model_config.embedding_type == "adm_positional" and model_config.mlp_norm_eps == 1e-6
  model_config.embedding_type, model_config.mlp_norm_eps = "flipped_positional", 1e-5
  x, t, y = inputs()
  want = reference_output(reference, x, t, y)
  got = models.get_model(model_config).apply(params, x, t, y)
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-4 * np.abs(want).max())
  # a training checkpoint's dict: its "ema" weights
  _, from_training = convert.from_dit({"ema": state_dict, "model": {}}, num_heads=2)
  jax.tree_util.tree_map(np.testing.assert_array_equal, from_training, params)
  del state_dict["blocks.1.mlp.fc2.bias"]
  with pytest.raises(ValueError, match="missing keys .*blocks.1.mlp.fc2.bias"):
    convert.from_dit(state_dict, num_heads=2)


def test_a_pixel_space_dit_pipeline_becomes_a_workdir_and_a_latent_one_is_refused(tmp_path):
  from diffusers import DDIMScheduler, DiTTransformer2DModel

  import ddpm_jax

  reference = equal_embedder_copies(
    randomized(
      DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=3,
        out_channels=6,
        num_layers=2,
        sample_size=8,
        patch_size=2,
        num_embeds_ada_norm=10,
      )
    )
  )
  reference.save_pretrained(tmp_path / "pipeline" / "transformer")
  DDIMScheduler(num_train_timesteps=50).save_config(tmp_path / "pipeline" / "scheduler")
  (tmp_path / "pipeline" / "model_index.json").write_text('{"_class_name": "DiTPipeline"}')
  config, params = convert.diffusers_config(str(tmp_path / "pipeline"))
  assert config.model.name == "dit" and config.diffusion.var_type == "learned_range"
  assert config.diffusion.num_timesteps == 50 and config.model.num_classes == 10
  convert.write_workdir(config, params, str(tmp_path / "workdir"), "diffusers", "pipeline")
  pipe = ddpm_jax.load(str(tmp_path / "workdir"))
  x = np.random.default_rng(3).normal(size=(2, 8, 8, 3)).astype(np.float32)
  t, y = np.array([7, 40]), np.array([2, 10])
  want = reference_output(reference, x, t, y)
  got = np.asarray(pipe.family.model.apply(pipe.params, x, t, y))
  np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max())
  assert pipe.sample(2, num_steps=3, labels=[1, 2]).shape == (2, 8, 8, 3)
  (tmp_path / "pipeline" / "vae").mkdir()
  with pytest.raises(ValueError, match="latent-diffusion pipeline"):
    convert.diffusers_config(str(tmp_path / "pipeline"))


@pytest.mark.slow
def test_a_dit_checkpoint_from_the_command_line_is_read_then_refused_for_its_vae(tmp_path):
  import subprocess
  import sys

  from helpers import REPO

  def write(name, **size):
    reference = equal_embedder_copies(small_diffusers_dit(**size))
    state_dict = {k: torch.from_numpy(v) for k, v in as_facebook_state_dict(reference).items()}
    torch.save(state_dict, tmp_path / name)
    return subprocess.run(
      [sys.executable, "-m", "ddpm_jax.convert", "--source=dit", f"--checkpoint={tmp_path / name}",
       "--preset=DiT-XL/2-256", f"--workdir={tmp_path}/workdir"],
      cwd=REPO, capture_output=True, text=True,
    )  # fmt: skip

  # DiT-S's width (6 heads of 64), one block: read, checked, and refused for the VAE it needs
  result = write("small.pt", heads=6, head_width=64, depth=1)
  assert result.returncode != 0 and "a DiT of 1 blocks of width 384 (read and checked)" in (
    result.stderr
  )
  assert "--autoencoder_workdir" in result.stderr and not (tmp_path / "workdir").exists()
  result = write("tiny.pt")  # width 32 is none of Table 4's: its heads are unknown
  assert result.returncode != 0 and "pass num_heads" in result.stderr


@pytest.mark.parametrize("family_name", ["edm", "score_sde"])
def test_dit_serves_the_other_families_of_an_image_network(family_name):
  """DiT behind EDM's preconditioned denoiser and a score SDE: its loss trains (finite, with a
  gradient reaching every block) and the family's sampler runs on it."""
  import sys

  from helpers import REPO

  sys.path.insert(0, REPO)
  from configs import default
  from ddpm_jax import families
  from ddpm_jax.families import config_validation

  config = default.get_config(family_name)
  config.model = default.dit_model("S", 2, depth=2, hidden_size=32, num_heads=2, num_classes=10)
  config.sampling.num_steps = 3 if family_name == "edm" else None
  if family_name == "score_sde":  # predictor-corrector on the SDE's 25 levels
    config.sde.num_scales = 25
  config_validation.validate_config(config)
  family = families.get_family(config)
  params = family.init_params(jax.random.key(0))
  batch = {"image": jnp.zeros((4, 8, 8, 1)), "label": jnp.arange(4)}
  draws = family.draw(families.step_keys(jax.random.key(1)), batch, None)
  loss_of = lambda p: jnp.mean(family.loss(p, batch, draws, None))
  loss, grads = jax.value_and_grad(loss_of)(params)
  assert np.isfinite(loss)
  assert np.any(np.asarray(grads["params"]["final"]["kernel"]))  # zero-initialised, trained first
  samples = family.make_sampler(2)(params, jax.random.key(2), families.Cond(label=jnp.arange(2)))
  assert samples.shape == (2, 8, 8, 1) and np.all(np.isfinite(samples))


def test_dit_upsamples_in_the_super_resolution_family():
  """The super_res family's network input is x_t beside the upsampled low-res image (2C channels):
  DiT's patches take both, and its loss trains."""
  import sys

  from helpers import REPO

  sys.path.insert(0, REPO)
  from configs import default, super_res_default
  from ddpm_jax import families
  from ddpm_jax.families import config_validation

  config = super_res_default.get_config()
  config.model = default.dit_model(
    "S", 2, depth=1, hidden_size=32, num_heads=2, out_channels=config.model.out_channels
  )
  config_validation.validate_config(config)
  family = families.get_family(config)
  params = family.init_params(jax.random.key(0))
  assert params["params"]["patch_embed"]["kernel"].shape == (2, 2, 2, 32)  # x_t and low-res
  batch = {"image": jnp.zeros((2, 8, 8, 1)), "label": jnp.zeros(2, jnp.int32)}
  draws = family.draw(families.step_keys(jax.random.key(1)), batch, None)
  loss, grads = jax.value_and_grad(lambda p: jnp.mean(family.loss(p, batch, draws, None)))(params)
  assert np.isfinite(loss) and np.any(np.asarray(grads["params"]["final"]["kernel"]))
