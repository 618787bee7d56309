"""carrierd command line: run | migrate | check-config | sim."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from carrierd.config import ConfigError, load_config


def _cmd_run(args: argparse.Namespace) -> int:
    from carrierd.daemon import run

    return run(Path(args.config))


def _cmd_migrate(args: argparse.Namespace) -> int:
    from carrierd.store.db import migrate

    config = load_config(args.config)
    applied = asyncio.run(migrate(config.database.dsn))
    print(f"migrations applied: {applied or 'none (up to date)'}")
    return 0


def _cmd_check_config(args: argparse.Namespace) -> int:
    load_config(args.config)
    print(f"{args.config}: ok")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="carrierd", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("--config", default="conf/carrierd.toml")
    run.set_defaults(func=_cmd_run)

    mig = sub.add_parser("migrate", help="apply database migrations (idempotent)")
    mig.add_argument("--config", default="conf/carrierd.toml")
    mig.set_defaults(func=_cmd_migrate)

    check = sub.add_parser("check-config", help="validate a configuration file")
    check.add_argument("config")
    check.set_defaults(func=_cmd_check_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
