"""`make chaos`: a fault campaign against real daemons, the SMSC simulator and PostgreSQL.

Each scenario feeds N messages (default 20,000) over HTTP to one or two
daemon processes while a fault script kills daemons, restarts or stops
PostgreSQL or kills the SMSC simulator, or while the simulator answers late,
throttles or holds receipts back. The verdict comes from both sides: the
database (what the daemons recorded and billed) and the simulator's journal
(what the carrier accepted and delivered, `carrierd sim smsc --journal`):

  lost      accepted (a row in `messages`) and still not final at the end
  dup       a (message, part) the SMSC accepted more than once
  unknown   messages ending `unknown`, by reason and by what the SMSC did:
            accepted none of the parts, some, all without every receipt
            acknowledged, or all with every receipt acknowledged
  unbilled  parts the SMSC delivered, and whose DELIVRD receipt the daemon
            acknowledged, that the message's sms_units leave out
  untold    parts the SMSC delivered whose receipt never reached the daemon
            (it died with a killed SMSC, or the SMSC gave up): nobody can
            bill what the carrier never reported
  exits     daemon exits the campaign did not cause; a supervisor restarts
            the daemon the way systemd/carrierd.service would (Restart=,
            RestartSec=, StartLimitBurst= in StartLimitIntervalSec=)
  resume_s  from the last repair (restart, database or SMSC back) to the
            first message final after it
  settle_s  from the last repair until every message was final

Scenarios marked "checked" ask the reassigned-number check (DOMAIN §13) for
every message, against `carrierd sim reassign` (answers after 300 ms, so
that every fault finds lookups in flight; 5% of requests answered 503; 2% of
numbers with a history), and judge it too: a message
that reached the SMSC without passing (no `no_history` verdict on it), and
billed checks against judged messages (each judged once, billed once,
however often a killed daemon's lookup was asked again).

PostgreSQL is a throwaway cluster of the campaign's own (scripts/localpg.sh
in a temporary directory): the shared test server is never restarted.
Simulator faults are simulator TOML keys fed by name from the scenario
table; a scenario whose key the simulator does not know is reported as
skipped, so it runs as soon as the simulator learns the key.

Logs (daemons, simulator, journal) stay in bench/out/chaos/<scenario>/.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import aiohttp
import asyncpg

from bench.harness import (
    ROOT,
    daemon_process,
    free_port,
    fresh_database,
    reassign_sim_process,
    wait_for_port,
)
from carrierd.domain.numbers import normalize_msisdn
from carrierd.engine.write_behind import CORRELATE_AFTER_S, CORRELATE_AGAIN_S
from carrierd.sim.smsc import (
    JournalPart,
    SimConfigError,
    SmscJournalSummary,
    read_smsc_journal,
    sim_config_from_mapping,
)

CARRIER_PREFIXES = {"docomo": "090", "au": "080", "softbank": "070", "rakuten": "060"}
ACCOUNT = "chaos"
TOKEN = "chaos-token"
UNIT_FILE = ROOT / "systemd/carrierd.service"
LOCALPG = ROOT / "scripts/localpg.sh"
OUT_DIR = ROOT / "bench/out/chaos"
# Cycled through the long texts so that no two parts of a message are alike:
# the simulator's journal tells parts apart by their text.
_HIRAGANA = "".join(chr(code) for code in range(0x3042, 0x3092))


@dataclass(frozen=True)
class Settings:
    messages: int = 20_000
    # Short leases: a killed daemon's claims come back within the run.
    lease_s: float = 15.0
    # Receipts an SMSC never sends (killed with them queued) settle as
    # unknown inside the run rather than 72 h later.
    receipt_timeout_s: float = 120.0
    response_timeout_s: float = 10.0
    binds: int = 2
    window: int = 64
    intake_batch: int = 200
    intake_give_up_s: float = 600.0
    progress_every_s: float = 10.0
    # After the faults and the intake are over: no message turning final for
    # this long ends the wait (what is open then is lost). None: lease +
    # receipt timeout + 30 s, the longest a healthy engine may stay silent.
    stall_s: float | None = None
    out_dir: Path = OUT_DIR

    @property
    def quiet_limit_s(self) -> float:
        return (
            self.stall_s
            if self.stall_s is not None
            else (self.lease_s + self.receipt_timeout_s + 30.0)
        )


# ---------------------------------------------------------------------------
# Configuration of the simulator and the daemons


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML for {value!r}")


def sim_toml(ports: Mapping[str, int], seed: int, keys: Mapping[str, object]) -> str:
    defaults: dict[str, object] = {
        "accounts": {ACCOUNT: ACCOUNT},
        "receipt_delay_min_s": 0.2,
        "receipt_delay_max_s": 1.0,
        "undeliverable_share": 0.02,
        # A carrier's SMSC retries a refused receipt for a long time; the
        # simulator's default (5 tries, 1 s apart) would give up within
        # any database outage and blame the daemon for it.
        "deliver_retry_delay_s": 1.0,
        "deliver_max_attempts": 600,
        **keys,
    }
    lines = [f"seed = {seed}", "[defaults]"]
    lines += [f"{key} = {_toml_value(value)}" for key, value in defaults.items()]
    for carrier, port in ports.items():
        lines += [
            f"[carriers.{carrier}]",
            f"port = {port}",
            f"subscriber_prefixes = {_toml_value([CARRIER_PREFIXES[carrier]])}",
        ]
    return "\n".join(lines) + "\n"


def keys_the_simulator_lacks(keys: Mapping[str, object], text: str) -> list[str]:
    """The scenario's keys this simulator rejects as unknown ([] when it takes them)."""
    try:
        sim_config_from_mapping(tomllib.loads(text))
    except SimConfigError as exc:
        lacking = [key for key in keys if f".{key}: unknown key" in str(exc)]
        if lacking:
            return lacking
        raise
    return []


REASSIGN_TOKEN = "chaos-reassign-token"
# Long before any run: every number is judged on months of its history.
REASSIGN_BASE_DATE = "2025-04-01"


