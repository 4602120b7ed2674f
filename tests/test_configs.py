"""Config blocks owned by their families, and a workdir's saved config read onto the current
defaults."""

import importlib
import json

import pytest

from configs import default, workdir
from ddpm_jax import families
from ddpm_jax.families import config_validation

# each family's own block besides the shared ones (all but super_res: its only one)
FAMILY_BLOCKS = {
  "score_sde": "sde",
  "vdm": "vdm",
  "ardm": "ardm",
  "edm": "edm",
  "super_res": "super_res",
}
DIFFUSION_READERS = ("gaussian", "classifier", "super_res")


@pytest.mark.parametrize("name", FAMILY_BLOCKS)
def test_each_family_owns_its_blocks_defaults_and_ranges(name):
  block, module = FAMILY_BLOCKS[name], families.family_module(name)
  assert families.config_blocks(name)[block] is module.default_config
  config = default.get_config(name)
  assert config.family == name and config[block].to_dict() == module.default_config().to_dict()
  assert not set(FAMILY_BLOCKS.values()) - {block} & set(config)  # no other family's block
  assert ("diffusion" in config) == (name in DIFFUSION_READERS)
  assert module.RANGES and all(field.startswith(f"{block}.") for field in module.RANGES)
  for field, bounds in module.RANGES.items():
    assert config_validation.RANGES[field] == bounds
    assert field.split(".")[1] in config[block]  # a range of a field the block has
  # a value out of its range is refused first, naming the field
  field = sorted(module.RANGES)[0]
  lowest = module.RANGES[field][0]
  config[block][field.split(".")[1]] = lowest - 1
  with pytest.raises(config_validation.InvalidConfigError, match=field.replace(".", r"\.")):
    config_validation.validate_config(config)


@pytest.mark.parametrize(
  "name", sorted(set(families.FAMILIES) - {"classifier", "autoencoder", "distill"})
)
def test_the_digits_config_of_every_family_is_valid(name):
  # (a noisy classifier's and an autoencoder's configs also swap the model:
  # configs/classifier_default.py, configs/autoencoder_default.py; a distillation's needs its
  # teacher's workdir: tests/test_distill.py)
  config_validation.validate_config(default.get_config(name))


def test_a_config_carries_its_familys_block_and_no_other():
  config = default.get_config("vdm")
  assert list(families.config_blocks("gaussian")) == ["diffusion"] and "vdm" in config
  assert "diffusion" not in config  # the Gaussian diffusion's block: read by VDM neither
  default.with_family(config, "score_sde")  # a derived config changing the family
  assert config.family == "score_sde" and "sde" in config and "vdm" not in config
  assert config.sde.to_dict() == families.family_module("score_sde").default_config().to_dict()
  assert config.sampling.sampler == "pc"  # the score SDE's default sampler
  default.with_family(config, "gaussian")
  assert not set(FAMILY_BLOCKS.values()) & set(config) and config.sampling.sampler == "ddim"
  config.diffusion.num_timesteps = 40
  default.with_family(config, "super_res")  # a block both read is kept as it is
  assert config.diffusion.num_timesteps == 40 and "super_res" in config
  default.with_family(config, "gaussian")
  config_validation.validate_config(config)
  # the family set by hand: its block is missing, the block it brought would be ignored
  config.family = "edm"
  with pytest.raises(config_validation.InvalidConfigError, match="reads config.edm, which is"):
    config_validation.validate_config(config)
  config = default.get_config("vdm")
  config.family = "gaussian"
  with pytest.raises(config_validation.InvalidConfigError, match="config.vdm belongs to the fam"):
    config_validation.validate_config(config)


def test_a_workdir_written_before_a_field_existed_gets_its_default(tmp_path):
  # as config.json was written when every config carried every family's block
  saved = default.get_config("edm").to_dict()
  for name, block in FAMILY_BLOCKS.items():
    saved[block] = families.family_module(name).default_config().to_dict()
  del saved["data"]["num_workers"], saved["edm"]
  saved["optim"]["lr"] = 0.5
  saved["model"] = {"name": "unet", "ch": 8}  # the model block is read as saved
  saved["convert"] = {"source": "guided_diffusion"}  # a block the defaults lack is kept
  (tmp_path / "config.json").write_text(json.dumps(saved))
  config, fresh = workdir.get_config(str(tmp_path)), default.get_config("edm")
  assert config.data.num_workers == fresh.data.num_workers
  assert config.edm.to_dict() == fresh.edm.to_dict()
  assert set(FAMILY_BLOCKS.values()) & set(config) == {"edm"}  # the others' blocks dropped
  assert config.optim.lr == 0.5 and config.convert.source == "guided_diffusion"
  assert config.model.to_dict() == {"name": "unet", "ch": 8}
  with pytest.raises(FileNotFoundError, match="config.json"):
    workdir.get_config(str(tmp_path / "missing"))
  del saved["family"]  # written before config.family existed
  (tmp_path / "config.json").write_text(json.dumps(saved))
  with pytest.raises(config_validation.InvalidConfigError, match="config.family is missing"):
    workdir.get_config(str(tmp_path))


