"""``flowmc-ebm`` command line: one subcommand per module in `flowmc_ebm.commands`.

Each command module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``.
Errors a user can cause (a missing file, a bad flag, an unknown target) end with one clear line and
a non-zero exit; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = ("demo", "train", "sample", "diagnose", "bench")


def _available() -> dict[str, object]:
    found = {}
    for name in COMMANDS:
        try:
            found[name] = importlib.import_module(f"flowmc_ebm.commands.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"flowmc_ebm.commands.{name}":
                raise
    return found


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flowmc-ebm", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module in _available().items():
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("flowmc-ebm: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, OSError) as err:
        if args.debug:
            raise
        print(f"flowmc-ebm {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