def daemon_toml(
    ports: Mapping[str, int], settings: Settings, reassign_port: int | None = None
) -> str:
    lines = [
        "[engine]",
        "pacing = false",
        "claim_batch = 500",
        f"lease_s = {settings.lease_s}",
        "[database]",
        "pool_max = 10",
        f"[accounts.{ACCOUNT}]",
        f"tokens = {_toml_value([TOKEN])}",
        'senders = { docomo = "0120111111", au = "0120111111", softbank = "249200", '
        'rakuten = "0120111111" }',
    ]
    for carrier, port in ports.items():
        lines += [
            f"[carriers.{carrier}]",
            'host = "127.0.0.1"',
            f"port = {port}",
            f'system_id = "{ACCOUNT}"',
            f'password = "{ACCOUNT}"',
            f"binds = {settings.binds}",
            f"window = {settings.window}",
            f"response_timeout_s = {settings.response_timeout_s}",
            f"receipt_timeout_s = {settings.receipt_timeout_s}",
            f"number_prefixes = {_toml_value([CARRIER_PREFIXES[carrier]])}",
        ]
    if reassign_port is not None:
        lines += [
            "[reassign]",
            f'url = "http://127.0.0.1:{reassign_port}"',
            f'token = "{REASSIGN_TOKEN}"',
            "timeout_s = 2.0",
            "retries = 2",
        ]
    return "\n".join(lines) + "\n"


def recipient(index: int) -> str:
    """A number of its own per message, on each carrier in turn."""
    prefix = list(CARRIER_PREFIXES.values())[index % len(CARRIER_PREFIXES)]
    return f"{prefix}{10_000_000 + index:08d}"


def message_text(index: int) -> str:
    # One message in ten is long (three parts); every part differs.
    if index % 10 == 9:
        return f"長文のお知らせ {index} " + (_HIRAGANA * 2)[:140]
    return f"ご利用ありがとうございます {index}"


# ---------------------------------------------------------------------------
# The supervisor's rules, read from the systemd unit


@dataclass(frozen=True)
class RestartPolicy:
    restart: str = "no"
    restart_delay_s: float = 0.1
    start_limit_interval_s: float = 10.0
    start_limit_burst: int = 5
    start_timeout_s: float = 90.0

    def restarts_after(self, exit_code: int) -> bool:
        if self.restart == "always":
            return True
        if self.restart == "on-failure":
            return exit_code != 0
        if self.restart == "on-abnormal":
            return exit_code < 0
        return False

    def start_refused(self, recent_starts: Sequence[float], now_s: float) -> bool:
        if self.start_limit_interval_s <= 0 or self.start_limit_burst <= 0:
            return False
        window = [t for t in recent_starts if now_s - t < self.start_limit_interval_s]
        return len(window) >= self.start_limit_burst


def _duration_s(text: str) -> float:
    """systemd time spans as units use them: `2`, `2s`, `500ms`, `5min`, `1h`, `infinity`."""
    text = text.strip()
    if text == "infinity":
        return 0.0
    total = 0.0
    for number, unit in re.findall(r"([\d.]+)\s*([a-z]*)", text):
        scale = {"": 1.0, "s": 1.0, "sec": 1.0, "ms": 0.001, "min": 60.0, "m": 60.0, "h": 3600.0}
        total += float(number) * scale.get(unit, 1.0)
    return total


def restart_policy(unit_path: Path = UNIT_FILE) -> RestartPolicy:
    values: dict[str, str] = {}
    for line in unit_path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.lstrip().startswith(("#", ";")):
            values[key.strip()] = value.strip()
    policy = RestartPolicy()
    return RestartPolicy(
        restart=values.get("Restart", policy.restart),
        restart_delay_s=_duration_s(values.get("RestartSec", "100ms")),
        start_limit_interval_s=_duration_s(values.get("StartLimitIntervalSec", "10")),
        start_limit_burst=int(values.get("StartLimitBurst", policy.start_limit_burst)),
        start_timeout_s=_duration_s(values.get("TimeoutStartSec", "90")) or 90.0,
    )


# ---------------------------------------------------------------------------
# The processes a campaign drives


class ThrowawayPostgres:
    """A cluster of the campaign's own: restarted and stopped at will."""

    def __init__(self, data_dir: Path) -> None:
        self._env = {**os.environ, "CARRIERD_PGDATA": str(data_dir)}
        self.dsn = ""

    def _localpg(self, *args: str) -> str:
        out = subprocess.run(
            [str(LOCALPG), *args], env=self._env, check=True, capture_output=True, text=True
        )
        return out.stdout.strip()

    def start_now(self) -> None:
        self._localpg("start")
        self.dsn = self._localpg("dsn")

    def stop_now(self, mode: str = "fast") -> None:
        self._localpg("stop", mode)

    async def start(self) -> None:
        await asyncio.to_thread(self.start_now)

    async def stop(self, mode: str = "fast") -> None:
        await asyncio.to_thread(self.stop_now, mode)


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[ThrowawayPostgres]:
    data_dir = Path(tempfile.mkdtemp(prefix="carrierd-chaos-pg-"))
    cluster = ThrowawayPostgres(data_dir / "pg")
    try:
        cluster.start_now()
        yield cluster
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            cluster.stop_now("immediate")
        shutil.rmtree(data_dir, ignore_errors=True)


