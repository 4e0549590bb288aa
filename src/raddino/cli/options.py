"""The command line's shared vocabulary: how a command's parser is laid out (an example in every
``--help``), the options several commands share (``--model``, ``--device``, ``--dtype``,
``--seed``, ``--no-progress``), old spellings kept working, and the option groups of the
evaluation commands (``probe``, ``segment``, ``compare``) with what they build.

Command modules import these from here and never from each other; ``docs/cli.md`` is the table
of this vocabulary. Parsing stays torch-free until a value is converted: ``--dtype`` becomes a
``torch.dtype`` (None for ``auto``) through :func:`raddino.precision.parse_dtype`, imported when
argparse converts the value.
"""

from __future__ import annotations

import argparse
import re
import sys
import textwrap
from typing import Any

# --------------------------------------------------------------------------- parsers and help


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Prose is wrapped to the terminal; indented lines (the examples) are kept as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        blocks = re.split(r"\n\s*\n", text.strip("\n"))
        return "\n\n".join(self._fill_block(block, width, indent) for block in blocks)

    @staticmethod
    def _fill_block(block: str, width: int, indent: str) -> str:
        lines = block.splitlines()
        if any(line[:1].isspace() for line in lines):  # "examples:" and its lines
            return "\n".join(indent + line for line in lines)
        prose = " ".join(line.strip() for line in lines)
        return textwrap.fill(prose, width, initial_indent=indent, subsequent_indent=indent)


def add_command(
    subparsers: argparse._SubParsersAction,
    name: str,
    help: str,
    description: str,
    examples: str,
    **kwargs: Any,
) -> argparse.ArgumentParser:
    """A (sub-)command's parser: ``help`` in the list of commands, ``description`` at the top of
    its ``--help``, and ``examples`` (``examples:`` then indented ``raddino ...`` lines that run
    as written) at the bottom."""
    return subparsers.add_parser(
        name,
        help=help,
        description=description,
        epilog=examples,
        formatter_class=HelpFormatter,
        **kwargs,
    )


class OldSpelling(argparse.Action):
    """An option's old spelling: hidden from ``--help``, parsed as before, and each use noted in
    one line on stderr (``raddino report train: note: --encoder is now --model``)."""

    def __init__(self, option_strings: list[str], dest: str, note: str, **kwargs: Any) -> None:
        self.note = note
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(f"{parser.prog}: note: {self.note}", file=sys.stderr, flush=True)
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)


def add_option(
    parser: argparse.ArgumentParser,
    name: str,
    *,
    old: tuple[str, ...] = (),
    required: bool = False,
    **kwargs: Any,
) -> argparse.Action:
    """``parser.add_argument(name, **kwargs)``, also accepting the ``old`` spellings
    (:class:`OldSpelling`: same destination and conversion, a note when used). The spellings
    are mutually exclusive, so giving both is an error naming them."""
    if not old:
        return parser.add_argument(name, required=required, **kwargs)
    group = parser.add_mutually_exclusive_group(required=required)
    action = group.add_argument(name, **kwargs)
    for spelling in old:
        group.add_argument(
            spelling,
            action=OldSpelling,
            note=f"{spelling} is now {name}",
            dest=action.dest,
            nargs=action.nargs,
            type=action.type,
            choices=action.choices,
            metavar=action.metavar,
            default=argparse.SUPPRESS,
        )
    return action


RESUME_RULE = "re-running a command continues the work in its --out; to start over, use a new --out"
"""The one resume rule (docs/cli.md): no command needs a flag to continue its work."""


def add_retired_flag(
    parser: argparse.ArgumentParser, flag: str, note: str, dest: str | None = None
) -> None:
    """``flag``, no longer needed, still accepted: hidden, ``note`` printed when used; with
    ``dest`` it still sets ``dest`` to True there."""
    parser.add_argument(
        flag,
        action=OldSpelling,
        note=note,
        nargs=0,
        const=True,
        dest=dest or argparse.SUPPRESS,
        default=False if dest else argparse.SUPPRESS,
    )


