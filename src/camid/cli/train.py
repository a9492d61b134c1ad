"""`camid train`: one backbone on one fold."""
from __future__ import annotations

import argparse
from dataclasses import replace

import torch

from ..models.weights import require_weights
from ..train import rundir
from ..train.runtime import init_distributed, pick_device
from ..train.trainer import Trainer
from ..util.runtime import configure_threads
from .common import add_common_arguments, add_round_argument, resolve


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    add_round_argument(parser)
    parser.add_argument("--model", default=None, help="run name from the config's models (default: the first)")
    parser.add_argument("--fold", type=int, default=0, help="validation fold (default 0)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: the config's device)")
    parser.add_argument("--resume", action="store_true", help=f"continue from {rundir.LAST} of this run")


def main(args: argparse.Namespace) -> int:
    cfg, ws = resolve(args)
    mcfg = cfg.model(args.model) if args.model else cfg.models[0]
    require_weights(replace(cfg, models=[mcfg]), args.config)
    dist = init_distributed(args.device or cfg.device)
    device = pick_device(f"cuda:{dist.local_rank}" if dist.world > 1 and (args.device or cfg.device) != "cpu"
                         and torch.cuda.is_available() else (args.device or cfg.device))
    configure_threads(device, reserve=cfg.train.num_workers, share=dist.world)
    try:
        Trainer(cfg, ws, mcfg, args.fold, device, dist).run(resume=args.resume)
    finally:
        if dist.world > 1:
            import torch.distributed as tdist
            tdist.destroy_process_group()
    return 0