class SmscProcess:
    """`carrierd sim smsc` in its own process, journalling to one file across restarts."""

    def __init__(self, ports: Mapping[str, int], keys: Mapping[str, object], run_dir: Path) -> None:
        self.ports = dict(ports)
        self._keys = keys
        self._run_dir = run_dir
        self.journal_path = run_dir / "smsc-journal.jsonl"
        self._proc: subprocess.Popen[bytes] | None = None
        self._incarnation = 0

    async def start(self) -> None:
        # A new seed per incarnation: a restarted SMSC must not hand out the
        # message ids of the one before it.
        self._incarnation += 1
        config = self._run_dir / f"sim-{self._incarnation}.toml"
        config.write_text(sim_toml(self.ports, 7 + self._incarnation, self._keys))
        with (self._run_dir / "smsc.log").open("ab") as log:
            # Popen returns at once; the wait below polls the ports.
            self._proc = subprocess.Popen(  # noqa: ASYNC220
                [
                    sys.executable,
                    "-m",
                    "carrierd",
                    "sim",
                    "smsc",
                    "--config",
                    str(config),
                    "--journal",
                    str(self.journal_path),
                    "--log-level",
                    "warning",
                ],
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        await self._wait_listening()

    async def _wait_listening(self, timeout_s: float = 30.0) -> None:
        proc = self._proc
        assert proc is not None
        deadline = time.monotonic() + timeout_s
        for port in self.ports.values():
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"SMSC simulator exited with {proc.returncode}")
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError("SMSC simulator did not open its ports") from None
                    await asyncio.sleep(0.1)

    async def _write_counters(self, proc: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
        """SIGUSR1 and wait for the counters line: signals are the one way in
        that works whatever the process inherited (a background shell starts
        it with SIGINT ignored)."""
        offset = self.journal_path.stat().st_size if self.journal_path.exists() else 0
        proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and proc.poll() is None:
            with self.journal_path.open("rb") as journal:
                journal.seek(offset)
                if b'"event": "counters"' in journal.read():
                    return
            await asyncio.sleep(0.05)

    async def kill(self) -> None:
        """A crash, but with the counters written just before, for the report."""
        proc, self._proc = self._proc, None
        if proc is not None:
            await self._write_counters(proc)
            proc.send_signal(signal.SIGKILL)
            await asyncio.to_thread(proc.wait)

    async def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        await self._write_counters(proc)
        proc.terminate()
        try:
            await asyncio.to_thread(proc.wait, 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait)


class DaemonSlot:
    """One daemon as a service manager keeps it: started, killed, restarted."""

    def __init__(
        self,
        name: str,
        daemon_id: str | None,
        config_text: str,
        dsn: str,
        log_path: Path,
        policy: RestartPolicy,
    ) -> None:
        self.name = name
        self.daemon_id = daemon_id
        self.port = free_port()
        self._config_text = config_text
        self._dsn = dsn
        self._log_path = log_path
        self._policy = policy
        self._stack: contextlib.ExitStack | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        # Down on purpose (killed by the fault script, or stopped): the
        # supervisor leaves it alone.
        self._held_down = False
        self._lock = asyncio.Lock()
        self._starts_s: list[float] = []
        self._down_since_s = 0.0
        self.exits: list[int] = []  # exit codes the campaign did not cause
        self.failed_starts = 0
        self.gave_up = ""

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def _start_locked(self) -> bool:
        stack = contextlib.ExitStack()
        try:
            self.proc = await asyncio.to_thread(
                stack.enter_context,
                daemon_process(
                    self._config_text,
                    self._dsn,
                    self.port,
                    self.daemon_id,
                    log_path=self._log_path,
                    start_timeout_s=self._policy.start_timeout_s,
                ),
            )
        except RuntimeError:
            stack.close()
            self.proc = None
            return False
        self._stack = stack
        return True

    async def _close_locked(self) -> None:
        stack, self._stack = self._stack, None
        self.proc = None
        if stack is not None:
            await asyncio.to_thread(stack.close)

    async def start(self) -> bool:
        """An operator's start: clears a supervisor that gave up."""
        async with self._lock:
            self._held_down = False
            self.gave_up = ""
            self._starts_s = [time.monotonic()]
            if self.alive:
                return True
            await self._close_locked()
            started = await self._start_locked()
            if not started:
                self.failed_starts += 1
                self._down_since_s = time.monotonic()
            return started

    async def kill(self) -> None:
        async with self._lock:
            self._held_down = True
            if self.proc is not None and self.proc.poll() is None:
                self.proc.send_signal(signal.SIGKILL)
                await asyncio.to_thread(self.proc.wait)
            await self._close_locked()

    async def stop(self) -> None:
        """SIGTERM and wait for the drain (daemon_process's way out)."""
        async with self._lock:
            self._held_down = True
            await self._close_locked()

    async def supervise(self) -> None:
        policy = self._policy
        while True:
            await asyncio.sleep(0.2)
            async with self._lock:
                if self._held_down or self.gave_up:
                    continue
                now_s = time.monotonic()
                if self.proc is not None:
                    code = self.proc.poll()
                    if code is None:
                        continue
                    self.exits.append(code)
                    self._down_since_s = now_s
                    await self._close_locked()
                    if not policy.restarts_after(code):
                        self.gave_up = f"Restart={policy.restart} leaves exit {code} down"
                        continue
                if now_s - self._down_since_s < policy.restart_delay_s:
                    continue
                if policy.start_refused(self._starts_s, now_s):
                    self.gave_up = (
                        f"start limit: {policy.start_limit_burst} starts "
                        f"in {policy.start_limit_interval_s:.0f} s"
                    )
                    continue
                self._starts_s.append(now_s)
                if not await self._start_locked():
                    self.failed_starts += 1
                    self._down_since_s = time.monotonic()


# ---------------------------------------------------------------------------
# Scenarios


@dataclass
class Rig:
    """What a fault script acts on, and the record of what it did."""

    scenario: str
    daemons: list[DaemonSlot]
    postgres: ThrowawayPostgres
    smsc: SmscProcess
    dsn: str
    t0_s: float = field(default_factory=time.time)
    repairs_s: list[float] = field(default_factory=list)  # wall clock, like final_at

    async def at(self, offset_s: float) -> None:
        await asyncio.sleep(max(0.0, self.t0_s + offset_s - time.time()))

    async def busy(self, open_at_least: int, timeout_s: float = 20.0) -> None:
        """Until that many accepted messages are not final yet: a fault that
        must hit work in flight waits for it rather than for a time that a
        slower or faster machine would miss."""
        deadline = time.monotonic() + timeout_s
        while open_at_least and time.monotonic() < deadline:
            counts = await count_open(self.dsn)
            if counts is not None and counts[0] - counts[1] >= open_at_least:
                return
            await asyncio.sleep(0.05)

    def repaired(self, what: str) -> None:
        self.repairs_s.append(time.time())
        self.say(what)

    def say(self, text: str) -> None:
        print(f"  {self.scenario:<22} {time.time() - self.t0_s:6.1f} s  {text}", flush=True)


FaultScript = Callable[[Rig], Awaitable[None]]


def no_fault() -> FaultScript:
    async def script(rig: Rig) -> None:
        return None

    return script


def kill_daemon(
    times: int, first_at_s: float, every_s: float, down_s: float = 1.0, open_at_least: int = 0
) -> FaultScript:
    """SIGKILL the first daemon `times` times; restart it `down_s` later
    (same CARRIERD_DAEMON_ID when the scenario fixes ids)."""

    async def script(rig: Rig) -> None:
        target = rig.daemons[0]
        for n in range(1, times + 1):
            await rig.at(first_at_s + (n - 1) * every_s)
            await rig.busy(open_at_least)
            await target.kill()
            rig.say(f"SIGKILL {target.name} ({n}/{times})")
            await asyncio.sleep(down_s)
            started = await target.start()
            rig.repaired(f"{target.name} restarted" + ("" if started else ": start failed"))

    return script


def restart_postgres(mode: str, at_s: float, open_at_least: int = 0) -> FaultScript:
    async def script(rig: Rig) -> None:
        await rig.at(at_s)
        await rig.busy(open_at_least)
        began = time.monotonic()
        await rig.postgres.stop(mode)
        rig.say(f"PostgreSQL stopped (-m {mode})")
        await rig.postgres.start()
        rig.repaired(f"PostgreSQL back after {time.monotonic() - began:.1f} s")

    return script


def stop_postgres(down_s: float, at_s: float) -> FaultScript:
    async def script(rig: Rig) -> None:
        await rig.at(at_s)
        await rig.postgres.stop("fast")
        rig.say(f"PostgreSQL stopped for {down_s:.0f} s")
        await asyncio.sleep(down_s)
        await rig.postgres.start()
        rig.repaired("PostgreSQL back")

    return script


def kill_smsc(down_s: float, at_s: float) -> FaultScript:
    async def script(rig: Rig) -> None:
        await rig.at(at_s)
        await rig.smsc.kill()
        rig.say(f"SMSC simulator killed for {down_s:.0f} s")
        await asyncio.sleep(down_s)
        await rig.smsc.start()
        rig.repaired("SMSC simulator back on the same ports")

    return script


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    faults: FaultScript
    # Simulator TOML keys (under [defaults], for every carrier), by name.
    sim_keys: Mapping[str, object] = field(default_factory=dict)
    daemons: int = 1
    fixed_ids: bool = False
    feed_s: float = 30.0
    # Every message asks for the reassigned-number check (see the top).
    checked: bool = False


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("daemon-kill", "daemon SIGKILL x5", kill_daemon(5, 5.0, 8.0), feed_s=40.0),
    Scenario(
        "fixed-id-kill",
        "2 daemons, fixed ids, SIGKILL x5",
        kill_daemon(5, 5.0, 8.0),
        daemons=2,
        fixed_ids=True,
        feed_s=40.0,
    ),
    Scenario("pg-restart-fast", "PostgreSQL restart -m fast", restart_postgres("fast", 10.0)),
    Scenario(
        "pg-restart-immediate",
        "PostgreSQL restart -m immediate",
        restart_postgres("immediate", 10.0),
    ),
    Scenario("pg-stop-30s", "PostgreSQL stopped 30 s", stop_postgres(30.0, 10.0)),
    Scenario(
        "checked-daemon-kill",
        "checked, daemon SIGKILL x5",
        kill_daemon(5, 5.0, 8.0),
        feed_s=40.0,
        checked=True,
    ),
    Scenario(
        "checked-pg-restart",
        "checked, PostgreSQL restart -m immediate",
        restart_postgres("immediate", 10.0),
        checked=True,
    ),
    # Verdicts answered while the database is away wait to be recorded;
    # the lookups stop two rounds ahead, and leases run out meanwhile.
    Scenario(
        "checked-pg-stop-30s",
        "checked, PostgreSQL stopped 30 s",
        stop_postgres(30.0, 10.0),
        checked=True,
    ),
    Scenario("smsc-kill-20s", "SMSC killed, back after 20 s", kill_smsc(20.0, 10.0)),
    Scenario(
        "responses-late",
        "responses 0-14 s late (timeout 10 s)",
        no_fault(),
        sim_keys={"response_delay_min_s": 0.0, "response_delay_max_s": 14.0},
    ),
    Scenario(
        "smsc-throttle",
        "SMSC accepts 5/s per bind",
        no_fault(),
        sim_keys={"throttle_accept_per_s": 5.0},
    ),
    Scenario(
        "receipts-late",
        "receipts 20-60 s late",
        no_fault(),
        sim_keys={"receipt_delay_min_s": 20.0, "receipt_delay_max_s": 60.0},
    ),
)

