"""The shipped paper configs against their real datasets' structure (tfds.testing.mock_data of each
very builder: its features, labels and splits), and the data checks that keep them honest."""

import glob
import importlib
import os
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from ddpm_jax import train
from ddpm_jax.data import loader, sources, transforms
from ddpm_jax.families import Cond, config_validation
from ddpm_jax.jobs import evaluate
from ddpm_jax.jobs import sample as sample_lib
from helpers import REPO, tiny_config


def load_config(name):
  sys.path.insert(0, REPO)
  return importlib.import_module(f"configs.{name}").get_config()


SHIPPED = sorted(
  os.path.basename(path)[:-3]
  for path in glob.glob(os.path.join(REPO, "configs", "*.py"))
  # workdir.py reads a workdir's config.json
  if not path.endswith(("__init__.py", "workdir.py"))
)
# (the diffusion prior's data are an .npz of vectors: tests/test_unclip.py)
# configs on a VAE's latents: they validate (tests/test_config_fuzz.py) and run once latent
# diffusion exists
LATENT_CONFIGS = ("dit_xl2_imagenet256",)
TFDS_CONFIGS = [
  name
  for name in SHIPPED
  if load_config(name).data.dataset not in ("digits", "embeddings") and name not in LATENT_CONFIGS
]


def shrunk(name):
  """The config with its data, splits, resize, family and conditioning as shipped, and the offline
  default's tiny U-Net (so that configs of one family share their compiled programs)."""
  config = load_config(name)
  config.data.image_size = 8
  # tfds.testing.mock_data patches this process only, not the spawned decoding workers
  config.data.num_workers = 0
  if config.model.name == "dit":  # one small block
    config.model.update(depth=1, hidden_size=32, num_heads=2)
  else:
    kept = ("num_classes", "out_channels", "embedding_type", "fourier_features")
    config.model.update({k: v for k, v in load_config("default").model.items() if k not in kept})
    model = config.model
    model.ch_mult, model.attn_resolutions, model.conv_impl = (1,), (), "xla"
  if config.family == "vdm":
    config.vdm.n_features = 16
  if config.family == "score_sde":
    config.sde.num_scales = 25
  if "diffusion" in config:
    config.diffusion.num_timesteps = 30
  config.training.batch_size, config.training.num_train_steps = 4, 2
  config.training.checkpoint_every_steps = config.training.log_every_steps = 2
  config.training.eval_every_steps = config.training.sample_every_steps = 1000
  config.optim.warmup_steps = 0
  config.sampling.num_samples, config.sampling.batch_size, config.sampling.num_steps = 4, 4, 2
  config.eval.num_loss_batches = 1
  config.eval.bpd_num_batches = min(config.eval.bpd_num_batches, 1)  # 0 where it has no likelihood
  if config.family == "score_sde":
    # its ODE likelihood compiles for a minute (tests/test_train.py); predictor-corrector sampling
    # on sde.num_scales steps (a VP SDE's must exceed β_max)
    config.eval.bpd_num_batches, config.sampling.num_steps = 0, None
  if config.family == "flow":  # its ODE likelihood too (tests/test_flow.py tests it)
    config.eval.bpd_num_batches = 0
  return config


def test_every_paper_config_measures_fid_by_the_protocol_and_states_its_paper_number():
  for name in TFDS_CONFIGS:
    config = load_config(name)
    assert config.eval.num_fid_samples >= 50_000 and not config.eval.allow_fewer_fid_samples, name
    doc = importlib.import_module(f"configs.{name}").__doc__
    assert "paper" in doc and "reports" in doc, name
  assert {"ddpm_lsun_church256", "ddpm_lsun_bedroom256", "adm_imagenet64"} <= set(TFDS_CONFIGS)


@pytest.mark.parametrize("name", TFDS_CONFIGS)
def test_paper_config_trains_samples_and_evaluates_on_its_mock_dataset(name, tmp_path):
  config = shrunk(name)
  config_validation.validate_config(config)
  with tfds.testing.mock_data(num_examples=16):
    num_classes = config.model.num_classes
    if num_classes:  # the labels it sees are the dataset's, varied, within its classes
      batch = next(
        loader.batches(
          config.data,
          split=config.data.train_split,
          global_batch_size=16,
          seed=0,
          num_classes=num_classes,
        )
      )
      assert len(set(batch["label"])) > 1 and batch["label"].max() < num_classes
    state = train.train_and_evaluate(config, str(tmp_path))
    assert int(state.step) == 2
    images = np.load(sample_lib.sample(config, str(tmp_path)))["images"]
    assert images.shape == (4, 8, 8, 3) and images.dtype == np.uint8
    results = evaluate.evaluate(config, str(tmp_path))
  # an untrained model's bound: finite (a learned variance's can be far above 8 bits/dim)
  assert np.isfinite(results["loss"]) and 0 < results.get("bpd", 1.0) < np.inf, results


def test_a_conditional_model_on_a_dataset_without_labels_is_refused_before_compiling(tmp_path):
  config = shrunk("adm_imagenet64")
  config.data.dataset, config.data.resize = "downsampled_imagenet/64x64", "bilinear"
  with pytest.raises(ValueError, match="has no labels"):
    config_validation.validate_config(config)
  # an image folder without class sub-folders: refused when the source is opened
  config = tiny_config()
  config.data.dataset, config.data.data_dir, config.model.num_classes = "image_folder", "", 10
  from PIL import Image

  for i in range(4):
    Image.fromarray(np.full((8, 8, 3), i, np.uint8)).save(tmp_path / f"{i}.png")
  config.data.data_dir = str(tmp_path)
  with pytest.raises(ValueError, match="has no labels"):
    loader.batches(config.data, split="train", global_batch_size=4, seed=0, num_classes=10)