# --------------------------------------------------------------------------- shared options


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from error
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def dtype_argument(text: str):
    """A ``--dtype`` value as a ``torch.dtype``, or None for ``auto``."""
    from raddino.precision import parse_dtype

    try:
        return parse_dtype(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def feature_kind(text: str) -> str:
    """A ``--features`` value, checked (``cls``, ``cls+mean``, ``cls+gridN``)."""
    from raddino.eval.feature_kinds import parse_feature_kind

    try:
        parse_feature_kind(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


MODEL_SOURCES = (
    "a Hugging Face Dinov2, CLIP or SigLIP directory, a timm folder or timm:MODEL:FILE, a DINOv2 "
    ".safetensors/.pth file or a raddino run"
)
BASELINES = (
    "random:PATH for a random-initialised encoder of that architecture, pixels:SIDE for the "
    "raw-pixel baseline"
)


def add_model_argument(
    parser: argparse.ArgumentParser,
    baselines: bool = False,
    help: str | None = None,
    old: tuple[str, ...] = (),
) -> None:
    """``--model`` (required): the weights to load (:meth:`raddino.RadDino.from_pretrained`);
    with ``baselines`` also ``random:PATH`` and ``pixels:SIDE``
    (:class:`raddino.eval.encoders.EncoderSpec`). ``help`` replaces the text where the model is
    something else (a report run); ``old``: earlier spellings, still accepted."""
    text = help or MODEL_SOURCES + (f"; {BASELINES}" if baselines else "")
    add_option(parser, "--model", old=old, required=True, metavar="MODEL", help=text)


DEVICE_HELP = "cpu, cuda, cuda:1, ...; auto = cuda when available, else cpu (default: auto)"


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """``--device``, ``auto`` by default; ``raddino.cli.main`` checks it (and so resolves
    ``auto``, :func:`raddino.devices.check_device`) before the command runs."""
    parser.add_argument("--device", default="auto", help=DEVICE_HELP)


DTYPE_CHOICES = "{auto,fp32,bf16,fp16}"


def add_dtype_argument(
    parser: argparse.ArgumentParser,
    default: str,
    what: str,
    note: str = "",
    old: tuple[str, ...] = (),
) -> None:
    """``--dtype``: auto or a precision, converted by :func:`dtype_argument`; ``default`` is one
    of the short names. The help reads ``what``, the values and the ``auto`` rule, then ``note``
    and the default. ``old``: earlier spellings (``--precision``), still accepted."""
    add_option(
        parser,
        "--dtype",
        old=old,
        default=default,
        type=dtype_argument,
        metavar=DTYPE_CHOICES,
        help=f"{what}: auto, fp32, bf16 or fp16 (float32, bfloat16, float16 also accepted); "
        "auto = bf16 where the device computes it natively (recent GPUs, CPUs with AVX512-BF16 "
        f"or AMX), else fp16 on GPUs and fp32 on CPUs{'; ' + note if note else ''} "
        f"(default: {default})",
    )


SEED_HELP = "seed of everything random in the command; the same seed gives the same results"


def add_seed_argument(
    parser: argparse.ArgumentParser, default: int | None = 0, shown: str | None = None
) -> None:
    """``--seed``; ``shown`` says what a None ``default`` stands for (a study file's seed)."""
    text = shown if shown is not None else str(default)
    parser.add_argument("--seed", type=int, default=default, help=f"{SEED_HELP} (default: {text})")


def add_progress_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


# --------------------------------------------------------------------------- evaluation


def add_evaluation_arguments(parser: argparse.ArgumentParser) -> None:
    """Options every evaluation command takes: data, output, device, encoding, bootstrap."""
    parser.add_argument("--manifest", required=True, help="manifest CSV (path, split, labels...)")
    parser.add_argument("--out", required=True, help="output directory")
    add_device_argument(parser)
    add_dtype_argument(
        parser,
        default="fp32",
        what="the encoder's precision",
        note="fp32 by default, so that the precision of feature caches and probe numbers does "
        "not change with the machine",
    )
    parser.add_argument(
        "--image-size",
        type=positive_int,
        default=None,
        help="resize and crop to this size instead of the model's (a multiple of the patch size)",
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=16, help="images per batch (default: 16)"
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="decoding worker processes (default: 2)"
    )
    parser.add_argument(
        "--cache",
        default=None,
        help="features cache directory, shared between runs (default: OUT/features)",
    )
    parser.add_argument(
        "--bootstrap",
        type=positive_int,
        default=1000,
        help="patient-level bootstrap resamples for the intervals (default: 1000)",
    )
    add_seed_argument(parser)
    parser.add_argument(
        "--cpu-threads",
        type=int,
        default=1,
        help="threads for fitting probes / training heads on CPU; 0 = torch's default "
        "(default: 1, fastest on a shared CPU; try 0 for UPerNet on an idle many-core machine)",
    )
    add_progress_argument(parser)


def encode_options(args: argparse.Namespace):
    """EncodeOptions from :func:`add_evaluation_arguments`' options."""
    from raddino.features.encode import EncodeOptions

    if args.workers < 0:
        raise ValueError(f"--workers {args.workers} must be >= 0")
    return EncodeOptions(
        batch_size=args.batch_size,
        num_workers=args.workers,
        device=args.device,
        dtype=args.dtype,
        progress=not args.no_progress,
    )


def add_probe_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument(
        "--targets",
        nargs="+",
        required=required,
        default=[],
        metavar="COL",
        help="manifest columns to probe, e.g. pneumonia effusion sex age:continuous "
        "(kind guessed unless given as :binary or :continuous)",
    )
    parser.add_argument(
        "--features",
        default="cls",
        type=feature_kind,
        help="cls: the CLS token; cls+mean: CLS + mean patch token, as DINOv2's linear "
        "evaluation; cls+gridN: CLS + the patch tokens averaged over an N x N grid of cells "
        "(keeps where things are, as the pixel baseline's thumbnail does; D N² values; "
        "encodes full patch tokens) (default: cls)",
    )
    parser.add_argument(
        "--protocols",
        default="linear,knn",
        help="comma-separated: linear (logistic; ridge for continuous targets), knn "
        "(default: both)",
    )


def probe_config(args: argparse.Namespace):
    """ProbeConfig from :func:`add_probe_arguments` and :func:`add_evaluation_arguments`."""
    from raddino.eval.probe import ProbeConfig

    protocols = tuple(p.strip() for p in args.protocols.split(",") if p.strip())
    return ProbeConfig(
        protocols=protocols,
        n_resamples=args.bootstrap,
        seed=args.seed,
        device=args.device,
        cpu_threads=args.cpu_threads or None,
    )


def add_segment_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument(
        "--masks",
        nargs="+",
        required=required,
        default=[],
        metavar="STRUCTURE",
        help="structures, read from the manifest's mask_<structure> columns (PNG masks of "
        "the image's size; empty = not annotated), e.g. lungs heart",
    )
    parser.add_argument(
        "--head",
        default="linear",
        choices=["linear", "upernet"],
        help="linear (a linear layer on patch tokens, as DINOv2's) or upernet (a four-scale "
        "pyramid from four blocks and the UPerNet decoder) (default: linear)",
    )
    parser.add_argument(
        "--linear-layers",
        type=positive_int,
        default=1,
        help="linear head over the last N blocks concatenated (DINOv2 uses 1 or 4; default: 1)",
    )
    parser.add_argument(
        "--channels", type=positive_int, default=256, help="UPerNet width (default: 256)"
    )
    parser.add_argument(
        "--epochs", type=positive_int, default=20, help="head training epochs (default: 20)"
    )
    parser.add_argument(
        "--lr", type=float, default=1e-3, help="AdamW learning rate (default: 1e-3)"
    )
    parser.add_argument(
        "--train-batch-size", type=positive_int, default=8, help="head training batch (default: 8)"
    )
    parser.add_argument(
        "--overlays", type=int, default=4, help="overlay PNGs of this many test images (default: 4)"
    )
    parser.add_argument(
        "--no-amp", action="store_true", help="train in float32 on GPU (default: mixed precision)"
    )


def segment_config(args: argparse.Namespace):
    """SegmentConfig from :func:`add_segment_arguments` and :func:`add_evaluation_arguments`."""
    from raddino.eval.segment import SegmentConfig

    return SegmentConfig(
        head=args.head,
        linear_layers=args.linear_layers,
        channels=args.channels,
        epochs=args.epochs,
        batch_size=args.train_batch_size,
        lr=args.lr,
        n_resamples=args.bootstrap,
        seed=args.seed,
        device=args.device,
        amp=not args.no_amp,
        overlays=max(args.overlays, 0),
        progress=not args.no_progress,
        cpu_threads=args.cpu_threads or None,
    )


def structures(items: list[str]) -> list[str]:
    """``--masks`` values, split on commas as well as spaces."""
    return [part.strip() for item in items for part in item.split(",") if part.strip()]


def report_stage_error(command: str, error, root) -> int:
    """A failed stage of ``raddino demo`` or ``study`` (a ``demo.stages.StageError``): its one
    line, the traceback of an unexpected cause, where the finished stages are kept; the exit
    code (2 for bad input, 1 otherwise)."""
    import traceback

    cause = error.error
    expected = isinstance(cause, (ValueError, FileNotFoundError))
    if not expected:
        traceback.print_exception(type(cause), cause, cause.__traceback__, file=sys.stderr)
    print(f"raddino {command}: error: {error}", file=sys.stderr)
    print(
        f"finished stages are kept in {root / 'stages'}; re-run the same command to continue",
        file=sys.stderr,
    )
    return 2 if expected else 1
