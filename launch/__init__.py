"""Launchers: TPU pods (tpu_pod.py), SLURM GPU clusters (slurm.py + slurm.sbatch), N local processes
(local.py), and config sweeps (sweep.py). Each builds its commands as lists of arguments (tested)
and can print or run them."""
