r"""unCLIP's two stages on the offline digits, from the command line as a user runs them:

  python -m benchmarks.unclip_quality [--workdir=runs/unclip_quality] [--decoder_steps=2000] \
      [--prior_steps=3000]

The embeddings are the shipped digits classifier's 64 features of each image (`feature_net
--embed`, a CLIP stand-in). Trains configs/prior_default.py on the train split's and
configs/unclip_decoder_default.py (model.embedding_dim=64) on each split's, then classifies with
the same feature network:
  - the decoder alone on the held-out embeddings at guidance w ∈ {0, 1, 3} (DDIM 50): the fraction
    of decodes assigned the class of the embedding's source image;
  - the two stages (label -> prior -> embedding -> decoder, w = 1 for both): the fraction assigned
    the requested label, and the prior's embeddings classified by the network's own last layer
    (read off the features: how often the prior alone lands in the requested class).
Prints progress and a markdown table, writes results.json to the workdir; trained runs are reused.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.timing import machine_description  # noqa: E402
from ddpm_jax import pixels  # noqa: E402
from ddpm_jax.evaluation import feature_net  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
START = time.time()
GUIDANCE_SCALES = (0.0, 1.0, 3.0)


def log(message: str) -> None:
  print(f"[{time.time() - START:7.1f} s] {message}", flush=True)


def run_main(*args: str) -> None:
  command = [sys.executable, "-m", "ddpm_jax.main", *args]
  log(" ".join(command[2:]))
  subprocess.run(command, cwd=REPO, check=True)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", default="runs/unclip_quality")
  parser.add_argument("--decoder_steps", type=int, default=2000)
  parser.add_argument("--prior_steps", type=int, default=3000)
  parser.add_argument("--num_two_stage", type=int, default=500)
  args = parser.parse_args()
  workdir = os.path.abspath(args.workdir)
  os.makedirs(workdir, exist_ok=True)
  log(machine_description())
  for split in ("train", "test"):
    if not os.path.exists(os.path.join(workdir, f"features_{split}.npz")):
      feature_net.main(["--embed", split, "--out", os.path.join(workdir, f"features_{split}.npz")])
  decoder = [
    f"--config={REPO}/configs/unclip_decoder_default.py",
    f"--workdir={workdir}/decoder",
    f"--config.data.embedding_key={workdir}/features_{{split}}.npz",
    "--config.model.embedding_dim=64",
    f"--config.training.num_train_steps={args.decoder_steps}",
    "--config.sampling.sampler=ddim",
    "--config.sampling.num_steps=50",
  ]
  prior = [
    f"--config={REPO}/configs/prior_default.py",
    f"--workdir={workdir}/prior",
    f"--config.data.path={workdir}/features_train.npz",
    f"--config.training.num_train_steps={args.prior_steps}",
  ]
  timings = {}
  for name, flags, steps in (
    ("decoder", decoder, args.decoder_steps),
    ("prior", prior, args.prior_steps),
  ):
    checkpoint = os.path.join(workdir, name, "checkpoints", str(steps))
    if not os.path.exists(checkpoint):
      began = time.time()
      run_main(*flags)
      timings[f"{name}_train_s"] = round(time.time() - began, 1)
  params, _ = feature_net.load(feature_net.default_path("digits", 8))

  def classes(images_uint8):
    return feature_net.apply(params, pixels.from_uint8(images_uint8))[1].argmax(-1)

  samples_path = os.path.join(workdir, "decoder", "samples", f"samples_{args.decoder_steps}.npz")
  held_out = np.load(os.path.join(workdir, "features_test.npz"))
  results = {"machine": machine_description(), **timings, "held_out": len(held_out["label"])}
  for scale in GUIDANCE_SCALES:
    run_main(
      *decoder,
      "--mode=sample",
      f"--config.sampling.guidance_scale={scale}",
      f"--config.sampling.num_samples={len(held_out['label'])}",
    )
    samples = np.load(samples_path)
    results[f"decoder_accuracy_w{scale:g}"] = float(
      np.mean(classes(samples["images"]) == samples["labels"])
    )
    log(f"decoder alone, w={scale:g}: {results[f'decoder_accuracy_w{scale:g}']:.3f}")
  run_main(*prior, "--mode=sample", f"--config.sampling.num_samples={args.num_two_stage}")
  run_main(
    *decoder,
    "--mode=sample",
    f"--config.sampling.prior_workdir={workdir}/prior",
    f"--config.sampling.num_samples={args.num_two_stage}",
  )
  two_stage = np.load(samples_path)
  results["two_stage_accuracy"] = float(
    np.mean(classes(two_stage["images"]) == two_stage["labels"])
  )
  # the feature network's logits are a linear layer of its features: classify the prior's vectors
  logits = two_stage["embeddings"] @ params["params"]["Dense_1"]["kernel"]
  logits = logits + params["params"]["Dense_1"]["bias"]
  results["prior_embedding_accuracy"] = float(np.mean(logits.argmax(-1) == two_stage["labels"]))
  log(json.dumps(results, indent=1))
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(results, f, indent=1)
  print("| decoder alone w=0 | w=1 | w=3 | prior's embeddings | two stages (w=1) |")
  print("|---|---|---|---|---|")
  print(
    "| "
    + " | ".join(
      f"{results[key]:.3f}"
      for key in (
        "decoder_accuracy_w0",
        "decoder_accuracy_w1",
        "decoder_accuracy_w3",
        "prior_embedding_accuracy",
        "two_stage_accuracy",
      )
    )
    + " |"
  )


if __name__ == "__main__":
  main()
