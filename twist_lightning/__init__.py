"""twist-lightning: TwIST (independent subnetwork training) for GPT-2 as PyTorch Lightning plugins.

Importing the package registers the ``"twist"`` and ``"twist_spawn"`` strategy names with Lightning.
"""

from lightning.pytorch.strategies import StrategyRegistry

from twist_lightning.callbacks import SubnetResampling
from twist_lightning.comm import CountingDDPStrategy
from twist_lightning.model import GPT, GPTConfig
from twist_lightning.module import TwISTLitModule
from twist_lightning.strategy import TwISTStrategy

# Lightning reads its registry only for its own classes, so a third-party strategy registers itself on import.
TwISTStrategy.register_strategies(StrategyRegistry)
CountingDDPStrategy.register_strategies(StrategyRegistry)

__all__ = ["GPT", "GPTConfig", "CountingDDPStrategy", "SubnetResampling", "TwISTLitModule", "TwISTStrategy"]
__version__ = "0.1.0"
