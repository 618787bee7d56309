"""The shipped systemd unit never gives up on a daemon that can recover:
a database outage of any length ends with the service running again."""

from __future__ import annotations

import configparser
import shlex
from pathlib import Path

from carrierd.__main__ import build_parser

ROOT = Path(__file__).resolve().parents[2]


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(ROOT / "systemd/carrierd.service")
    return parser


def test_restarts_without_a_start_limit() -> None:
    parsed = unit()
    assert parsed["Unit"]["StartLimitIntervalSec"] == "0"
    assert "StartLimitBurst" not in parsed["Unit"]
    assert parsed["Service"]["Restart"] == "always"
    assert float(parsed["Service"]["RestartSec"]) > 0


def test_the_migration_waits_for_the_database_within_the_start_timeout() -> None:
    service = unit()["Service"]
    argv = shlex.split(service["ExecStartPre"])
    args = build_parser().parse_args(argv[1:])
    assert args.command == "migrate"
    assert 0 < args.wait_s < float(service["TimeoutStartSec"])
