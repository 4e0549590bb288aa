"""``raddino``: one sub-command per module in this package."""

from __future__ import annotations

import argparse
import errno
import os
import sys
import warnings

# Before torch loads OpenMP: idle OpenMP threads sleep instead of spinning, so worker processes
# get the cores while the model waits (on 2 cores spinning starved them 10x). Not for
# `raddino pretrain`, `raddino demo` and `raddino study`: their training steps run ~1.3x faster
# with OpenMP's default (spin briefly, then sleep), and batches are made in the training process
# (tiny_cpu) (benchmarks/pretrain_throughput.py, docs/demo.md, docs/studies.md). A policy set by
# the user is kept.
if sys.argv[1:2] not in (["pretrain"], ["demo"], ["study"]):
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from collections.abc import Sequence

from raddino import __version__
from raddino.cli import (
    compare,
    data,
    demo,
    encode,
    export,
    pca,
    pretrain,
    probe,
    report,
    segment,
    similarity,
    study,
    synth,
    view,
)
from raddino.cli.options import HelpFormatter

COMMANDS = (
    demo,
    encode,
    export,
    pretrain,
    probe,
    segment,
    compare,
    data,
    synth,
    report,
    similarity,
    pca,
    view,
    study,
)


EXAMPLES = """examples:
  raddino demo --out demo/ --quick
  raddino encode scans/ --model rad-dino/ --out features/
  raddino probe --model rad-dino/ --manifest cohort/manifest.csv --targets effusion --out eval/
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raddino",
        description="RAD-DINO image encoders for radiographs. The options commands share "
        "(--model, --out, --device, --dtype, --seed, --no-progress) mean the same everywhere, and "
        "re-running a command continues the work in its --out: docs/cli.md. Each command's "
        "options and examples: raddino COMMAND --help.",
        epilog=EXAMPLES,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"raddino {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may also follow the options (argparse only takes them up front)
    if (
        extra
        and hasattr(args, "overrides")
        and all("=" in e and not e.startswith("-") for e in extra)
    ):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        with warnings.catch_warnings():
            show_evaluation_warnings(args.command)
            if getattr(args, "device", None) is not None:
                from raddino.devices import check_device

                check_device(args.device)  # every --device, before any work
            return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted; re-run the same command to continue", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError) as error:
        print(f"raddino {args.command}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a full disk, a read-only folder: one line, not a traceback
        print(f"raddino {args.command}: error: {os_error_message(error)}", file=sys.stderr)
        return 1


def os_error_message(error: OSError) -> str:
    """``str(error)``, and for a full disk what to do next (the commands resume)."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{error}; free some space, then re-run the same command to continue"
    return str(error)


def show_evaluation_warnings(command: str) -> None:
    """Print each evaluation caveat once, as one ``raddino COMMAND: warning: ...`` line on stderr
    (inside ``warnings.catch_warnings``, which restores the defaults afterwards)."""
    from raddino.eval.caveats import EvaluationWarning

    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        if issubclass(category, EvaluationWarning):
            print(f"raddino {command}: warning: {message}", file=sys.stderr, flush=True)
        else:
            default(message, category, filename, lineno, file, line)

    warnings.simplefilter("default", EvaluationWarning)
    warnings.showwarning = show
