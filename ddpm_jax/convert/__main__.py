"""python -m ddpm_jax.convert --source=SOURCE --checkpoint=PATH [--preset=NAME |
--model_flags="..."] --workdir=DIR: a released or your own checkpoint -> a workdir that
--mode=sample / --mode=eval and `ddpm_jax.load` run on."""

import os

from absl import app, flags, logging

from ddpm_jax.convert import presets

# --source -> (its presets by name, (checkpoint, preset, model_flags, dataset) -> (config, params))
SOURCES = {
  "guided_diffusion": (presets.PRESETS, presets.guided_diffusion_run),
  "guided_diffusion_classifier": (
    presets.CLASSIFIER_PRESETS,
    presets.guided_diffusion_classifier_run,
  ),
  "guided_diffusion_super_res": (presets.SUPER_RES_PRESETS, presets.guided_diffusion_super_res_run),
  "improved_diffusion": (presets.IMPROVED_PRESETS, presets.improved_diffusion_run),
  "diffusers": (presets.DIFFUSERS_PRESETS, presets.diffusers_run),
  "dit": (presets.DIT_PRESETS, presets.dit_run),
}

FLAGS = flags.FLAGS
flags.DEFINE_enum(
  "source",
  "guided_diffusion",
  list(SOURCES),
  "Its code: a guided-diffusion UNetModel, one of its noisy classifiers or upsamplers "
  "(SuperResModel), an improved-diffusion UNetModel, a diffusers UNet or DiT, or a "
  "facebookresearch/DiT checkpoint (with --autoencoder_workdir, the SD-VAE's), or a diffusers "
  "AutoencoderKL (an autoencoder workdir).",
)
flags.DEFINE_string(
  "checkpoint",
  None,
  "guided_diffusion, dit: the .pt file; diffusers: the model or pipeline directory.",
)
flags.DEFINE_string(
  "preset",
  None,
  "A released model: " + ", ".join(p for table, _ in SOURCES.values() for p in table),
)
flags.DEFINE_string(
  "model_flags",
  None,
  "Or the flags its training script was given (MODEL_FLAGS and DIFFUSION_FLAGS), read onto that "
  "script's defaults as it reads them.",
)
flags.DEFINE_string("dataset", None, "config.data.dataset of the workdir (default: preset's).")
flags.DEFINE_string("workdir", None, "Where the workdir goes.")
flags.DEFINE_string(
  "autoencoder_workdir",
  None,
  "--source=dit: the converted SD-VAE's workdir (--source=diffusers on sd-vae-ft-ema/) whose "
  "latents the DiT denoises; the workdir written samples images through it.",
)


def main(argv) -> None:
  del argv
  source_presets, convert = SOURCES[FLAGS.source]
  if FLAGS.preset and FLAGS.preset not in source_presets:
    raise ValueError(
      f"Unknown --preset {FLAGS.preset!r} for --source={FLAGS.source}; known: "
      f"{', '.join(source_presets)}."
    )
  extra = {}
  if FLAGS.autoencoder_workdir:
    if FLAGS.source != "dit":
      raise app.UsageError("--autoencoder_workdir goes with --source=dit.")
    extra["autoencoder_workdir"] = FLAGS.autoencoder_workdir
  vae = FLAGS.source == "diffusers" and presets.latent_pipeline_vae(FLAGS.checkpoint)
  if vae:  # a latent pipeline: its vae/ into WORKDIR/autoencoder, the denoiser in its latents
    extra["autoencoder_workdir"] = os.path.join(FLAGS.workdir, "autoencoder")
    vae_config, vae_params = presets.diffusers_config(vae)
    presets.write_workdir(vae_config, vae_params, extra["autoencoder_workdir"], "diffusers", vae)
  try:
    config, params = convert(
      FLAGS.checkpoint, FLAGS.preset, FLAGS.model_flags, FLAGS.dataset, **extra
    )
  except ValueError as error:  # a wrong flag or a checkpoint that does not fit: one line
    raise app.UsageError(str(error)) from None
  presets.write_workdir(config, params, FLAGS.workdir, FLAGS.source, FLAGS.checkpoint)
  logging.info(
    "Wrote %s: its params and EMA params are the checkpoint's weights. Sample with: python -m "
    "ddpm_jax.main --mode=sample --config=workdir:%s --workdir=%s",
    FLAGS.workdir,
    FLAGS.workdir,
    FLAGS.workdir,
  )


if __name__ == "__main__":
  flags.mark_flags_as_required(["checkpoint", "workdir"])
  app.run(main)
