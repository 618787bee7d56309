"""carrierd command line.

The daemon's side: run | migrate | check-config | sim. The client's side,
through the HTTP API (client_cli.py): send | status | cancel | messages |
billing, and token new.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Callable
from pathlib import Path

from carrierd import __version__
from carrierd.client_cli import add_client_commands
from carrierd.config import DEFAULT_CONFIG_PATH, ConfigError, load_config


def _cmd_run(args: argparse.Namespace) -> int:
    from carrierd.daemon import run

    return run(Path(args.config))


def _cmd_migrate(args: argparse.Namespace) -> int:
    from carrierd.loops import until_database_answers
    from carrierd.store.db import describe_db_error, is_transient_db_error, migrate
    from carrierd.telemetry import configure_logging

    config = load_config(args.config)
    configure_logging(config.log_level)
    dsn = config.database.dsn
    try:
        # A migration that failed half-way rolled back (one transaction per
        # migration), so trying again from the start is safe.
        applied = asyncio.run(
            until_database_answers("migrate", lambda: migrate(dsn), give_up_after_s=args.wait_s)
        )
    except Exception as exc:
        if not is_transient_db_error(exc):
            raise
        print(
            f"database unreachable after {args.wait_s:g} s: {describe_db_error(exc)}",
            file=sys.stderr,
        )
        return 1
    print(f"migrations applied: {applied or 'none (up to date)'}")
    return 0


def _cmd_check_config(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    print(f"{args.config}: ok")
    # Which values did not come from the file: an operator checking a unit's
    # environment sees that it took (never the values: most are secrets).
    for key, origin in sorted(config.overridden.items()):
        print(f"  {key} from {origin}")
    return 0


def _cmd_sim(args: argparse.Namespace) -> int:
    """Carrier simulators for `make run`, tests and benchmarks."""
    from carrierd.sim.rcs import RcsSimConfig, SimBot, run_rcs_sim
    from carrierd.sim.reassign import ReassignSimDataError, config_from, run_reassign_sim
    from carrierd.sim.smsc import SimConfigError, load_sim_config, run_smsc_sim
    from carrierd.telemetry import configure_logging

    configure_logging(args.log_level)
    tasks: list[asyncio.Future[None]] = []
    try:
        smsc_config = load_sim_config(args.config) if args.which in ("smsc", "all") else None
    except SimConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    try:
        reassign_config = (
            config_from(
                {
                    "token": args.reassign_token,
                    "seed": args.reassign_seed,
                    "data_month": args.reassign_data_month,
                    "data": args.reassign_data,
                    "reassigned_share": args.reassign_reassigned_share,
                    "error_share": args.reassign_error_share,
                    "malformed_share": args.reassign_malformed_share,
                    "latency_ms": args.reassign_latency_ms,
                    "jitter_ms": args.reassign_jitter_ms,
                }
            )
            if args.which in ("reassign", "all")
            else None
        )
    except ReassignSimDataError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    # Every bot logs in with the same token and signs with the same secret
    # here; each posts to its own webhook URL.
    bot_ids = args.bot or ["carrierd"]

    def webhook_url(bot_id: str) -> str | None:
        return args.webhook_url.replace("{bot_id}", bot_id) or None

    rcs_config = RcsSimConfig(
        bot_id=bot_ids[0],
        webhook_url=webhook_url(bot_ids[0]),
        webhook_secret=args.webhook_secret,
        more_bots=tuple(
            SimBot(
                bot_id=bot_id,
                bearer_token="sim-token",
                webhook_url=webhook_url(bot_id),
                webhook_secret=args.webhook_secret,
            )
            for bot_id in bot_ids[1:]
        ),
    )

    def listening(what: str) -> Callable[[object], None]:
        return lambda where: print(f"sim {what} listening: {where}", flush=True)

    async def main() -> None:
        if smsc_config is not None:
            tasks.append(
                asyncio.ensure_future(
                    run_smsc_sim(
                        smsc_config,
                        args.host,
                        on_listening=listening("smsc"),
                        journal_path=Path(args.journal) if args.journal else None,
                    )
                )
            )
        if args.which in ("rcs", "all"):
            tasks.append(
                asyncio.ensure_future(
                    run_rcs_sim(rcs_config, args.host, args.rcs_port, on_listening=listening("rcs"))
                )
            )
        if reassign_config is not None:
            tasks.append(
                asyncio.ensure_future(
                    run_reassign_sim(
                        reassign_config,
                        args.host,
                        args.reassign_port,
                        on_listening=listening("reassign"),
                    )
                )
            )
        await asyncio.gather(*tasks)

    try:
        import uvloop

        runner: Callable[..., object] = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency
        runner = asyncio.run
    with contextlib.suppress(KeyboardInterrupt):
        runner(main())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="carrierd", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"carrierd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    config_help = f"configuration file (default: {DEFAULT_CONFIG_PATH})"
    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("--config", default=DEFAULT_CONFIG_PATH, help=config_help)
    run.set_defaults(func=_cmd_run)

    mig = sub.add_parser("migrate", help="apply database migrations (idempotent)")
    mig.add_argument("--config", default=DEFAULT_CONFIG_PATH, help=config_help)
    mig.add_argument(
        "--wait-s",
        type=float,
        default=0.0,
        help="wait up to this many seconds for an unreachable database (default: try once)",
    )
    mig.set_defaults(func=_cmd_migrate)

    sim = sub.add_parser("sim", help="run the carrier simulators")
    sim.add_argument("which", choices=("smsc", "rcs", "reassign", "all"))
    sim.add_argument("--config", default="conf/sim.toml", help="SMSC simulator config")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--rcs-port", type=int, default=8090)
    sim.add_argument(
        "--bot",
        action="append",
        help="an official account (bot id) the +Message simulator serves; repeat for several"
        " (default: carrierd)",
    )
    sim.add_argument(
        "--webhook-url",
        default="http://127.0.0.1:8080/v1/webhooks/rcs/{bot_id}",
        help="where each bot posts its webhooks; {bot_id} is replaced by the bot's id",
    )
    sim.add_argument("--webhook-secret", default="demo-webhook-secret")
    sim.add_argument("--log-level", default="info")
    sim.add_argument(
        "--journal",
        default="",
        help="append every accepted part and acknowledged receipt to this file (JSON lines);"
        " SIGUSR1 appends the counters",
    )
    reassign = sim.add_argument_group("reassignment database simulator (sim reassign)")
    reassign.add_argument("--reassign-port", type=int, default=8091)
    reassign.add_argument("--reassign-token", default="sim-reassign-token")
    reassign.add_argument(
        "--reassign-data",
        default="",
        help='invalidity histories, JSON {"data_month": "YYYY-MM", "numbers": '
        '{"+8190...": ["YYYY-MM", ...]}}; other numbers get generated ones',
    )
    reassign.add_argument(
        "--reassign-data-month",
        default="",
        help="newest month of the data, YYYY-MM (default: the file's, else this JST month)",
    )
    reassign.add_argument("--reassign-seed", type=int, default=1)
    reassign.add_argument(
        "--reassign-reassigned-share",
        type=float,
        default=0.02,
        help="share of generated numbers with a history (default 0.02)",
    )
    reassign.add_argument("--reassign-error-share", type=float, default=0.0, help="HTTP 503s")
    reassign.add_argument(
        "--reassign-malformed-share", type=float, default=0.0, help="answers that are not valid"
    )
    reassign.add_argument("--reassign-latency-ms", type=float, default=0.0)
    reassign.add_argument(
        "--reassign-jitter-ms", type=float, default=0.0, help="random extra latency, up to this"
    )
    sim.set_defaults(func=_cmd_sim)

    check = sub.add_parser("check-config", help="validate a configuration file")
    check.add_argument("config", nargs="?", default=DEFAULT_CONFIG_PATH, help=config_help)
    check.set_defaults(func=_cmd_check_config)

    add_client_commands(sub)
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
