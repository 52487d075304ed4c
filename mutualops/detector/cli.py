"""The plumbing the detector's command-line tools share (train, evaluate, demo, export): one-line user errors
with exit status 2, SIGINT and SIGTERM as one line, files written whole or not at all, and the checks of
flags and files every tool makes.
"""

import argparse
import contextlib
import os
import signal
import sys
import tempfile
import threading
import traceback

import torch

from .data import DatasetError
from .model import DetectorConfig


class UserError(Exception):
    """Something wrong with the command line, a file it names or the run's state:
    reported as one line and exit status 2, not as a traceback."""


class CliParser(argparse.ArgumentParser):
    def error(self, message):  # one line and status 2, as every other user error, instead of usage + message
        raise UserError(message)


class Interrupted(BaseException):
    """SIGINT or SIGTERM (Ctrl-C, SLURM, Kubernetes, `timeout`): a BaseException like KeyboardInterrupt, so that
    it unwinds through every cleanup (a half-written temporary file is removed) and is not caught as an error."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def exit_on_user_error(argv):
    """Turns a user error into `error: ...` on stderr and exit status 2 (with
    --debug, after its traceback), and SIGINT or SIGTERM into one line and status
    128 + the signal's number once every file being written is cleaned up; any
    other exception is a bug and keeps its traceback."""
    restore = _raise_on_signals()
    try:
        yield
    # OSError: a file or folder the user named cannot be made or read (an --out under a file, a read-only
    # disk): their environment, not a bug.
    except (UserError, DatasetError, OSError) as e:
        if "--debug" in (sys.argv[1:] if argv is None else argv):
            traceback.print_exc()
        print(f"error: {one_line(e)}", file=sys.stderr)
        sys.exit(2)
    except (Interrupted, KeyboardInterrupt) as e:
        signum = getattr(e, "signum", signal.SIGINT)
        print(f"interrupted by {signal.Signals(signum).name}: files already written are whole (a checkpoint "
              f"being saved was not), so a training run continues with --resume", file=sys.stderr)
        sys.exit(128 + signum)
    finally:
        restore()


def _raise_on_signals():
    """SIGTERM (and SIGINT) raise Interrupted in the main thread while a CLI runs; returns the undo."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum, frame):
        raise Interrupted(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    return lambda: [signal.signal(s, h) for s, h in previous.items()]


def one_line(error):
    """The error's message. One raised in a DataLoader worker comes back wrapped
    in the worker's traceback, whose last line is "module.Class: message"."""
    lines = str(error).strip().splitlines() or [type(error).__name__]
    prefix = f"{type(error).__module__}.{type(error).__qualname__}: "
    return lines[-1].removeprefix(prefix)


def check_image_size(size, what="--image-size"):
    """Height and width, whole numbers of at least MIN_IMAGE_SIDE (the detector's coarsest stride: below it a
    level has no cell)."""
    if not (isinstance(size, (list, tuple)) and len(size) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in size)):
        raise UserError(f"{what} must be two whole numbers (height, width), got {size!r}")
    if min(size) < MIN_IMAGE_SIDE:
        raise UserError(f"{what} must be at least {MIN_IMAGE_SIDE} x {MIN_IMAGE_SIDE} (the detector's coarsest "
                        f"stride), got {size[0]} x {size[1]}")


MIN_IMAGE_SIDE = max(DetectorConfig().strides)


def check_out_folder(path):
    if os.path.islink(path) and not os.path.exists(path):
        raise UserError(f"--out {path} is a symbolic link to {os.readlink(path)}, which does not exist")
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"--out {path} is an existing file, not a folder")


def make_out_folder(path):
    """Creates --out and makes sure files can be written in it, before any work whose results would go there."""
    check_out_folder(path)
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise UserError(f"--out {path}: cannot write there ({e.strerror or e})") from None


def check_classes(saved, classes, path):
    """A checkpoint's class names (absent from old ones) must be the data set's, in order: the model's class k
    is the data's class k, and a second export of one project may number its categories otherwise."""
    if saved is None or list(saved) == list(classes):
        return
    if len(saved) != len(classes):
        raise UserError(f"{path} detects {len(saved)} classes but the data set has {len(classes)}")
    differing = [f"{k}: checkpoint {a!r}, data {b!r}" for k, (a, b) in enumerate(zip(saved, classes)) if a != b]
    raise UserError(f"{path} was trained on other classes than the data set has ({len(differing)} of "
                    f"{len(classes)} differ, by category order: {'; '.join(differing[:3])}"
                    f"{'; ...' if len(differing) > 3 else ''})")


def check_device(name):
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a device (cpu, cuda, cuda:1, ...)") from None
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {name}: the detector runs on cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: this machine or torch build has no CUDA GPU")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UserError(f"--device {name}: there are only {torch.cuda.device_count()} CUDA GPUs")


def load_file(path, what):
    """torch.load(weights_only=True) of a file the user named; a file that is
    missing, truncated or no torch file is their error, not a bug."""
    if os.path.isdir(path):
        raise UserError(f"{what} {path} is a folder, not a file")
    if not os.path.isfile(path):
        raise UserError(f"{what} {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load has no one error type for a bad file
        raise UserError(f"cannot read {what} {path}: truncated or not a torch checkpoint "
                        f"({type(e).__name__})") from e


CHECKPOINT_KEYS = ("model", "config", "epoch")


def read_checkpoint(path, keys=CHECKPOINT_KEYS):
    """A checkpoint written by train, or a UserError saying why path is not one."""
    state = load_file(path, "checkpoint")
    missing = [k for k in keys if not isinstance(state, dict) or k not in state]
    if missing:
        raise UserError(f"{path} is not a mutualops.train checkpoint: it has no {', '.join(missing)}")
    return state


def write_atomically(path, write):
    """Writes path through a temporary file in its folder renamed onto it, so that
    a crash or a full disk midway leaves the previous file whole, never a torn one."""
    folder = os.path.dirname(os.path.abspath(path))
    temporary = f"{path}.{os.getpid()}.tmp"
    try:
        with open(temporary, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    if os.name == "posix":  # the rename itself reaches the disk only with its folder
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