# The short campaign `make test` runs (tests/e2e/test_chaos_short.py). Late
# responses keep submits in flight, so that the fault always finds some.
SHORT_SETTINGS = Settings(messages=2_000, lease_s=5.0, receipt_timeout_s=20.0, stall_s=30.0)
_SHORT_SIM_KEYS = {"response_delay_min_s": 0.2, "response_delay_max_s": 0.6}
SHORT_DAEMON_KILL = Scenario(
    "short-daemon-kill",
    "daemon SIGKILL x1",
    kill_daemon(1, 0.5, 0.0, down_s=0.5, open_at_least=400),
    sim_keys=_SHORT_SIM_KEYS,
    feed_s=1.0,
)
SHORT_CHECKED_KILL = replace(
    SHORT_DAEMON_KILL, name="short-checked-kill", title="checked, daemon SIGKILL x1", checked=True
)
SHORT_PG_RESTART = Scenario(
    "short-pg-restart",
    "PostgreSQL restart -m fast",
    restart_postgres("fast", 0.5, open_at_least=400),
    sim_keys=_SHORT_SIM_KEYS,
    feed_s=1.0,
)


# ---------------------------------------------------------------------------
# Load and watch


async def feed(
    rig: Rig, http: aiohttp.ClientSession, settings: Settings, feed_s: float, checked: bool = False
) -> int:
    """Post every message over `feed_s`, retrying through faults; returns how
    many requests' worth of messages were never accepted."""
    total, batch = settings.messages, settings.intake_batch
    check = {"reassigned_check": {"base_date": REASSIGN_BASE_DATE}} if checked else {}
    not_accepted = 0
    turn = 0
    for first in range(0, total, batch):
        await rig.at(first / total * feed_s)
        items = [
            {
                "to": recipient(i),
                "sms": {"text": message_text(i)},
                "client_ref": f"chaos-{i}",
                **check,
            }
            for i in range(first, min(total, first + batch))
        ]
        deadline = time.monotonic() + settings.intake_give_up_s
        while True:
            alive = [slot for slot in rig.daemons if slot.alive] or rig.daemons
            slot = alive[turn % len(alive)]
            turn += 1
            if await post_batch(http, slot.port, items):
                break
            if time.monotonic() > deadline:
                not_accepted += len(items)
                rig.say(f"intake gave up on {len(items)} messages")
                break
            await asyncio.sleep(0.5)
    return not_accepted


