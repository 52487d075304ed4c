"""Train the harmonized detector.

    python -m mutualops.train --out runs/fcos-mutual --mutual-cls --mutual-box --iou-rescoring
    python -m mutualops.train --config runs/my.json          # the same flags as JSON keys
    torchrun --nproc_per_node 2 -m mutualops.train ...       # DDP (gloo on CPU, nccl on GPU)

Data: the synthetic shapes dataset (default) or a COCO-format dataset
(--coco-images DIR --coco-ann FILE). Checkpoints go to --out every epoch
(last.pt; with --checkpoint-every N also epochN.pt);
--resume continues from --out/last.pt. Seeds make runs repeatable.
"""

import argparse
import json
import math
import os
import random
import time

import torch

from .detector.data import CocoDetection, ShapesDataset, collate
from .detector.model import BACKBONES, FAMILIES, Detector, DetectorConfig


def build_parser():
    p = argparse.ArgumentParser(prog="python -m mutualops.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="JSON file of option values (flags given on the command line win)")
    p.add_argument("--out", default="runs/detector", help="output folder (checkpoints, config, log)")
    p.add_argument("--family", choices=FAMILIES, default="fcos")
    p.add_argument("--backbone", choices=BACKBONES, default="small")
    p.add_argument("--backbone-weights", default="", help="local checkpoint for a ResNet backbone")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--mutual-cls", action="store_true", help="soft IoU class targets (quality focal loss)")
    p.add_argument("--mutual-box", action="store_true", help="weight the box loss by the GT-class probability")
    p.add_argument("--iou-rescoring", action="store_true", help="IoU branch and cls^(1-a) * iou^a ranking")
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--max-minutes", type=float, default=0.0, help="stop after this long (0: no limit)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-images", type=int, default=2000, help="synthetic training images")
    p.add_argument("--image-size", type=int, nargs=2, default=(128, 128))
    p.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic training set")
    p.add_argument("--coco-images", default="")
    p.add_argument("--coco-ann", default="")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--amp", action="store_true", help="mixed precision (CUDA only)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--checkpoint-every", type=int, default=0,
                   help="also keep epochN.pt every N epochs, for curves across checkpoints (0: last.pt only)")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    return p


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.config:
        with open(args.config) as f:
            values = json.load(f)
        defaults = parser.parse_args([])
        for key, value in values.items():
            key = key.replace("-", "_")
            if not hasattr(args, key):
                parser.error(f"unknown option {key!r} in {args.config}")
            if getattr(args, key) == getattr(defaults, key):  # the command line wins
                setattr(args, key, value)
    return args


def seed_everything(seed):
    random.seed(seed)
    torch.manual_seed(seed)


def dataset_from(args):
    if args.coco_images or args.coco_ann:
        if not (args.coco_images and args.coco_ann):
            raise SystemExit("--coco-images and --coco-ann go together")
        return CocoDetection(args.coco_images, args.coco_ann, size=tuple(args.image_size))
    return ShapesDataset(args.num_images, image_size=tuple(args.image_size), seed=args.data_seed)


def config_from(args, num_classes):
    return DetectorConfig(family=args.family, num_classes=num_classes, backbone=args.backbone,
                          backbone_weights=args.backbone_weights, width=args.width, mutual_cls=args.mutual_cls,
                          mutual_box=args.mutual_box, iou_rescoring=args.iou_rescoring, alpha=args.alpha)


def warmup_cosine(total_steps, warmup_fraction=0.1):
    """Linear warm-up, then cosine decay to 0 at total_steps. A function of the
    step only, so that a resumed run may extend the schedule (--epochs)."""
    warmup = max(1, int(total_steps * warmup_fraction))

    def factor(step):
        return min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(step / max(total_steps, 1), 1.0)))

    return factor


def distributed():
    """(rank, world size), initialising the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
    return int(os.environ.get("RANK", "0")), world


def train(args):
    rank, world = distributed()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    seed_everything(args.seed)
    dataset = dataset_from(args)
    model = Detector(config_from(args, len(dataset.classes))).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = max(len(dataset) // (args.batch_size * world), 1)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(args.epochs * steps_per_epoch))
    os.makedirs(args.out, exist_ok=True)
    start_epoch = 0
    last = os.path.join(args.out, "last.pt")
    if args.resume and os.path.exists(last):
        state = torch.load(last, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        start_epoch = state["epoch"] + 1
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    sampler = torch.utils.data.DistributedSampler(dataset, world, rank, shuffle=True, seed=args.seed, drop_last=True)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, num_workers=args.workers,
                                         collate_fn=collate, drop_last=True)
    scaler = torch.amp.GradScaler("cuda", enabled=args.amp and device.type == "cuda")
    if rank == 0:
        with open(os.path.join(args.out, "config.json"), "w") as f:
            json.dump({**vars(args), "model": model.config.to_dict()}, f, indent=2, default=str)
    log = []
    started = time.perf_counter()
    stop = False
    for epoch in range(start_epoch, args.epochs):
        sampler.set_epoch(epoch)
        model.train()
        bar = loader
        if rank == 0 and not args.no_progress:
            from tqdm import tqdm

            bar = tqdm(loader, desc=f"epoch {epoch + 1}/{args.epochs}", unit="batch", leave=False)
        seen, t0, sums = 0, time.perf_counter(), {}
        for step, (images, targets) in enumerate(bar):
            if step >= steps_per_epoch:
                break
            images = images.to(device)
            targets = [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]
            with torch.autocast(device.type, enabled=args.amp and device.type == "cuda"):
                losses = net(images, targets)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(losses["loss"]).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            scaler.step(optimizer)
            scaler.update()
            schedule.step()
            seen += images.shape[0] * world
            for k in ("loss", "cls", "box", "quality"):
                sums[k] = sums.get(k, 0.0) + float(losses[k].detach())
            if bar is not loader:
                bar.set_postfix(loss=f"{float(losses['loss'].detach()):.3f}", img_s=f"{seen / (time.perf_counter() - t0):.1f}")
            if args.max_minutes and time.perf_counter() - started > args.max_minutes * 60:
                stop = True
                break
        entry = {"epoch": epoch, **{k: v / max(step + 1, 1) for k, v in sums.items()},
                 "images_per_s": seen / max(time.perf_counter() - t0, 1e-9)}
        log.append(entry)
        if rank == 0:
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                     "epoch": epoch, "config": model.config.to_dict(), "classes": list(dataset.classes),
                     "image_size": list(args.image_size)}
            torch.save(state, last)
            if args.checkpoint_every and (epoch + 1) % args.checkpoint_every == 0:
                torch.save(state, os.path.join(args.out, f"epoch{epoch + 1}.pt"))
            with open(os.path.join(args.out, "log.jsonl"), "a") as f:
                f.write(json.dumps(entry) + "\n")
            if not args.no_progress:
                print(f"epoch {epoch + 1}: loss {entry.get('loss', 0):.4f} ({entry['images_per_s']:.1f} img/s)")
        if stop:
            break
    if world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return model, log


def main(argv=None):
    train(parse_args(argv))


if __name__ == "__main__":
    main()
