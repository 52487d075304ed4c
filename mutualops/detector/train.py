"""Train the harmonized detector.

    python -m mutualops.train --out runs/fcos-mutual --mutual-cls --mutual-box --iou-rescoring
    python -m mutualops.train --config runs/my.json          # the same flags as JSON keys
    torchrun --nproc_per_node 2 -m mutualops.train ...       # DDP (gloo on CPU, nccl on GPU)

Data: the synthetic shapes dataset (default) or a COCO-format dataset
(--coco-images DIR --coco-ann FILE). Options come from the defaults, then the
--config file, then the flags given on the command line. Checkpoints go to --out
every epoch (last.pt; with --checkpoint-every N also epochN.pt), each written
whole or not at all; --resume continues from --out/last.pt exactly where it
stopped (weights, optimizer, schedule, loss scaler, random states). An --out
that holds an earlier run is refused unless --resume continues it or
--overwrite deletes it, and a run locks its --out while it writes there. Seeds
make runs repeatable. A user error (bad flag, file or data) prints one line
"error: ..." and exits with status 2; --debug adds the traceback. SIGINT and
SIGTERM stop a run with one line (exit status 130 or 143), leaving no partial
file behind.
"""

import argparse
import contextlib
import io
import itertools
import json
import logging
import math
import os
import random
import re
import socket
import time
from dataclasses import dataclass

import numpy as np
import torch

try:
    import fcntl
except ImportError:  # Windows: runs are not locked
    fcntl = None

from .cli import (CHECKPOINT_KEYS, CliParser, UserError, check_classes, check_device, check_image_size,
                  check_out_folder, exit_on_user_error, load_file, read_checkpoint, write_atomically)
from .data import CocoDetection, ShapesDataset, collate, read_json
from .model import BACKBONES, FAMILIES, Detector, DetectorConfig, width_multiple

logger = logging.getLogger(__name__)














def build_parser():
    p = CliParser(prog="python -m mutualops.train", description=__doc__,
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
    p.add_argument("--alpha", type=float, default=0.5, help="IoU rescoring: score = cls^(1-alpha) * iou^alpha")
    p.add_argument("--gamma-cls", type=float, default=1.0, help="--mutual-cls: a positive's class target is IoU^gamma_cls")
    p.add_argument("--gamma-loc", type=float, default=1.0,
                   help="--mutual-box: a positive's box-loss weight is p^gamma_loc (p: its GT-class probability)")
    p.add_argument("--qfl-beta", type=float, default=2.0, help="--mutual-cls: quality focal loss's |target - p|^beta")
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
    p.add_argument("--amp", action="store_true", help="mixed precision: float16 with loss scaling on CUDA, bfloat16 on the CPU")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--checkpoint-every", type=int, default=0,
                   help="also keep epochN.pt every N epochs, for curves across checkpoints (0: last.pt only)")
    p.add_argument("--resume", action="store_true", help="continue from --out/last.pt (an error if there is none)")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in an --out that holds an earlier run, deleting its checkpoints and log first")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--debug", action="store_true", help="show the traceback of user errors too")
    return p


def parse_args(argv=None):
    """Options by precedence: defaults < the --config file < flags on the command line."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.config:
        parser.set_defaults(**read_config(args.config, parser))
        args = parser.parse_args(argv)
    check_args(args)
    return args


def read_config(path, parser):
    """The config file's options, each checked as the same flag on the command line would be."""
    values = read_json(path, "config")
    if not isinstance(values, dict):
        raise UserError(f"config {path} must hold a JSON object of option values")
    actions = {a.dest: a for a in parser._actions if a.dest not in ("help", "config", "debug")}
    options = {}
    for key, value in values.items():
        action = actions.get(key.replace("-", "_"))
        if action is None:
            raise UserError(f"unknown option {key!r} in config {path}")
        options[action.dest] = config_value(action, value, f"{key!r} in config {path}")
    return options


