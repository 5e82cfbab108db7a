"""twist-lightning: TwIST (independent subnetwork training) for GPT-2 as PyTorch Lightning plugins.

Importing the package registers the ``"twist"`` and ``"twist_spawn"`` strategy names with Lightning.
"""

from twist_lightning.model import GPT, GPTConfig
from twist_lightning.module import TwISTLitModule

__all__ = ["GPT", "GPTConfig", "TwISTLitModule"]
__version__ = "0.1.0"
