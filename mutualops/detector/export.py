"""Export the detector to ONNX end to end (images -> boxes, scores, labels, counts), its ops through the
translations of mutualops.export (docs/method.md, section 2.6).

    python -m mutualops.export --checkpoint runs/fcos-mutual/last.pt --out model.onnx

A user error of the CLI prints one line "error: ..." and exits with status 2; --debug adds the traceback.
"""

import argparse
import contextlib
import copy
import logging
import operator
import os

import torch

from ..export import MIN_OPSET, max_opset, translation_table
from .cli import CliParser, UserError, exit_on_user_error, write_atomically


class DetectorGraph(torch.nn.Module):
    """A trained Detector as one graph: images [B, 3, H, W] -> boxes [B, K, 4], scores [B, K], labels [B, K]
    (-1 in empty slots) and counts [B], Detector.detect's fixed-shape detections (those predict splits per image)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, images):
        det = self.model.detect(images)
        return det.boxes, det.scores, det.labels, det.counts


OUTPUT_NAMES = ["boxes", "scores", "labels", "counts"]


class ExportOptionError(ValueError):
    """An export_detector argument it cannot honour (image size, opset): the CLI's user error."""


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def _version_converter_messages():
    """The version converter's warnings, kept instead of printed: when it cannot produce the requested opset it
    logs a traceback and leaves the graph at its own opset, which export_detector then reports as an error."""
    logger, records = logging.getLogger("onnxscript.version_converter"), _Records()
    propagate, logger.propagate = logger.propagate, False
    logger.addHandler(records)
    try:
        yield records.messages
    finally:
        logger.removeHandler(records)
        logger.propagate = propagate


def _positive_size(image_size):
    try:
        h, w = (operator.index(v) for v in image_size)
    except (TypeError, ValueError):
        raise ExportOptionError(f"image_size must be two ints (H, W), got {image_size!r}") from None
    if h < 1 or w < 1:
        raise ExportOptionError(f"image_size must be positive, got ({h}, {w})")
    return h, w


def export_detector(model, path, image_size, *, batch_size=2, opset=MIN_OPSET, dynamic_batch=True):
    """Writes `model` (a Detector) to the ONNX file `path` (through a temporary file: an existing file is
    replaced whole or not at all) with input "images" [B, 3, H, W] (B dynamic unless dynamic_batch=False) and
    outputs boxes, scores, labels, counts: Detector.detect's. The caller's model is left as it was (the export
    traces a copy on the CPU in eval mode). Returns the torch.onnx.ONNXProgram. ExportOptionError: an
    image_size or opset that cannot be exported."""
    newest = max_opset()
    if not isinstance(opset, int) or not MIN_OPSET <= opset <= newest:
        raise ExportOptionError(f"opset must be between {MIN_OPSET} and {newest}, got {opset!r}")
    h, w = _positive_size(image_size)
    try:  # the tracing example: the one real allocation whose size the image size sets
        images = torch.zeros(batch_size, 3, h, w)
    except RuntimeError as e:
        gib = batch_size * 3 * h * w * 4 / 2**30
        raise ExportOptionError(f"image_size ({h}, {w}) is too large: the example batch of {batch_size} float32 "
                                f"images ({gib:.1f} GiB) cannot be allocated") from e
    graph = DetectorGraph(copy.deepcopy(model).cpu()).eval()  # the wrapper too, or the exporter warns of training
    dynamic = {"images": {0: torch.export.Dim("batch")}} if dynamic_batch else None
    with torch.no_grad(), _version_converter_messages() as messages:
        program = torch.onnx.export(graph, (images,), dynamo=True, input_names=["images"], output_names=OUTPUT_NAMES,
                                    custom_translation_table=translation_table(), dynamic_shapes=dynamic,
                                    opset_version=opset, verbose=False)
    produced = {o.domain: o.version for o in program.model_proto.opset_import}.get("")
    if produced != opset:
        reason = next((m.splitlines()[0] for m in messages if "ailed" in m), "no reason given")
        raise ExportOptionError(f"the exporter produced opset {produced}, not the requested {opset} ({reason})")
    write_atomically(path, lambda f: f.write(program.model_proto.SerializeToString()))
    return program


def parse_args(argv=None):
    p = CliParser(prog="python -m mutualops.export", description=__doc__,
                  formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a checkpoint of python -m mutualops.train")
    p.add_argument("--out", required=True, help="the ONNX file to write")
    p.add_argument("--opset", type=int, default=MIN_OPSET, help=f"ONNX opset ({MIN_OPSET} to {max_opset()})")
    p.add_argument("--max-detections", type=int, default=None, help="detections per image (default: the model's)")
    p.add_argument("--image-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="input height and width (default: the checkpoint's training size; required for a "
                        "checkpoint that has none)")
    p.add_argument("--static-batch", type=int, default=0, metavar="B",
                   help="fix the batch size to B (default 0: any batch size)")
    p.add_argument("--debug", action="store_true", help="show the traceback of user errors too")
    args = p.parse_args(argv)
    if not MIN_OPSET <= args.opset <= max_opset():
        raise UserError(f"--opset must be between {MIN_OPSET} and {max_opset()}")
    if args.max_detections is not None and args.max_detections < 1:
        raise UserError(f"--max-detections must be at least 1, got {args.max_detections}")
    if args.image_size and min(args.image_size) < 1:
        raise UserError(f"--image-size must be positive, got {' '.join(map(str, args.image_size))}")
    if args.static_batch < 0:
        raise UserError(f"--static-batch must be 0 (any batch size) or a batch size, got {args.static_batch}")
    if os.path.isdir(args.checkpoint):
        raise UserError(f"--checkpoint {args.checkpoint} is a folder; name the checkpoint file in it (e.g. last.pt)")
    if os.path.isdir(args.out):
        raise UserError(f"--out {args.out} is a folder; name the ONNX file to write")
    if os.path.exists(args.out) and os.path.exists(args.checkpoint) and os.path.samefile(args.out, args.checkpoint):
        raise UserError(f"--out {args.out} is the checkpoint itself; name another file for the ONNX graph")
    if is_torch_file(args.out):
        raise UserError(f"--out {args.out} holds a torch checkpoint, which export does not replace; name another file")
    folder = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(folder):
        raise UserError(f"--out {args.out}: the folder {folder} does not exist")
    return args


def is_torch_file(path):
    """Whether path is a file that torch.save wrote (a zip archive, or the legacy pickle format)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return head == b"PK\x03\x04" or head[:2] == b"\x80\x02"


def main(argv=None):
    with exit_on_user_error(argv):
        args = parse_args(argv)
        from .evaluate import load_detector

        model, state = load_detector(args.checkpoint)
        if args.max_detections is not None:
            model.config.max_detections = args.max_detections
        size = args.image_size or state.get("image_size")
        if size is None:
            raise UserError(f"{args.checkpoint} records no training image size; pass --image-size H W")
        try:
            size = _positive_size(size)
        except ExportOptionError as e:
            raise UserError(f"{args.checkpoint}: {e}") from e  # --image-size itself was checked above
        try:
            export_detector(model, args.out, size, batch_size=args.static_batch or 2, opset=args.opset,
                            dynamic_batch=not args.static_batch)
        except ExportOptionError as e:
            raise UserError(str(e)) from e
        except OSError as e:
            raise UserError(f"cannot write {args.out} ({e.strerror or e})") from e
        print(f"wrote {args.out}: images [{args.static_batch or 'B'}, 3, {size[0]}, {size[1]}] -> "
              f"{', '.join(OUTPUT_NAMES)} (at most {model.config.max_detections} detections per image)")