async def post_batch(
    http: aiohttp.ClientSession, port: int, items: list[dict[str, object]]
) -> bool:
    """True when the daemon took the batch; a retry after an unanswered
    request is safe (client_ref: the same reference is the same message)."""
    try:
        async with http.post(
            f"http://127.0.0.1:{port}/v1/messages",
            json={"messages": items},
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=aiohttp.ClientTimeout(total=30),
        ) as resp:
            body = await resp.text()
            if resp.status == 202:
                rejected = json.loads(body).get("rejected")
                if rejected:
                    raise RuntimeError(f"intake rejected chaos messages: {rejected[:3]}")
                return True
            if 400 <= resp.status < 500 and resp.status not in (408, 429):
                raise RuntimeError(f"intake answered {resp.status}: {body[:300]}")
            return False
    except (aiohttp.ClientError, TimeoutError, OSError):
        return False


# A receipt whose id met no part is looked at after CORRELATE_AFTER_S and,
# when it fits several parts of one message, once more CORRELATE_AGAIN_S
# later: the verdict waits for that second look.
SECOND_LOOK_S = CORRELATE_AFTER_S + CORRELATE_AGAIN_S


async def count_open(dsn: str) -> tuple[int, int] | None:
    """(messages, final messages), or None while the database cannot answer.
    Receipts still waiting for their second look, and `unknown` messages,
    count as not final yet: a receipt may still settle them (the SMSC may
    not have sent it yet); the quiet limit ends the wait for those that
    never settle."""
    try:
        conn = await asyncpg.connect(dsn, timeout=5)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return None
    try:
        row = await conn.fetchrow(
            "SELECT count(*) AS n, count(final_at) FILTER (WHERE state <> 'unknown') AS final"
            " FROM messages WHERE account_id = $1",
            ACCOUNT,
        )
        waiting = await conn.fetchval(
            "SELECT count(*) FROM early_receipts WHERE ambiguous_at IS NULL"
            " AND (checked_at IS NULL OR checked_at < received_at + make_interval(secs => $1))",
            SECOND_LOOK_S,
        )
        assert row is not None
        return int(row["n"]), int(row["final"]) - int(waiting)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return None
    finally:
        with contextlib.suppress(Exception):
            await conn.close()


async def watch(
    rig: Rig, dsn: str, settings: Settings, feeder: asyncio.Task[int], faults: asyncio.Task[None]
) -> None:
    """Until every accepted message is final, or nothing turns final for the
    quiet limit once intake and faults are over; prints progress."""
    last_final, last_change_s, last_print_s = -1, time.monotonic(), 0.0
    while True:
        for task in (feeder, faults):
            if task.done() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        counts = await count_open(dsn)
        now_s = time.monotonic()
        if counts is not None and counts[1] != last_final:
            last_final, last_change_s = counts[1], now_s
        if now_s - last_print_s >= settings.progress_every_s:
            last_print_s = now_s
            up = sum(slot.alive for slot in rig.daemons)
            state = "database down" if counts is None else f"{counts[1]}/{counts[0]} final"
            rig.say(f"{state}, daemons up {up}/{len(rig.daemons)}")
        if feeder.done() and faults.done():
            if counts is not None and counts[0] == counts[1]:
                return
            if now_s - last_change_s > settings.quiet_limit_s:
                rig.say(f"nothing turned final for {settings.quiet_limit_s:.0f} s: judging")
                return
        await asyncio.sleep(1.0)


# ---------------------------------------------------------------------------
# Verdict


@dataclass
class Outcome:
    scenario: str
    title: str
    skipped: str = ""
    error: str = ""
    messages: int = 0
    not_accepted: int = 0
    lost: int = 0
    duplicates: int = 0
    unknown: Counter[str] = field(default_factory=Counter)  # "reason: what the SMSC did"
    unknown_part_states: Counter[str] = field(default_factory=Counter)  # database side
    unbilled: int = 0  # delivered, receipt acknowledged, not billed
    untold: int = 0  # delivered at the SMSC, receipt never acknowledged
    overbilled: int = 0
    billing_counts_gap: int = 0  # billing_counts minus the sum of sms_units
    # Checked scenarios: messages judged (a verdict on the row) by verdict,
    # reassigned_check units billed, and messages the SMSC accepted a part
    # of without a no_history verdict.
    checked: bool = False
    verdicts: Counter[str] = field(default_factory=Counter)
    checks_billed: int = 0
    sent_unpassed: int = 0
    # (carrier, SMSC id) pairs held by more than one part: a receipt or a
    # response recorded on a part it does not belong to.
    shared_ids: list[str] = field(default_factory=list)
    open_samples: list[str] = field(default_factory=list)  # lost messages, as the database has them
    incomplete_samples: list[str] = field(default_factory=list)
    states: Counter[str] = field(default_factory=Counter)
    failed_reasons: Counter[str] = field(default_factory=Counter)
    # History events that show what the faults did (recoveries, timeouts, waits).
    events: Counter[str] = field(default_factory=Counter)
    exits: int = 0
    failed_starts: int = 0
    gave_up: str = ""
    resume_s: float | None = None
    settle_s: float | None = None
    elapsed_s: float = 0.0
    smsc: dict[str, int] = field(default_factory=dict)

    @property
    def unknown_total(self) -> int:
        return sum(self.unknown.values())