def config_value(action, value, where):
    if action.nargs == 0:  # a switch
        if not isinstance(value, bool):
            raise UserError(f"{where} must be true or false, not {value!r}")
        return value
    if isinstance(action.nargs, int) and not (isinstance(value, list) and len(value) == action.nargs):
        raise UserError(f"{where} must be a list of {action.nargs} values, not {value!r}")
    items = value if isinstance(action.nargs, int) else [value]
    try:  # through str, as if typed: 12.5 is then no int and true no number
        items = [action.type(str(v)) if action.type else str(v) for v in items]
    except ValueError:
        raise UserError(f"{where} has the wrong type: {value!r}") from None
    if action.choices and any(v not in action.choices for v in items):
        raise UserError(f"{where} must be one of {', '.join(action.choices)}, not {value!r}")
    return items if isinstance(action.nargs, int) else items[0]


SEED_LIMIT = 2**32  # NumPy's seeds are 32-bit


def check_args(args):
    for name in ("epochs", "batch_size", "num_images", "width"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    multiple = width_multiple(args.backbone)
    if args.width % multiple:
        raise UserError(f"--width must be a multiple of {multiple} with the {args.backbone} backbone (its GroupNorm "
                        f"layers split the channels into 8 groups), got {args.width}")
    if not 0 < args.lr < math.inf:
        raise UserError(f"--lr must be finite and positive, got {args.lr}")
    if not 0 <= args.weight_decay < math.inf:
        raise UserError(f"--weight-decay must be finite and not negative, got {args.weight_decay}")
    for name in ("seed", "data_seed"):
        if not 0 <= getattr(args, name) < SEED_LIMIT:
            raise UserError(f"--{name.replace('_', '-')} must be in [0, {SEED_LIMIT - 1}], got {getattr(args, name)}")
    if args.resume and args.overwrite:
        raise UserError("--resume continues the run in --out and --overwrite deletes it: give one of them")
    for name in ("max_minutes", "workers", "threads", "checkpoint_every"):
        if getattr(args, name) < 0:
            raise UserError(f"--{name.replace('_', '-')} must not be negative, got {getattr(args, name)}")
    if not 0 <= args.alpha <= 1:
        raise UserError(f"--alpha must be in [0, 1], got {args.alpha}")
    for name in ("gamma_cls", "gamma_loc", "qfl_beta"):
        if not 0 <= getattr(args, name) < math.inf:
            raise UserError(f"--{name.replace('_', '-')} must be finite and not negative, got {getattr(args, name)}")
    check_image_size(args.image_size)
    if bool(args.coco_images) != bool(args.coco_ann):
        raise UserError("--coco-images and --coco-ann go together")
    check_out_folder(args.out)
    check_device(args.device)














def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state():
    """The random states, as plain values and tensors that torch.load(weights_only=True) accepts."""
    name, keys, position, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy": [name, keys.tolist(), position, has_gauss, gauss],
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    name, keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), position, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][:torch.cuda.device_count()])


def dataset_from(args):
    if args.coco_images:
        return CocoDetection(args.coco_images, args.coco_ann, size=tuple(args.image_size))
    return ShapesDataset(args.num_images, image_size=tuple(args.image_size), seed=args.data_seed)


def steps_per_epoch(dataset, batch_size, world):
    steps = len(dataset) // (batch_size * world)
    if steps == 0:
        processes = f" x {world} processes" if world > 1 else ""
        raise UserError(f"a batch of {batch_size} images{processes} is more than the {len(dataset)} training "
                        f"images: an epoch would have no step")
    return steps