def test_settings_a_family_does_not_use_are_refused_by_name():
  ardm_config = importlib.import_module("configs.ardm_default").get_config()
  ardm_config.model.num_classes = 10
  with pytest.raises(config_validation.InvalidConfigError, match="model.num_classes=10"):
    config_validation.validate_config(ardm_config)
  vdm_config = importlib.import_module("configs.vdm_default").get_config()
  vdm_config.model.num_classes, vdm_config.sampling.guidance_scale = 10, 2.0
  with pytest.raises(config_validation.InvalidConfigError, match="sampling.guidance_scale=2.0"):
    config_validation.validate_config(vdm_config)
  for name, sampler in (("vdm", "ancestral"), ("ardm", "autoregressive")):
    config = default.get_config(name)
    assert config.sampling.sampler == sampler
    config.sampling.sampler = "ddim"
    with pytest.raises(config_validation.InvalidConfigError, match=f"'{name}' samples with"):
      config_validation.validate_config(config)


def test_an_old_vdm_workdir_with_the_ignored_ddim_sampler_gets_its_own(tmp_path):
  saved = default.get_config("vdm").to_dict()
  saved["sampling"]["sampler"] = "ddim"  # the shared default these families ignored
  (tmp_path / "config.json").write_text(json.dumps(saved))
  config = workdir.get_config(str(tmp_path))
  assert config.sampling.sampler == "ancestral"
  config_validation.validate_config(config)


def test_an_old_workdir_with_another_familys_sampler_tuning_gets_the_defaults(tmp_path):
  saved = default.get_config("edm").to_dict()
  # an EDM config derived from a score SDE's, written before with_family reset these
  saved["sampling"].update(predictor="euler_maruyama", corrector="none", s_churn=40.0)
  (tmp_path / "config.json").write_text(json.dumps(saved))
  config = workdir.get_config(str(tmp_path))
  assert (config.sampling.predictor, config.sampling.corrector) == ("reverse_diffusion", "langevin")
  assert config.sampling.s_churn == 40.0  # read by EDM's euler and heun: kept
  config_validation.validate_config(config)


def test_the_diffusion_block_is_carried_only_where_it_is_read():
  for name in ("score_sde", "edm", "vdm", "ardm"):
    assert "diffusion" not in default.get_config(name)  # --config.diffusion.* is unknown there
  config = importlib.import_module("configs.classifier_default").get_config()
  config.diffusion.rescale_timesteps = True  # a noisy classifier is trained on t itself
  with pytest.raises(config_validation.InvalidConfigError, match="classifier is trained on t"):
    config_validation.validate_config(config)
  config = default.get_config()
  config.diffusion.rescale_timesteps = True
  config_validation.validate_config(config)


def test_the_sampler_fields_neutral_values_are_the_defaults():
  sampling_config = default.get_config().sampling
  for field, (neutral, _) in config_validation.SAMPLER_FIELDS.items():
    assert sampling_config[field] == neutral, field


def test_every_shipped_config_reads_every_sampling_setting_it_sets():
  from test_config_fuzz import SHIPPED  # (the configs/ listing)

  for name in SHIPPED:
    config = importlib.import_module(f"configs.{name}").get_config()
    assert config_validation.ignored_sampling_settings(config) == [], name


@pytest.mark.parametrize(
  "family, sampler, field, value",
  [
    ("gaussian", "heun", "eta", 1.0),  # DDIM's η on a σ solver
    ("gaussian", "ddim", "s_churn", 40.0),  # EDM's churn on DDIM
    ("gaussian", "dpmpp_2m", "s_noise", 1.007),  # deterministic: no noise to scale
    ("gaussian", "dpm_solver", "timestep_spacing", "trailing"),
    ("score_sde", "ode", "snr", 0.075),  # the corrector's, with no corrector
    ("score_sde", "pc", "ode_tolerance", 1e-3),
    ("score_sde", "heun", "predictor", "euler_maruyama"),
    ("edm", "dpmpp_2m", "s_churn", 40.0),
  ],
)
def test_a_sampling_setting_the_sampler_does_not_read_is_reported(
  family, sampler, field, value, caplog
):
  config = default.get_config(family)
  config.sampling.sampler = sampler
  assert config_validation.ignored_sampling_settings(config) == []
  config.sampling[field] = value
  [ignored] = config_validation.ignored_sampling_settings(config)
  assert f"sampling.{field}={value!r} is ignored" in ignored and repr(sampler) in ignored
  with caplog.at_level("WARNING"):
    config_validation.validate_config(config)  # a derived config may carry it: not refused
  assert ignored in caplog.text


@pytest.mark.parametrize(
  "family, field, value",
  [
    ("gaussian", "snr", 0.075),  # the score SDE's corrector
    ("edm", "step_lr", 1e-4),  # NCSN's annealed Langevin
    ("edm", "eta", 1.0),  # DDIM's
    ("vdm", "rho", 3.0),  # VDM samples ancestrally on equal steps: no σ grid
    ("ardm", "timestep_spacing", "trailing"),
    ("classifier", "eta", 0.5),  # it samples nothing
  ],
)
def test_a_sampling_setting_no_sampler_of_the_family_reads_is_refused(family, field, value):
  config = default.get_config(family)
  config.sampling[field] = value
  with pytest.raises(config_validation.InvalidConfigError) as error:
    config_validation.validate_config(config)
  assert f"sampling.{field}={value!r}: config.family={family!r} does not read it" in str(
    error.value
  )


def test_guidance_rescale_without_guidance_is_reported():
  config = default.get_config()
  config.sampling.guidance_rescale = 0.7
  [ignored] = config_validation.ignored_sampling_settings(config)
  assert "guidance_rescale=0.7 is ignored" in ignored
  config.sampling.guidance_scale = 3.0
  assert config_validation.ignored_sampling_settings(config) == []