# message_events kinds worth a line in the report (domain/lifecycle.py Event).
TELLING_EVENTS = (
    "lease_recovered",
    "lease_lost",
    "released",
    "receipt_timeout",
    "postponed",
    "rerouted",
    "part_delivered_late",
)


@dataclass
class DatabaseSnapshot:
    messages: list[asyncpg.Record]
    unknown_parts: list[asyncpg.Record]
    billed_total: int
    checks_billed: int
    events: dict[str, int]
    shared_ids: list[asyncpg.Record]
    # A few messages never final, with what tells why: lease, parts, history.
    open_samples: list[asyncpg.Record] = field(default_factory=list)
    incomplete_samples: list[asyncpg.Record] = field(default_factory=list)


async def snapshot(dsn: str) -> DatabaseSnapshot:
    conn = await asyncpg.connect(dsn, timeout=30)
    # One snapshot for every query: the daemons still run, and a part
    # billed between two reads would show as a gap between them.
    tx = conn.transaction(isolation="repeatable_read", readonly=True)
    await tx.start()
    try:
        messages = await conn.fetch(
            """SELECT id, msisdn, state, reason_code, sms_parts, sms_units,
                      extract(epoch FROM final_at) AS final_s,
                      reassign_base_date IS NOT NULL AS asked_check, reassign_verdict
               FROM messages WHERE account_id = $1""",
            ACCOUNT,
        )
        unknown_parts = await conn.fetch(
            """SELECT p.message_id, p.attempt, p.state, p.command_status
               FROM parts p JOIN messages m ON m.id = p.message_id
               WHERE m.state = 'unknown' AND m.account_id = $1""",
            ACCOUNT,
        )
        events = await conn.fetch(
            """SELECT e.kind, count(*) AS n FROM message_events e
               JOIN messages m ON m.id = e.message_id
               WHERE m.account_id = $1 AND e.kind = ANY($2::text[]) GROUP BY e.kind""",
            ACCOUNT,
            list(TELLING_EVENTS),
        )
        shared_ids = await conn.fetch(
            """SELECT p.carrier, p.smsc_message_id,
                      array_agg(format('%s/%s/%s %s', p.message_id, p.attempt, p.part_no,
                                       p.state) ORDER BY p.message_id, p.attempt, p.part_no)
                        AS parts
               FROM parts p JOIN messages m ON m.id = p.message_id
               WHERE m.account_id = $1 AND p.smsc_message_id IS NOT NULL
               GROUP BY 1, 2 HAVING count(*) > 1""",
            ACCOUNT,
        )
        open_samples = await conn.fetch(
            """SELECT m.id, m.state, m.attempt, m.lease_owner,
                      round(extract(epoch FROM m.lease_expires_at - now())) AS lease_left_s,
                      (SELECT string_agg(p.part_no || ':' || p.state, ',' ORDER BY p.part_no)
                         FROM parts p WHERE p.message_id = m.id AND p.attempt = m.attempt)
                        AS parts,
                      (SELECT string_agg(e.kind, ',' ORDER BY e.id)
                         FROM message_events e WHERE e.message_id = m.id) AS history
               FROM messages m WHERE m.account_id = $1 AND m.final_at IS NULL
               ORDER BY m.id LIMIT 3""",
            ACCOUNT,
        )
        # Messages the engine gave up on while the SMSC answered: how each
        # part ended (with any SMPP status and the response's delay).
        incomplete_samples = await conn.fetch(
            """SELECT m.id, m.attempt,
                      (SELECT string_agg(p.part_no || ':' || p.state
                                         || coalesce(' 0x' || to_hex(p.command_status), '')
                                         || coalesce(' ' || p.unknown_cause, '')
                                         || coalesce(' +' || round(extract(epoch
                                              FROM p.resp_at - p.sent_at)::numeric, 1) || 's',
                                                     ''),
                                         ',' ORDER BY p.part_no)
                         FROM parts p WHERE p.message_id = m.id AND p.attempt = m.attempt)
                        AS parts,
                      (SELECT string_agg(e.kind || ' +' || round(extract(epoch
                                           FROM e.at - m.accepted_at)::numeric, 1) || 's'
                                         || coalesce(' ' || e.detail::text, ''),
                                         ', ' ORDER BY e.id)
                         FROM message_events e WHERE e.message_id = m.id) AS history
               FROM messages m WHERE m.account_id = $1 AND m.state = 'failed'
                 AND m.reason_code = 'incomplete_submission'
               ORDER BY m.id LIMIT 3""",
            ACCOUNT,
        )
        billed = await conn.fetchval(
            "SELECT coalesce(sum(units), 0) FROM billing_counts"
            " WHERE account_id = $1 AND channel = 'sms'",
            ACCOUNT,
        )
        checks_billed = await conn.fetchval(
            "SELECT coalesce(sum(units), 0) FROM billing_counts"
            " WHERE account_id = $1 AND channel = 'reassigned_check'",
            ACCOUNT,
        )
    finally:
        await tx.rollback()
        await conn.close()
    return DatabaseSnapshot(
        messages,
        unknown_parts,
        int(billed),
        int(checks_billed),
        {r["kind"]: int(r["n"]) for r in events},
        shared_ids,
        open_samples,
        incomplete_samples,
    )


def _smsc_side(parts: Sequence[JournalPart], total_parts: int) -> str:
    accepted = len(parts)
    revealed = sum(1 for part in parts if part.receipts_acknowledged)
    if accepted == 0:
        return "SMSC accepted no part"
    if accepted < total_parts:
        return "SMSC accepted some parts"
    if revealed < accepted:
        return "SMSC accepted, receipt not acknowledged"
    return "SMSC accepted, every receipt acknowledged"


