r"""SiT-B/2 (Ma et al. 2024, "SiT: Exploring Flow and Diffusion-based Generative Models with
Scalable Interpolant Transformers"): DiT-B/2 trained as a flow (config.family="flow": the linear
interpolant, velocity prediction, uniform t as SiT) on CIFAR-10 pixels with DiT-B/2's recipe
(configs/dit_b2_cifar10.py), sampled by Heun on 125 steps (SiT's ODE sampler: 250 evaluations).
No paper reports this setting: SiT-B/2 on ImageNet-256 latents reaches FID-50K 33.0 at 400K steps
(Table 1, ODE) against DiT-B/2's 43.5.

  python -m ddpm_jax.main --config=configs/sit_b2_cifar10.py --workdir=gs://bucket/sit_b2_cifar10
"""

from configs import dit_b2_cifar10


def get_config():
  config = dit_b2_cifar10.get_config("flow")
  config.flow.path, config.flow.t_sampling = "linear", "uniform"
  config.sampling.sampler, config.sampling.num_steps = "heun", 125
  return config