def check_backbone_weights(args):
    """Reports the keys of --backbone-weights that the torchvision backbone lacks
    or expects; a file none of whose keys fit is the wrong file, not a partial one."""
    path = args.backbone_weights
    if args.backbone == "small":
        raise UserError("--backbone-weights needs a ResNet --backbone; the small one is trained from scratch")
    weights = load_file(path, "backbone weights")
    if not isinstance(weights, dict):
        raise UserError(f"backbone weights {path} hold a {type(weights).__name__}, not a state dict")
    import torchvision

    expected = getattr(torchvision.models, args.backbone)(weights=None).state_dict()
    matched = weights.keys() & expected.keys()
    if not matched:
        raise UserError(f"none of the {len(weights)} keys of backbone weights {path} is a {args.backbone} key "
                        f"(such as {next(iter(expected))!r})")
    misshapen = sorted(k for k in matched if getattr(weights[k], "shape", None) != expected[k].shape)
    if misshapen:
        raise UserError(f"backbone weights {path}: {len(misshapen)} tensors do not fit {args.backbone}, "
                        f"e.g. {misshapen[0]!r}")
    missing, unexpected = sorted(expected.keys() - matched), sorted(weights.keys() - matched)
    if missing or unexpected:
        logger.warning("backbone weights %s: %d of %d keys loaded; missing %s; unexpected %s", path, len(matched),
                    len(expected), preview(missing), preview(unexpected))


def preview(keys, count=5):
    shown = ", ".join(map(str, keys[:count]))
    return f"{len(keys)} ({shown}{', ...' if len(keys) > count else ''})" if keys else "none"




RESUME_KEYS = (*CHECKPOINT_KEYS, "optimizer", "schedule")




def config_from(args, num_classes):
    return DetectorConfig(family=args.family, num_classes=num_classes, backbone=args.backbone,
                          backbone_weights=args.backbone_weights, width=args.width, mutual_cls=args.mutual_cls,
                          mutual_box=args.mutual_box, iou_rescoring=args.iou_rescoring, alpha=args.alpha,
                          gamma_cls=args.gamma_cls, gamma_loc=args.gamma_loc, qfl_beta=args.qfl_beta)


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




def save_checkpoint(state, path):
    # Serialised in memory first: torch's zip writer reports a failed write (a full disk) as a RuntimeError
    # from C++, where the file object's own OSError says what happened.
    buffer = io.BytesIO()
    torch.save(state, buffer)
    try:
        write_atomically(path, lambda f: f.write(buffer.getbuffer()))
    except OSError as e:
        raise UserError(f"cannot save checkpoint {path} ({e.strerror or e}); the previous one, if any, "
                        f"is intact") from e