def judge(
    outcome: Outcome, db: DatabaseSnapshot, journal: SmscJournalSummary, repairs_s: Sequence[float]
) -> None:
    by_recipient: dict[str, list[JournalPart]] = {}
    for (to, _text), part in journal.parts.items():
        by_recipient.setdefault(to, []).append(part)
    outcome.duplicates = len(journal.duplicates())
    outcome.events.update(db.events)
    outcome.messages = len(db.messages)
    finals: list[float] = []
    unknown_ids: set[int] = set()
    for row in db.messages:
        outcome.states[row["state"]] += 1
        if row["state"] == "failed":
            outcome.failed_reasons[str(row["reason_code"])] += 1
        if row["final_s"] is None:
            outcome.lost += 1
        else:
            finals.append(float(row["final_s"]))
        parts = by_recipient.get(normalize_msisdn(row["msisdn"]), []) if row["msisdn"] else []
        delivered = [part for part in parts if part.delivered]
        told = [part for part in delivered if part.receipts_acknowledged]
        units = int(row["sms_units"])
        outcome.unbilled += max(0, len(told) - units)
        outcome.untold += len(delivered) - len(told)
        outcome.overbilled += max(0, units - len(delivered))
        if row["asked_check"]:
            outcome.verdicts[row["reassign_verdict"] or "none"] += 1
            if parts and row["reassign_verdict"] != "no_history":
                outcome.sent_unpassed += 1
        if row["state"] == "unknown":
            unknown_ids.add(int(row["id"]))
            side = _smsc_side(parts, int(row["sms_parts"] or 1))
            outcome.unknown[f"{row['reason_code']}: {side}"] += 1
    outcome.billing_counts_gap = db.billed_total - sum(int(r["sms_units"]) for r in db.messages)
    outcome.checks_billed = db.checks_billed
    outcome.open_samples = [
        f"{r['id']} {r['state']} attempt {r['attempt']} lease {r['lease_owner']}"
        f" ({r['lease_left_s']} s left) parts {r['parts']} history {r['history']}"
        for r in db.open_samples
    ]
    outcome.incomplete_samples = [
        f"{r['id']} attempt {r['attempt']} parts {r['parts']} history {r['history']}"
        for r in db.incomplete_samples
    ]
    outcome.shared_ids = [
        f"{r['carrier']} {r['smsc_message_id']}: {', '.join(r['parts'])}" for r in db.shared_ids
    ]
    last_attempt: dict[int, int] = {}
    for row in db.unknown_parts:
        message_id = row["message_id"]
        last_attempt[message_id] = max(last_attempt.get(message_id, 0), row["attempt"])
    for row in db.unknown_parts:
        if row["attempt"] == last_attempt[row["message_id"]]:
            status = row["command_status"]
            label = row["state"] if not status else f"{row['state']} 0x{status:02X}"
            outcome.unknown_part_states[label] += 1
    if repairs_s:
        last_repair_s = max(repairs_s)
        after = sorted(t for t in finals if t >= last_repair_s)
        if after:
            outcome.resume_s = after[0] - last_repair_s
            if outcome.lost == 0:
                outcome.settle_s = after[-1] - last_repair_s
    for name in ("submits", "accepted", "refused", "throttled", "receipts_sent"):
        outcome.smsc[name] = journal.counter_total(name)


# ---------------------------------------------------------------------------
# Running a scenario


async def _campaign(
    scenario: Scenario,
    settings: Settings,
    dsn: str,
    postgres: ThrowawayPostgres,
    run_dir: Path,
    outcome: Outcome,
) -> None:
    ports = {carrier: free_port() for carrier in CARRIER_PREFIXES}
    smsc = SmscProcess(ports, scenario.sim_keys, run_dir)
    policy = restart_policy()
    reassign_port = free_port() if scenario.checked else None
    outcome.checked = scenario.checked
    config_text = daemon_toml(ports, settings, reassign_port)
    slots = [
        DaemonSlot(
            f"daemon-{letter}",
            f"chaos-{letter}" if scenario.fixed_ids else None,
            config_text,
            dsn,
            run_dir / f"daemon-{letter}.log",
            policy,
        )
        for letter in "ab"[: scenario.daemons]
    ]
    rig = Rig(scenario.name, slots, postgres, smsc, dsn)
    supervisors: list[asyncio.Task[None]] = []
    db: DatabaseSnapshot | None = None
    reassign: subprocess.Popen[bytes] | None = None
    try:
        if reassign_port is not None:
            reassign = start_reassign_sim(reassign_port, run_dir)
            # Before any daemon: a lookup with no service would skip messages.
            wait_for_port(reassign_port, reassign)
        await smsc.start()
        for slot in slots:
            if not await slot.start():
                raise RuntimeError(f"{slot.name} did not start (log: {run_dir})")
        supervisors = [asyncio.create_task(slot.supervise()) for slot in slots]
        rig.t0_s = time.time()
        async with aiohttp.ClientSession() as http:
            feeder = asyncio.create_task(
                feed(rig, http, settings, scenario.feed_s, scenario.checked)
            )
            faults = asyncio.create_task(scenario.faults(rig))
            try:
                await watch(rig, dsn, settings, feeder, faults)
            finally:
                for task in (feeder, faults):
                    task.cancel()
                await asyncio.gather(feeder, faults, return_exceptions=True)
            if not feeder.cancelled() and feeder.exception() is None:
                outcome.not_accepted = feeder.result()
        outcome.elapsed_s = time.time() - rig.t0_s
        # Before the daemons stop: a drain may move what the faults left stuck.
        db = await snapshot(dsn)
    finally:
        for task in supervisors:
            task.cancel()
        await asyncio.gather(*supervisors, return_exceptions=True)
        await asyncio.gather(*(slot.stop() for slot in slots))
        await smsc.stop()
        if reassign is not None:
            reassign.terminate()
            reassign.wait(10)
        # The database must be up for it to be dropped, whatever happened.
        await postgres.start()
    for slot in slots:
        outcome.exits += len(slot.exits)
        outcome.failed_starts += slot.failed_starts
        if slot.gave_up:
            outcome.gave_up = f"{slot.name}: {slot.gave_up}"
    assert db is not None
    judge(outcome, db, read_smsc_journal(smsc.journal_path), rig.repairs_s)


def start_reassign_sim(port: int, run_dir: Path) -> subprocess.Popen[bytes]:
    """`carrierd sim reassign`: 300 ms answers, 5% of requests 503."""
    return reassign_sim_process(port, REASSIGN_TOKEN, 300, 0.05, run_dir / "reassign.log")