def test_eval_split_is_validated_against_the_dataset():
  config = load_config("ddpm_lsun_church256")
  config.data.eval_split = "test"
  with pytest.raises(ValueError, match="lsun/church_outdoor has the splits train, validation"):
    config_validation.validate_config(config)
  assert sources.DATASETS["celeb_a_hq"].eval_split == "train[95%:]"
  assert load_config("ddpm_celebahq256").data.eval_split == "train[95%:]"


def test_tfds_errors_other_than_not_prepared_are_re_raised_as_they_are(monkeypatch, tmp_path):
  def broken(*args, **kwargs):
    raise PermissionError("disk says no")

  monkeypatch.setattr(tfds, "data_source", broken)
  with pytest.raises(FileNotFoundError, match="tfds build cifar10"):  # not prepared: the hint
    sources.get_source("cifar10", "train", str(tmp_path))
  monkeypatch.setattr(tfds.core.DatasetBuilder, "is_prepared", lambda self: True)
  with pytest.raises(PermissionError, match="disk says no"):
    sources.get_source("cifar10", "train", str(tmp_path))


def test_adm_resize_is_guided_diffusions_centre_crop():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (300, 500, 3), dtype=np.uint8)
  out = transforms.adm_centre_crop(image, 64)
  # by hand: BOX halvings to 250×150 and 125×75 (75 < 128), BICUBIC to 107×64, centre 64 columns
  from PIL import Image

  pil = Image.fromarray(image).resize((250, 150), Image.BOX).resize((125, 75), Image.BOX)
  pil = pil.resize((107, 64), Image.BICUBIC)
  np.testing.assert_array_equal(out, np.asarray(pil)[:, 21:85])


def test_fewer_fid_samples_than_the_protocol_need_an_explicit_opt_in():
  config = load_config("ddpm_cifar10")
  assert evaluate.check_fid_sample_count(config.eval) == ""
  config.eval.num_fid_samples = 1000
  with pytest.raises(ValueError, match="allow_fewer_fid_samples"):
    evaluate.check_fid_sample_count(config.eval)
  config.eval.allow_fewer_fid_samples = True
  assert "from 1000 samples" in evaluate.check_fid_sample_count(config.eval)


def test_samples_do_not_depend_on_the_batch_size(tmp_path):
  config = tiny_config(num_train_steps=2)
  config.model.num_classes, config.sampling.guidance_scale = 10, 1.0
  state = train.train_and_evaluate(config, str(tmp_path))
  from ddpm_jax.runtime import parallel

  mesh = parallel.make_mesh()
  runs = []
  for batch in (3, 8):
    config.sampling.batch_size = batch
    runs.append(sample_lib.generate(config, state.ema_params, 8, mesh))
  np.testing.assert_array_equal(runs[0][1], runs[1][1])  # labels: from sample i's key
  assert len(set(runs[0][1])) > 1
  np.testing.assert_allclose(runs[0][0].astype(int), runs[1][0].astype(int), atol=1)
  assert np.mean(runs[0][0] == runs[1][0]) > 0.99


def test_conditional_bits_per_dim_uses_the_true_labels():
  import jax

  from ddpm_jax import families
  from ddpm_jax.runtime import parallel

  config = tiny_config()
  config.model.num_classes, config.eval.bpd_num_batches = 10, 1
  # AdaGN: with 32 channels in 32 groups, GroupNorm removes an added (per-channel constant)
  # embedding entirely, and the labels would change the output only by rounding
  config.model.scale_shift_norm = True
  family = families.get_family(config)
  # random parameters: at initialisation the zero output layers hide the labels' effect
  init = family.init_params(jax.random.key(0))
  leaves, tree = jax.tree_util.tree_flatten(init)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  params = jax.tree_util.tree_unflatten(
    tree, [p + 0.05 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)]
  )
  bpd = evaluate.held_out_bits_per_dim(config, params, parallel.make_mesh(), "")
  batch = next(evaluate.held_out_batches(config, 1))
  per_label = {
    name: float(
      family.bits_per_dim(params, batch["image"], jax.random.key(0), Cond(label=labels))[
        "bpd"
      ].mean()
    )
    for name, labels in (("true", batch["label"]), ("null", None))
  }
  assert bpd == pytest.approx(per_label["true"], rel=1e-5)
  assert abs(per_label["true"] - per_label["null"]) > 1e-3


SAMPLE_SCRIPT = """
import sys
sys.path[:0] = [{tests!r}, {repo!r}]
import jax, numpy as np
from helpers import tiny_config
from ddpm_jax import families
from ddpm_jax.runtime import parallel
from ddpm_jax.jobs import sample as sample_lib
config = tiny_config()
config.model.num_classes, config.sampling.batch_size = 10, 8
params = families.get_family(config).init_params(jax.random.key(0))
images, labels = sample_lib.generate(config, params, 8, parallel.make_mesh())
np.savez({out!r}, images=images, labels=labels, devices=jax.device_count())
"""


def test_samples_do_not_depend_on_the_device_count(tmp_path):
  import subprocess

  runs = []
  for devices in (1, 8):
    out = str(tmp_path / f"{devices}.npz")
    script = SAMPLE_SCRIPT.format(tests=os.path.join(REPO, "tests"), repo=REPO, out=out)
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    subprocess.run([sys.executable, "-c", script], env=env, check=True)
    runs.append(np.load(out))
  assert [int(run["devices"]) for run in runs] == [1, 8]
  np.testing.assert_array_equal(runs[0]["labels"], runs[1]["labels"])
  np.testing.assert_array_equal(runs[0]["images"], runs[1]["images"])
