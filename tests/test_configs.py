"""Config blocks owned by their families, and a workdir's saved config read onto the current
defaults."""

import importlib
import json

import pytest

from configs import default, workdir
from ddpm_jax import families
from ddpm_jax.families import config_validation

FAMILY_BLOCKS = {
  "score_sde": "sde",
  "vdm": "vdm",
  "ardm": "ardm",
  "edm": "edm",
  "super_res": "super_res",
}


@pytest.mark.parametrize("name", FAMILY_BLOCKS)
def test_each_family_owns_its_blocks_defaults_and_ranges(name):
  block, module = FAMILY_BLOCKS[name], families.family_module(name)
  config = default.get_config()
  assert config[block].to_dict() == module.default_config().to_dict()
  assert module.RANGES and all(field.startswith(f"{block}.") for field in module.RANGES)
  for field, bounds in module.RANGES.items():
    assert config_validation.RANGES[field] == bounds
    assert field.split(".")[1] in config[block]  # a range of a field the block has
  # a value out of its range is refused first, naming the field
  field = sorted(module.RANGES)[0]
  lowest = module.RANGES[field][0]
  config.family = name
  config[block][field.split(".")[1]] = lowest - 1
  with pytest.raises(config_validation.InvalidConfigError, match=field.replace(".", r"\.")):
    config_validation.validate_config(config)


def test_a_workdir_written_before_a_field_existed_gets_its_default(tmp_path):
  saved = default.get_config().to_dict()
  del saved["data"]["num_workers"], saved["edm"]
  saved["optim"]["lr"] = 0.5
  saved["model"] = {"name": "classifier", "ch": 8}  # the model block is read as saved
  saved["convert"] = {"source": "guided_diffusion"}  # a block the defaults lack is kept
  (tmp_path / "config.json").write_text(json.dumps(saved))
  config, fresh = workdir.get_config(str(tmp_path)), default.get_config()
  assert config.data.num_workers == fresh.data.num_workers
  assert config.edm.to_dict() == fresh.edm.to_dict()
  assert config.optim.lr == 0.5 and config.convert.source == "guided_diffusion"
  assert config.model.to_dict() == {"name": "classifier", "ch": 8}
  with pytest.raises(FileNotFoundError, match="config.json"):
    workdir.get_config(str(tmp_path / "missing"))


def test_settings_a_family_does_not_use_are_refused_by_name():
  ardm_config = importlib.import_module("configs.ardm_default").get_config()
  ardm_config.model.num_classes = 10
  with pytest.raises(config_validation.InvalidConfigError, match="model.num_classes=10"):
    config_validation.validate_config(ardm_config)
  vdm_config = importlib.import_module("configs.vdm_default").get_config()
  vdm_config.model.num_classes, vdm_config.sampling.guidance_scale = 10, 2.0
  with pytest.raises(config_validation.InvalidConfigError, match="sampling.guidance_scale=2.0"):
    config_validation.validate_config(vdm_config)