def run_scenario(scenario: Scenario, settings: Settings, postgres: ThrowawayPostgres) -> Outcome:
    outcome = Outcome(scenario.name, scenario.title)
    probe = sim_toml(dict.fromkeys(CARRIER_PREFIXES, 0), 1, scenario.sim_keys)
    lacking = keys_the_simulator_lacks(scenario.sim_keys, probe)
    if lacking:
        outcome.skipped = "simulator lacks " + ", ".join(lacking)
        return outcome
    run_dir = settings.out_dir / scenario.name
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    with fresh_database("chaos", postgres.dsn) as dsn:
        asyncio.run(_campaign(scenario, settings, dsn, postgres, run_dir, outcome))
    return outcome


# ---------------------------------------------------------------------------
# Report


_HEADER = (
    f"{'scenario':<36}{'msgs':>7}{'lost':>6}{'dup':>5}{'unknown':>9}"
    f"{'unbilled':>10}{'untold':>8}{'exits':>7}{'resume_s':>10}{'settle_s':>10}"
)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def report_lines(outcome: Outcome) -> list[str]:
    if outcome.skipped or outcome.error:
        what = f"skipped: {outcome.skipped}" if outcome.skipped else f"error: {outcome.error}"
        return [f"{outcome.title:<36}  {what}"]
    lines = [
        f"{outcome.title:<36}{outcome.messages:>7}{outcome.lost:>6}{outcome.duplicates:>5}"
        f"{outcome.unknown_total:>9}{outcome.unbilled:>10}{outcome.untold:>8}{outcome.exits:>7}"
        f"{_seconds(outcome.resume_s):>10}{_seconds(outcome.settle_s):>10}"
    ]
    detail = "    "
    if outcome.unknown:
        lines.append(
            detail + "unknown: " + "; ".join(f"{k} {n}" for k, n in outcome.unknown.most_common())
        )
        lines.append(
            detail
            + "unknown, their last attempt's parts: "
            + ", ".join(f"{k} {n}" for k, n in outcome.unknown_part_states.most_common())
        )
    if outcome.overbilled or outcome.billing_counts_gap:
        lines.append(
            detail + f"billed but not delivered: {outcome.overbilled} parts; billing_counts "
            f"minus sms_units: {outcome.billing_counts_gap}"
        )
    if outcome.checked:
        judged = outcome.verdicts["no_history"] + outcome.verdicts["history"]
        lines.append(
            detail
            + "reassigned checks: "
            + ", ".join(f"{k} {n}" for k, n in sorted(outcome.verdicts.items()))
            + f"; billed {outcome.checks_billed} for {judged} judged"
            + f" (gap {outcome.checks_billed - judged}); at the SMSC without passing:"
            + f" {outcome.sent_unpassed}"
        )
    if outcome.lost and outcome.open_samples:
        lines.append(detail + "never final, e.g.: " + "; ".join(outcome.open_samples))
    if outcome.shared_ids:
        lines.append(
            detail
            + f"SMSC ids on two parts: {len(outcome.shared_ids)}: "
            + "; ".join(outcome.shared_ids[:5])
        )
    if outcome.not_accepted:
        lines.append(detail + f"never accepted by intake: {outcome.not_accepted}")
    if outcome.exits or outcome.failed_starts or outcome.gave_up:
        lines.append(
            detail
            + f"daemon exits {outcome.exits}, failed starts {outcome.failed_starts}"
            + (f", supervisor gave up ({outcome.gave_up})" if outcome.gave_up else "")
        )
    if outcome.events:
        lines.append(
            detail + "history: " + ", ".join(f"{k} {n}" for k, n in outcome.events.most_common())
        )
    for sample in outcome.incomplete_samples:
        lines.append(detail + f"incomplete: {sample}")
    if outcome.failed_reasons:
        lines.append(
            detail
            + "failed: "
            + ", ".join(f"{k} {n}" for k, n in outcome.failed_reasons.most_common())
        )
    lines.append(
        detail
        + "states: "
        + ", ".join(f"{k} {n}" for k, n in sorted(outcome.states.items()))
        + f"; SMSC: {', '.join(f'{k} {v}' for k, v in outcome.smsc.items())}"
        + f"; {outcome.elapsed_s:.0f} s"
    )
    return lines


def run_campaign(
    scenarios: Sequence[Scenario], settings: Settings, postgres: ThrowawayPostgres
) -> list[Outcome]:
    outcomes = []
    for scenario in scenarios:
        print(f"== {scenario.title} ({scenario.name}), {settings.messages} messages", flush=True)
        try:
            outcome = run_scenario(scenario, settings, postgres)
        except Exception as exc:  # one broken scenario must not hide the others
            outcome = Outcome(scenario.name, scenario.title, error=f"{type(exc).__name__}: {exc}")
        outcomes.append(outcome)
        print("\n".join([_HEADER, *report_lines(outcome)]), flush=True)
    return outcomes


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=Settings.messages)
    parser.add_argument("--only", default="", help="comma-separated scenario names (see --list)")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    args = parser.parse_args()
    if args.list:
        for scenario in SCENARIOS:
            print(f"{scenario.name:<22} {scenario.title}")
        return 0
    chosen = [s for s in SCENARIOS if not args.only or s.name in args.only.split(",")]
    if not chosen:
        parser.error(f"no scenario named {args.only!r}")
    settings = replace(Settings(), messages=args.messages)
    print(
        f"chaos: {len(chosen)} scenarios, {settings.messages} messages each, lease "
        f"{settings.lease_s:.0f} s, receipt timeout {settings.receipt_timeout_s:.0f} s, "
        f"supervisor {restart_policy()}; logs in {settings.out_dir}",
        flush=True,
    )
    started = time.monotonic()
    with throwaway_postgres() as postgres:
        outcomes = run_campaign(chosen, settings, postgres)
    print(f"\nchaos: {time.monotonic() - started:.0f} s, {socket.gethostname()}")
    print(_HEADER)
    for outcome in outcomes:
        print("\n".join(report_lines(outcome)))
    return 1 if any(o.error for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
