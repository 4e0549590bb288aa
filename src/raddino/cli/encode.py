"""``raddino encode``: images -> features store."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from raddino.cli.options import (
    add_command,
    add_device_argument,
    add_dtype_argument,
    add_model_argument,
    add_progress_argument,
)
from raddino.data.io import DEFAULT_MAX_PIXELS

if TYPE_CHECKING:
    import torch

HELP = "encode images (files, folders, manifest CSVs) into a features store"


def parse_layers(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"--layers {text!r}: expected comma-separated block indices, e.g. 3,6,9,11"
        ) from error


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command(
        subparsers,
        "encode",
        help=HELP,
        description=HELP + ". Re-running the same command resumes an interrupted run.",
        examples="""examples:
  raddino encode scans/ more.dcm cohort.csv --model rad-dino/ --out features/
  raddino encode scans/ --model rad-dino/ --out features/ --patch-tokens full --layers 3,6,9,11
  torchrun --nproc-per-node 4 -m raddino encode scans/ --model rad-dino/ --out features/  # 4 GPUs

under torchrun each process encodes its share of the inputs on its own GPU (cuda:LOCAL_RANK;
the CPU with --device cpu) and the first joins the shares into the one store; more nodes and
SLURM: docs/encoding.md, "Many GPUs and nodes"
""",
    )
    parser.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="image file, folder or manifest .csv"
    )
    add_model_argument(parser)
    parser.add_argument("--out", required=True, help="features store directory")
    add_device_argument(parser)
    add_dtype_argument(
        parser,
        default="auto",
        what="the model's precision",
        note="accuracy of each against fp32 in docs/encoding.md",
    )
    parser.add_argument(
        "--compile",
        default="auto",
        choices=["auto", "off", "onednn", "inductor"],
        help="onednn = trace the model and fuse it with oneDNN Graph (CPU); inductor = "
        "torch.compile; auto = onednn on CPU in fp32/bf16 for jobs large enough to repay the "
        "tracing (the run prints its choice and why; threshold in docs/encoding.md), off "
        "otherwise and on GPU; a failed compile falls back to eager with a warning; in bf16 on a "
        "CPU with AVX512-BF16 and no AMX, off and onednn run attention with raddino's own "
        "kernel, built on first use with the C compiler (default: auto)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="images per batch (default: 4 on CPU, the fastest measured there; 16 on GPU)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="decoding workers: threads of this process on CPUs, worker processes on GPUs; 0 = "
        "decode between batches (default: 2)",
    )
    parser.add_argument(
        "--patch-tokens",
        default="none",
        choices=["none", "full", "pooled"],
        help="store patch tokens: none, full grid (D x h x w) or pooled mean (D) (default: none)",
    )
    parser.add_argument(
        "--layers",
        type=parse_layers,
        default=(),
        help="also store these blocks' outputs, e.g. 3,6,9,11 (0-based; -1 = last)",
    )
    parser.add_argument(
        "--shard-size",
        type=int,
        default=1024,
        help="images per shard on disk; with full patch tokens also at most 64 MB per shard, "
        "so memory stays flat (default: 1024)",
    )
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help=f"refuse images larger than this many pixels (default: {DEFAULT_MAX_PIXELS})",
    )
    add_progress_argument(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from raddino.devices import check_device

    device = check_device(args.device)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return encode(args, device)
    # torchrun with several processes: each takes cuda:LOCAL_RANK on GPUs (the CPU otherwise),
    # encodes its share into a store of its own, and the first one joins them
    from raddino.ssl.distributed import init_distributed, shutdown

    env = init_distributed(device)
    try:
        return encode(args, env.device, distributed=True, speaks=env.is_main)
    finally:
        shutdown()


def encode(
    args: argparse.Namespace, device: torch.device, distributed: bool = False, speaks: bool = True
) -> int:
    """The command on one process; ``speaks``: this process prints (the first of several)."""
    from raddino.data.manifest import collect_inputs
    from raddino.features.encode import EncodeOptions, encode_to_store
    from raddino.models.encoder import RadDino
    from raddino.models.hardware import choose_dtype, probe_hardware
    from raddino.precision import short_name

    def say(message: str) -> None:
        if speaks:
            print(message, flush=True)

    precision = choose_dtype(args.dtype, probe_hardware(device))
    default_batch = 16 if device.type == "cuda" else 4
    options = EncodeOptions(
        batch_size=default_batch if args.batch_size is None else args.batch_size,
        num_workers=args.workers,
        device=device,
        dtype=precision.value,
        compile=args.compile,
        patch_tokens=args.patch_tokens,
        layers=args.layers,
        shard_size=args.shard_size,
        max_pixels=args.max_pixels,
        progress=speaks and not args.no_progress,
    )
    paths = collect_inputs(args.inputs)
    if not paths:
        print("raddino encode: no images found in the inputs", file=sys.stderr)
        return 1
    model = RadDino.from_pretrained(args.model)
    say(f"precision: {short_name(precision.value)} ({precision.reason})")
    summary = encode_to_store(
        model, paths, args.out, options, model_id=str(args.model), log=say, distributed=distributed
    )
    say(
        f"encoded {summary.encoded} of {len(paths)} images, rejected {summary.rejected}"
        + (f" (listed in {args.out}/rejects.csv)" if summary.rejected else "")
    )
    if summary.missing:  # neither encoded nor rejected: the store does not cover the inputs
        if speaks:
            print(
                f"raddino encode: error: {summary.missing} of {len(paths)} images are neither "
                f"encoded nor rejected in {args.out}; re-run the same command to complete it",
                file=sys.stderr,
            )
        return 1
    say(f"features store: {args.out}")
    return 0 if summary.encoded > 0 else 1
