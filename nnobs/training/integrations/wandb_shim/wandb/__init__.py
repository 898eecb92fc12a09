"""`import wandb` in a script started by `nnobs run NAME --wandb`: nnobs's W&B calls in place of W&B's.

Only that script's process has this folder first on its PYTHONPATH; anywhere else, `import wandb` is W&B's own.
"""

import sys

import nnobs.wandb

sys.modules[__name__] = nnobs.wandb
