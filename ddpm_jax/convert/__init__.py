"""Released and researchers' own checkpoints -> (model_config, params) of this project's models:

  model_config, params = convert.from_guided_diffusion(state_dict_or_path, **create_model_kwargs)
  model_config, params = convert.from_guided_diffusion_classifier(state_dict_or_path, **kwargs)
  model_config, params = convert.from_guided_diffusion_super_res(state_dict_or_path, **kwargs)
  model_config, params = convert.from_diffusers(model_dir)  # UNet2DModel, DiTTransformer2DModel
  model_config, params = convert.from_dit(state_dict_or_path)  # facebookresearch/DiT
  out = models.get_model(model_config).apply(params, x_nhwc, t, y)   # = the reference's, NHWC

`parse_model_flags(text, defaults)` reads a training script's flags as the script does (guided-
and improved-diffusion's defaults dicts below); `guided_diffusion_config(flags)` and
`improved_diffusion_config(flags)` are the run configs of those flags.

One module per source maps the weights with numpy only (guided_diffusion.py, improved-diffusion's
networks being guided-diffusion's; diffusers.py) on the state-dict readers of torch_layout.py;
fit.py checks them against the model (the `from_*` converters); presets.py has the released
models' flags, the run configs and the workdir a conversion writes (`python -m ddpm_jax.convert`,
__main__.py).
"""

from ddpm_jax.convert.diffusers import diffusers_model_config
from ddpm_jax.convert.fit import (
  from_diffusers,
  from_dit,
  from_guided_diffusion,
  from_guided_diffusion_classifier,
  from_guided_diffusion_super_res,
)
from ddpm_jax.convert.guided_diffusion import (
  CLASSIFIER_AND_DIFFUSION_DEFAULTS,
  IMPROVED_DIFFUSION_DEFAULTS,
  MODEL_AND_DIFFUSION_DEFAULTS,
  SR_MODEL_AND_DIFFUSION_DEFAULTS,
  guided_diffusion_classifier_config,
  guided_diffusion_model_config,
)
from ddpm_jax.convert.presets import (
  CLASSIFIER_PRESETS,
  DIFFUSERS_PRESETS,
  DIT_PRESETS,
  IMPROVED_PRESETS,
  PRESETS,
  SUPER_RES_PRESETS,
  diffusers_config,
  guided_diffusion_classifier_run_config,
  guided_diffusion_config,
  guided_diffusion_super_res_config,
  improved_diffusion_config,
  parse_model_flags,
  write_workdir,
)
from ddpm_jax.convert.torch_layout import load_state_dict

__all__ = [
  "CLASSIFIER_AND_DIFFUSION_DEFAULTS",
  "CLASSIFIER_PRESETS",
  "DIFFUSERS_PRESETS",
  "DIT_PRESETS",
  "IMPROVED_DIFFUSION_DEFAULTS",
  "IMPROVED_PRESETS",
  "MODEL_AND_DIFFUSION_DEFAULTS",
  "PRESETS",
  "SR_MODEL_AND_DIFFUSION_DEFAULTS",
  "SUPER_RES_PRESETS",
  "diffusers_config",
  "diffusers_model_config",
  "from_diffusers",
  "from_dit",
  "from_guided_diffusion",
  "from_guided_diffusion_classifier",
  "from_guided_diffusion_super_res",
  "guided_diffusion_classifier_config",
  "guided_diffusion_classifier_run_config",
  "guided_diffusion_config",
  "guided_diffusion_model_config",
  "guided_diffusion_super_res_config",
  "improved_diffusion_config",
  "load_state_dict",
  "parse_model_flags",
  "write_workdir",
]
