"""A TwIST job for ``torchrun`` (used by tests/test_torchrun.py): tiny GPT, synthetic tokens, gloo on CPU.

    torchrun --nnodes=2 --nproc_per_node=1 --node_rank=0 --master_addr=127.0.0.1 --master_port=29500 \\
        tests/torchrun_job.py --out OUT_DIR

Each rank writes ``OUT_DIR/rank{r}.pt``: the central model's flat parameters after training, rank 0's initial
flat parameters, and what the strategy counted (syncs, bytes, round), so the launcher's test can compare ranks.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

import twist_lightning  # noqa: F401  (registers strategy="twist")
from twist_lightning import SubnetResampling, TwISTLitModule, TwISTStrategy
from twist_lightning.model import GPTConfig

SHAPE = dict(n_layer=3, n_head=4, n_embd=32, block_size=16, vocab_size=64)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--sync-every", type=int, default=2)
    parser.add_argument("--nodes", type=int, default=2)
    args = parser.parse_args()

    torch.manual_seed(0)  # same init everywhere (the strategy broadcasts rank 0's weights anyway)
    module = TwISTLitModule(GPTConfig(**SHAPE), lr=1e-2, warmup_steps=1, decay_steps=20)
    init = torch.cat([p.detach().reshape(-1).clone() for p in module.model.parameters()])
    g = torch.Generator().manual_seed(1)
    data = torch.randint(0, SHAPE["vocab_size"], (64, SHAPE["block_size"] + 1), generator=g)
    loader = DataLoader(TensorDataset(data[:, :-1], data[:, 1:]), batch_size=4)

    # torchrun's environment variables make Lightning use its TorchElasticEnvironment (no processes launched by
    # Lightning; ranks and nodes come from torchrun)
    trainer = L.Trainer(strategy=TwISTStrategy(sync_every=args.sync_every), accelerator="cpu", devices=1, num_nodes=args.nodes, max_steps=args.steps,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[SubnetResampling()])
    trainer.fit(module, loader)

    strategy = trainer.strategy
    assert isinstance(strategy, TwISTStrategy)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save({
        "rank": trainer.global_rank, "node_rank": trainer.node_rank, "world_size": trainer.world_size,
        "environment": type(strategy.cluster_environment).__name__, "steps": trainer.global_step,
        "round": strategy.round, "syncs": strategy.counter.calls, "bytes": strategy.counter.bytes,
        "central": torch.cat([p.detach().reshape(-1) for p in module.model.parameters()]),  # gathered after fit
        "shard": strategy.central.numel(), "init": init,
    }, args.out / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main()
