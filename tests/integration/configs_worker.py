"""Every shipped config, as shipped, for a few steps on the ranks of one process group.

Launched with ``accelerate launch --num_processes N``; one process group serves every config in turn (a
process group per config would spend most of the test starting interpreters). Uses the public Trainer:
``distgan.train.main`` ends its process group when a run ends. Rank 0 writes OUT/<config>.json.

    python configs_worker.py OUT SHARDS_64 SHARDS_STACKED SHARDS_32 [config ...]
"""

import faulthandler
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from distgan.config import load  # noqa: E402
from distgan.trainer import Trainer  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
# What changes from the shipped configs is only how long and how much is looked at: 2 steps, a replica check
# after each (every tensor compared across ranks), a checkpoint, evaluation on 200 samples, the EMA
# generator's BatchNorm re-estimated from 2 batches (output only), and shards decoded in the training
# process (each DataLoader worker is one more interpreter on these 2 cores) through a shuffle buffer of 16
# (the configs' 2,000 would decode 2,000 images per rank before the first batch).
STEPS = [
    "train.max_steps=2",
    "train.ckpt_every=2",
    "train.consistency_every=1",
    "train.log_every=1",
    "train.sample_every=0",
    "train.progress=false",
    "runtime.pg_timeout_s=120",
    "wandb.mode=disabled",
    "ema.bn_batches=2",
]


def main():
    faulthandler.enable()  # an abort in native code (SIGABRT) still prints where each thread was
    out, shards64, stacked, shards32 = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    names = sys.argv[5:] or sorted(p.stem for p in (REPO / "configs").glob("*.yaml"))
    wds = ["data.workers=0", "data.shuffle_buffer=16"]
    data = {
        "webdataset_64": [f"data.urls={shards64}", *wds],
        "webdataset_64_in_memory": [f"data.urls={shards64}", "data.in_memory=true", *wds],
        "stacked_mnist": [f"data.urls={stacked}", *wds, "eval.num=200", "eval.block=20"],
        "stacked_mnist_r3gan": [f"data.urls={stacked}", *wds, "eval.num=200", "eval.block=20"],
        # ADA's controller moves p after every step (the configs: every 4) from 0.5 (the configs: 0, where a
        # fall would not show), so 2 steps show it on every rank
        "r3gan_32": [f"data.urls={shards32}", *wds, "data.ada_interval=1", "data.augment_p=0.5"],
        "r3gan_64": [f"data.urls={shards64}", *wds, "data.ada_interval=1", "data.augment_p=0.5"],
    }
    for name in names:
        config = REPO / "configs" / f"{name.replace('_in_memory', '')}.yaml"
        # evaluation on few samples (blocks of 20 spread over every rank) where a config is scored on its own
        # metrics (debug: fd,cs,modes; stacked: stacked); mnist_dcgan's are debug's
        extra = data.get(name, ["eval.num=200", "eval.block=20"] if name == "debug" else ["eval.every=0"])
        tr = Trainer(load(config, [*STEPS, *extra]), out / "runs" / name)
        logged = tr.train()
        ada_p = []  # every rank's augmentation probability: one value, or the ranks would augment differently
        if tr.ada is not None:
            p = tr.ada.augment.p.reshape(1)
            ada_p = [torch.zeros_like(p) for _ in range(tr.world)] if tr.world > 1 else [p]
            if tr.world > 1:
                torch.distributed.all_gather(ada_p, p)
            ada_p = [x.item() for x in ada_p]
        if tr.rank == 0:
            (out / f"{name}.json").write_text(
                json.dumps(
                    {
                        "world": tr.world,
                        "step": tr.step,
                        "rank_sizes": tr.layout.rank_sizes,
                        "micro_sizes": tr.layout.micro_sizes,
                        "loss/D": logged["loss/D"],
                        "images_seen": logged["images_seen"],
                        "checkpoint": str(tr.ckpt_root / "step-000000002"),
                        "ada_p": ada_p,
                        "aug/p": logged.get("aug/p"),
                    }
                )
            )
        del tr
        if torch.distributed.is_initialized():  # (one rank: no process group)
            torch.distributed.barrier()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
