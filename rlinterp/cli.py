"""The ``rlinterp`` command line: thin subcommands over the library.

Errors the user can fix (``RlinterpError`` and bad arguments) print one line,
``rlinterp <command>: error: <what to do>``, and exit with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import transformers

from .errors import RlinterpError
from .organism import PRESETS, build_organism, format_table


class _OneLineParser(argparse.ArgumentParser):
    """An argparse parser whose usage errors are a single line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _organism(args: argparse.Namespace) -> None:
    out = args.out or Path("artifacts") / "organism" / f"{args.preset}-seed{args.seed}"
    organism = build_organism(out, preset=args.preset, seed=args.seed, force=args.force)
    sys.stdout.write(f"organism in {organism.root}\n{format_table(organism.behaviour())}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="rlinterp", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)
    organism = commands.add_parser(
        "organism",
        help="build the persona model organism (base model + RL checkpoints)",
        description="Build the persona model organism: a base model and RL checkpoint "
        "series in a weak and a strong regime, with a behaviour table.",
    )
    organism.add_argument(
        "--preset", choices=PRESETS, default="default", help="size of the build (default: default)"
    )
    organism.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    organism.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output directory (default: artifacts/organism/<preset>-seed<seed>)",
    )
    organism.add_argument(
        "--force", action="store_true", help="rebuild even if --out holds a finished organism"
    )
    organism.set_defaults(run=_organism)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # One bar per saved checkpoint drowns the build's own progress.
    transformers.utils.logging.disable_progress_bar()
    try:
        args.run(args)
    except RlinterpError as e:
        sys.stderr.write(f"rlinterp {args.command}: error: {e}\n")
        return 2
    return 0


def app() -> None:
    """Console-script entry point."""
    sys.exit(main())