def train_device(args, world):
    device = torch.device(args.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return device


def resume(path, model, optimizer, schedule, scaler, classes, steps):
    """Restores everything the run had at its last save; returns (the epoch to continue with, the steps of it
    already done, the random states to restore when that epoch starts, if it is one the save was made in): a
    save that --max-minutes made within an epoch continues that epoch where it stopped."""
    if not os.path.exists(path):
        raise UserError(f"--resume: there is no checkpoint {path} to resume from")
    state = read_checkpoint(path, RESUME_KEYS)
    differing = differing_config(state["config"], model.config.to_dict())
    if differing:
        raise UserError(f"{path} holds a different model than the flags ask for: {'; '.join(differing)}")
    check_classes(state.get("classes"), classes, path)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    if state.get("scaler"):  # absent from older checkpoints, empty when AMP was off
        scaler.load_state_dict(state["scaler"])
    done, saved_steps = state.get("epoch_steps"), state.get("steps_per_epoch")
    if done is None or done >= saved_steps:  # a whole epoch (older checkpoints save only those)
        if "rng" in state:
            set_rng_state(state["rng"])
        return state["epoch"] + 1, 0, None
    if saved_steps != steps:
        print(f"train: {path} stopped after step {done} of {saved_steps} in epoch {state['epoch'] + 1}, but an "
              f"epoch now has {steps} steps (another batch size or data set): that epoch starts over")
        return state["epoch"], 0, state.get("rng")
    return state["epoch"], done, state.get("rng")


def differing_config(saved, wanted):
    """The model options that differ, each as "key: checkpoint X, flags Y". The
    backbone weights only initialise the model, so they may differ; an option the
    checkpoint predates had its default."""
    saved = {k: v for k, v in {**DetectorConfig().to_dict(), **saved}.items() if k not in DetectorConfig.RETIRED}
    saved, wanted = json.loads(json.dumps(saved)), json.loads(json.dumps(wanted))  # tuples and lists alike
    keys = sorted((saved.keys() | wanted.keys()) - {"backbone_weights"})
    return [f"{k}: checkpoint {saved.get(k)!r}, flags {wanted.get(k)!r}" for k in keys if saved.get(k) != wanted.get(k)]


def amp_dtype(device):
    """--amp's half type: float16 on CUDA (with a GradScaler), bfloat16 on the CPU."""
    return torch.float16 if device.type == "cuda" else torch.bfloat16


@dataclass
class Run:
    """What every step of a training run uses."""

    args: argparse.Namespace
    model: Detector
    net: torch.nn.Module  # the model, or its DistributedDataParallel wrapper
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    device: torch.device
    rank: int
    world: int
    steps: int  # per epoch
    started: float  # time.perf_counter() at the start, for --max-minutes

    def out_of_time(self):
        return bool(self.args.max_minutes) and time.perf_counter() - self.started > self.args.max_minutes * 60


def train_step(run, images, targets):
    """One optimisation step; returns the losses. A non-finite loss stops the run
    rather than poisoning the weights that the next checkpoint would keep."""
    with torch.autocast(images.device.type, dtype=amp_dtype(images.device), enabled=run.args.amp):
        losses = run.net(images, targets)
    loss = float(losses["loss"].detach())
    if not math.isfinite(loss):
        raise UserError(f"the loss is {loss}: training stopped, last.pt keeps the last good epoch "
                        f"(a lower --lr may help)")
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(losses["loss"]).backward()
    run.scaler.unscale_(run.optimizer)
    torch.nn.utils.clip_grad_norm_(run.model.parameters(), 10.0)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.schedule.step()
    return losses


class EpochSampler(torch.utils.data.Sampler):
    """The distributed sampler's order for an epoch, less its first `skip` indices: a run resumed within an
    epoch sees the rest of that epoch's batches, in the order it would have seen them."""

    def __init__(self, sampler):
        self.sampler, self.skip = sampler, 0

    def set_epoch(self, epoch, skip=0):
        self.sampler.set_epoch(epoch)
        self.skip = skip

    def __iter__(self):
        return itertools.islice(iter(self.sampler), self.skip, None)

    def __len__(self):
        return max(len(self.sampler) - self.skip, 0)


def train_epoch(run, epoch, loader, skip=0, rng=None):
    """(the epoch's log entry: mean losses and images per second, the steps of the epoch done (run.steps for
    a whole one), whether --max-minutes ran out). `skip`: steps of this epoch done before a resume, `rng`: the
    random states saved there."""
    run.model.train()
    iterator = iter(loader)
    # Starting an epoch draws the loader's seed from torch's generator; a run resumed within the epoch has
    # that draw behind it in the saved states, which therefore take over only now.
    if rng is not None:
        set_rng_state(rng)
    bar = iterator
    if run.rank == 0 and not run.args.no_progress:
        from tqdm import tqdm

        bar = tqdm(iterator, desc=f"epoch {epoch + 1}/{run.args.epochs}", unit="batch", leave=False,
                   initial=skip, total=run.steps)
    seen, t0, sums, stop, done = 0, time.perf_counter(), {}, False, skip
    for step, (images, targets) in enumerate(bar, start=skip):
        if step >= run.steps:
            break
        images = images.to(run.device)
        targets = [{k: (v.to(run.device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]
        losses = train_step(run, images, targets)
        seen += images.shape[0] * run.world
        for k in ("loss", "cls", "box", "quality"):
            sums[k] = sums.get(k, 0.0) + float(losses[k].detach())
        if bar is not iterator:
            bar.set_postfix(loss=f"{float(losses['loss'].detach()):.3f}", img_s=f"{seen / (time.perf_counter() - t0):.1f}")
        done = step + 1
        if run.out_of_time() and done < run.steps:
            stop = True
            break
    stop = stop or run.out_of_time()
    entry = {"epoch": epoch, **{k: v / max(done - skip, 1) for k, v in sums.items()},
             "images_per_s": seen / max(time.perf_counter() - t0, 1e-9)}
    if done < run.steps:
        entry.update(partial=True, steps=done)
    return entry, done, stop


def save_epoch(run, epoch, entry, dataset, done):
    state = {"model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
             "schedule": run.schedule.state_dict(), "scaler": run.scaler.state_dict(), "rng": rng_state(),
             "epoch": epoch, "epoch_steps": done, "steps_per_epoch": run.steps, "config": run.model.config.to_dict(),
             "classes": list(dataset.classes), "image_size": list(run.args.image_size)}
    args = run.args
    save_checkpoint(state, os.path.join(args.out, "last.pt"))
    if done == run.steps and args.checkpoint_every and (epoch + 1) % args.checkpoint_every == 0:
        save_checkpoint(state, os.path.join(args.out, f"epoch{epoch + 1}.pt"))
    with open(os.path.join(args.out, "log.jsonl"), "a") as f:
        f.write(json.dumps(entry) + "\n")
    if not args.no_progress:
        print(f"epoch {epoch + 1}: loss {entry.get('loss', 0):.4f} ({entry['images_per_s']:.1f} img/s)")


def start_run(args, dataset, rank, world, device):
    """(Run, (the epoch to start from, its steps already done, random states for its start)): model,
    optimizer, schedule and loss scaler, resumed with --resume."""
    steps = steps_per_epoch(dataset, args.batch_size, world)
    model = Detector(config_from(args, len(dataset.classes))).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(args.epochs * steps))
    # float16 needs loss scaling against underflow; bfloat16 (the CPU's half type) keeps float32's range.
    scaler = torch.amp.GradScaler("cuda", enabled=args.amp and device.type == "cuda")
    os.makedirs(args.out, exist_ok=True)
    start = (0, 0, None)
    if args.resume:
        start = resume(os.path.join(args.out, "last.pt"), model, optimizer, schedule, scaler, dataset.classes, steps)
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    run = Run(args, model, net, optimizer, schedule, scaler, device, rank, world, steps, time.perf_counter())
    return run, start


RUN_FILES = ("last.pt", "log.jsonl", "config.json")


def claim_out_folder(args):
    """Makes --out and locks it for this run (released when the process ends, however it ends); refuses a
    folder another training is writing, or one that holds an earlier run unless --resume continues it or
    --overwrite deletes it first; removes the temporary files of a run that was killed while saving. Returns
    the open lock file, to keep until the run is over."""
    out = args.out
    os.makedirs(out, exist_ok=True)
    lock = open(os.path.join(out, ".lock"), "a+")
    if fcntl is not None:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            lock.close()
            raise UserError(f"--out {out} is being written by another training ({holder}); give each run its "
                            f"own --out") from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        lock.flush()
    try:
        check_earlier_run(args)
    except BaseException:
        lock.close()
        raise
    return lock


TEMPORARY = re.compile(r"(last\.pt|config\.json|epoch\d+\.pt)\.\d+\.tmp")


def check_earlier_run(args):
    """The part of claim_out_folder that looks at what --out holds (under the lock)."""
    out = args.out
    for name in RUN_FILES:
        path = os.path.join(out, name)
        if os.path.islink(path):
            raise UserError(f"--out {out}: {name} is a symbolic link; training writes its files in --out itself")
        if os.path.isdir(path):
            raise UserError(f"--out {out}: {name} is a folder, where training keeps a file")
    for name in os.listdir(out):  # the temporary files of a run killed while saving (SIGKILL, a power cut)
        if TEMPORARY.fullmatch(name):
            os.unlink(os.path.join(out, name))
    earlier = [n for n in ("last.pt", "log.jsonl") if os.path.exists(os.path.join(out, n))]
    earlier += sorted(n for n in os.listdir(out) if re.fullmatch(r"epoch\d+\.pt", n))
    if earlier and not args.resume:
        if not args.overwrite:
            raise UserError(f"--out {out} holds an earlier run ({', '.join(earlier)}): --resume continues it, "
                            f"--overwrite deletes it and starts over, or give another --out")
        for name in [*earlier, "config.json"]:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(out, name))


def train(args, dataset=None):
    """Trains on `dataset`, or on the one the flags name."""
    rank, world = distributed()
    lock = claim_out_folder(args) if rank == 0 else None
    try:
        return train_locked(args, dataset, rank, world)
    finally:
        if lock is not None:
            lock.close()


def train_locked(args, dataset, rank, world):
    if args.threads:
        torch.set_num_threads(args.threads)
    device = train_device(args, world)
    if args.backbone_weights:
        check_backbone_weights(args)  # before seeding: it builds a model, drawing random numbers
    seed_everything(args.seed)
    dataset = dataset_from(args) if dataset is None else dataset
    run, (start_epoch, skip, rng) = start_run(args, dataset, rank, world, device)
    if start_epoch >= args.epochs:
        if rank == 0:
            print(f"train: {args.out} has trained {start_epoch} epochs and --epochs is {args.epochs}: nothing to "
                  f"do (a larger --epochs trains on)")
        return run.model, []
    sampler = EpochSampler(torch.utils.data.DistributedSampler(dataset, world, rank, shuffle=True, seed=args.seed,
                                                               drop_last=True))
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, num_workers=args.workers,
                                         collate_fn=collate, drop_last=True)
    if rank == 0:
        settings = {**vars(args), "model": run.model.config.to_dict()}
        write_atomically(os.path.join(args.out, "config.json"),
                         lambda f: f.write(json.dumps(settings, indent=2, default=str).encode()))
        if args.resume:
            trim_log(os.path.join(args.out, "log.jsonl"), start_epoch, skip)
    log = []
    for epoch in range(start_epoch, args.epochs):
        sampler.set_epoch(epoch, skip * args.batch_size if epoch == start_epoch else 0)
        first = epoch == start_epoch
        entry, done, stop = train_epoch(run, epoch, loader, skip if first else 0, rng if first else None)
        log.append(entry)
        if rank == 0:
            save_epoch(run, epoch, entry, dataset, done)
        if stop:
            if rank == 0 and (done < run.steps or epoch + 1 < args.epochs):
                print(f"train: --max-minutes {args.max_minutes:g} ran out after step {done} of {run.steps} in "
                      f"epoch {epoch + 1} of {args.epochs}; --resume continues from there")
            break
    if world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return run.model, log


def trim_log(path, epoch, skip):
    """log.jsonl as the checkpoint left it: complete entries of the epochs before `epoch` (and the partial
    entry of `epoch` itself when the run continues within it). A crash can leave a torn last line, and a run
    killed after writing its log but before its checkpoint an entry last.pt does not hold; either would spoil
    the entries this run appends."""
    if not os.path.exists(path):
        return
    kept = []
    with open(path, "rb") as f:
        for line in f.read().decode("utf-8", "replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and isinstance(entry.get("epoch"), int) and (
                    entry["epoch"] < epoch or (entry["epoch"] == epoch and skip and entry.get("partial"))):
                kept.append(line)
    write_atomically(path, lambda f: f.write("".join(line + "\n" for line in kept).encode()))


def main(argv=None):
    with exit_on_user_error(argv):
        train(parse_args(argv))

