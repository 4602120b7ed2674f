"""Released and researchers' own checkpoints -> (model_config, params) of this project's models:

  model_config, params = convert.from_guided_diffusion(state_dict_or_path, **create_model_kwargs)
  model_config, params = convert.from_guided_diffusion_classifier(state_dict_or_path, **kwargs)
  model_config, params = convert.from_guided_diffusion_super_res(state_dict_or_path, **kwargs)
  model_config, params = convert.from_diffusers(model_dir)
  out = models.get_model(model_config).apply(params, x_nhwc, t, y)   # = the reference's, NHWC

One module per source (guided_diffusion.py, diffusers.py) on the state-dict readers of
torch_layout.py; presets.py has the released models' flags, the run configs and the workdir a
conversion writes (`python -m ddpm_jax.convert`, __main__.py).
"""

from ddpm_jax.convert.diffusers import diffusers_model_config, from_diffusers
from ddpm_jax.convert.guided_diffusion import (
  from_guided_diffusion,
  from_guided_diffusion_classifier,
  from_guided_diffusion_super_res,
  guided_diffusion_classifier_config,
  guided_diffusion_model_config,
)
from ddpm_jax.convert.presets import (
  CLASSIFIER_PRESETS,
  DIFFUSERS_PRESETS,
  PRESETS,
  SUPER_RES_PRESETS,
  diffusers_config,
  guided_diffusion_classifier_run_config,
  guided_diffusion_config,
  guided_diffusion_super_res_config,
  parse_model_flags,
  write_workdir,
)
from ddpm_jax.convert.torch_layout import load_state_dict

__all__ = [
  "CLASSIFIER_PRESETS",
  "DIFFUSERS_PRESETS",
  "PRESETS",
  "SUPER_RES_PRESETS",
  "diffusers_config",
  "diffusers_model_config",
  "from_diffusers",
  "from_guided_diffusion",
  "from_guided_diffusion_classifier",
  "from_guided_diffusion_super_res",
  "guided_diffusion_classifier_config",
  "guided_diffusion_classifier_run_config",
  "guided_diffusion_config",
  "guided_diffusion_model_config",
  "guided_diffusion_super_res_config",
  "load_state_dict",
  "parse_model_flags",
  "write_workdir",
]
