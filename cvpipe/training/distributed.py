"""Multi-process (DDP) training: the same training code, one process per GPU (or CPU slot), under torchrun.

The trainer reads torchrun's environment (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT): with
WORLD_SIZE > 1 it joins a process group (NCCL on GPUs, gloo on CPU), wraps the model in
DistributedDataParallel and gives each process its share of every epoch's seeded permutation. `batch_size` is
the global batch (split evenly over the processes; lr = lr_per_img * batch_size). Only rank 0 evaluates and
writes checkpoints, curves and the test image; the others wait at a barrier.

One machine, 2 GPUs (or 2 CPU processes with gloo):

    torchrun --nproc_per_node=2 -m cvpipe.training.distributed \
        --dataset DATASET_DIR --images IMAGES_DIR --out OUT_DIR --set epochs=30 --set batch_size=16

or, inside the pipeline, set `model_train.nproc_per_node: 2`: the step launches exactly that and collects OUT_DIR.

Several machines (N nodes with G GPUs each): run on every node, with the same rendezvous address
(a host:port reachable from all nodes; node 0's address is the usual choice):

    torchrun --nnodes=N --nproc_per_node=G --node_rank=<0..N-1> \
        --master_addr=<node0 host> --master_port=29500 \
        -m cvpipe.training.distributed --dataset ... --images ... --out ...

(or `--rdzv_backend=c10d --rdzv_endpoint=<host>:29500 --rdzv_id=<job id>` for elastic launch). The dataset and
images directories must exist on every node (a shared file system, or the same copy); OUT_DIR is written by
global rank 0 only. NCCL picks the network itself; set NCCL_SOCKET_IFNAME if the nodes have several.

OUT_DIR gets checkpoints/, curves/, test_image/ (the model_train step's outputs) and summary.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch.distributed as tdist

from .process_group import init_from_env

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cvpipe.training.distributed",
                                 description="YOLOX training on one or many processes (start it with torchrun)")
    ap.add_argument("--dataset", required=True, type=Path, help="DetectionDataset directory (data_prep.dataset)")
    ap.add_argument("--images", required=True, type=Path, help="content-addressed images directory (data_prep.images)")
    ap.add_argument("--out", required=True, type=Path, help="output directory (rank 0 writes it)")
    ap.add_argument("--params", type=Path, help="JSON or YAML file of model_train params")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one param (repeatable)")
    args = ap.parse_args(argv)

    import yaml

    from .params import TrainParams
    from .run import run_training

    values = yaml.safe_load(args.params.read_text()) if args.params else {}
    for item in args.set:
        key, sep, raw = item.partition("=")
        if not sep:
            ap.error(f"--set {item!r} must look like key=value")
        values[key.strip()] = yaml.safe_load(raw)
    values.pop("nproc_per_node", None)  # we are the launched processes
    params = TrainParams(**values)
    info = init_from_env(params.device)
    logging.basicConfig(level=logging.INFO if info.is_main else logging.WARNING,
                        format=f"[rank {info.rank}] %(levelname)s %(name)s: %(message)s")
    outputs = {name: args.out / name for name in ("checkpoints", "curves", "test_image")}
    try:
        summary = run_training(params, args.dataset, args.images, outputs, dist=info)
        if info.is_main:
            (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    finally:
        if tdist.is_initialized():
            tdist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
