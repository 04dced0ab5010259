"""``flowmc-ebm`` command line: one subcommand per module in `flowmc_ebm.commands`.

Each command module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``.
``--help`` shows every flag's default; ``--version`` the installed version.
Errors a user can cause (a missing file, a bad flag, an unknown target, an output path that cannot
be written, a run that diverged) end with exactly one line on stderr and a non-zero exit;
``--debug`` (before or after the subcommand) shows the traceback instead.

Exit codes: 0 success; 2 a usage or input error (bad flag, file, config); 3 training diverged;
1 an unexpected internal error; 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NoReturn

COMMANDS = ("demo", "train", "sample", "diagnose")


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults in ``--help``, except where there is none to show (None, a switch off) or the
    help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        nothing = action.default is None or action.default is False or action.default == [] \
            or action.default == argparse.SUPPRESS
        if nothing or "default" in text:
            return text
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``flowmc-ebm train: error: ... (see --help)``."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {_one_line(message)} (see {self.prog} --help)\n")


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).strip().splitlines() if part.strip())


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("flowmc-ebm")
    except metadata.PackageNotFoundError:  # pragma: no cover - a source tree never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="flowmc-ebm", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("--version", action="version", version=f"flowmc-ebm {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"flowmc_ebm.commands.{name}")
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show tracebacks on errors")
        p.set_defaults(_run=module.run, _parser=p)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (argparse's own exits included)."""
    from flowmc_ebm.trainer import TrainingDivergedError

    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:  # said by the subcommand's parser, so the line names the subcommand
            args._parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exit_:  # --help, or a usage error already printed on one line
        return exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
    where = f"flowmc-ebm {args.command}"
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"{where}: interrupted", file=sys.stderr)
        return 130
    except TrainingDivergedError as err:
        if args.debug:
            raise
        print(f"{where}: error: {_one_line(err)}", file=sys.stderr)
        return 3
    except (ValueError, TypeError, OSError) as err:
        if args.debug:
            raise
        print(f"{where}: error: {_one_line(err) or type(err).__name__}", file=sys.stderr)
        return 2
    except Exception as err:  # a bug: still one line, the traceback on request
        if args.debug:
            raise
        print(f"{where}: internal error: {type(err).__name__}: {_one_line(err)} (rerun with "
              f"--debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
