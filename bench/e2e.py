"""End to end: intake → SMPP → receipts → final state, 100,000 messages.

The daemon and the four-carrier SMSC simulator run in their own processes,
PostgreSQL on the same machine; pacing is off. Subscribers are where they
are in life: on the carrier their number's block is allocated to, 15% of
them ported elsewhere (the simulator's default), and the daemon guesses with
what it has built in, rerouting the ported ones. Prints messages/s from the
first request to the last final state, intake-to-submit latency percentiles
(from the rows: first part's sent_at minus accepted_at) and the daemon's
peak RSS (VmHWM), then RSS at the end, to show it does not grow with the
backlog.

`--optout-list N` is the same run with every message asking to skip
opted-out numbers (DOMAIN §12) against a list of N numbers (loaded before
the clock starts), none of them a recipient: what reading the list at
registration and the gate at claim cost, every message still sent.

With --reassign-latency-ms N every message asks for the reassigned-number
check (DOMAIN §13) against `carrierd sim reassign` answering each lookup
after N ms (its generated data: 2% of numbers have a history and end
skipped): the check's cost is this run's messages/s against the plain one's.

With --pairs N (and one of the two above), N plain runs each followed by
one asking for it, and the median of the N costs: these machines' speed
drifts between runs by more than the costs measured, and a drift shows in
both runs of a pair alike.

Each run has a new database. PostgreSQL plans a prepared statement while
the tables are still small and keeps that plan until the next ANALYZE,
which autovacuum runs a minute or so later: a 20-second run on an empty
database is all first minute, and its statements plan sequential scans of
tables that grow under them. `--history N` first fills the database with N
delivered messages of the past 90 days (one part and three events each),
vacuums and analyzes it, as a database in use holds its delivery log (§15).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import asyncpg

from bench.guess import new_numbers
from bench.harness import daemon_process, free_port, fresh_database, reassign_sim_process

CARRIERS = ("docomo", "au", "softbank", "rakuten")

# --history: delivered messages of the past 90 days, as retention keeps them.
HISTORY_SQL = """
WITH sent AS (
    INSERT INTO messages (account_id, channel, leg, state, recipient_raw, msisdn, validated,
                          sms_text, sms_encoding, sms_parts, carrier, route, attempt,
                          not_before, expires_at, accepted_at, submitted_at, final_at,
                          updated_at)
    SELECT 'bench', 'sms', 'sms', 'delivered', '090' || lpad((i % 90000000)::text, 8, '0'),
           '+8190' || lpad((i % 90000000)::text, 8, '0'), true, 'ご利用ありがとうございます',
           'ucs2', 1, (ARRAY['docomo', 'au', 'softbank', 'rakuten'])[1 + i % 4], 'premium', 1,
           at, at + interval '3 days', at, at, at + interval '5 seconds', at
    FROM generate_series(1, $1) AS i,
         LATERAL (SELECT $2::timestamptz - make_interval(secs => 90 * 86400.0 * i / $1)) AS t(at)
    RETURNING id, carrier, accepted_at
),
parts_sent AS (
    INSERT INTO parts (message_id, attempt, part_no, part_total, carrier, bind_id,
                       smsc_message_id, state, command_status, receipt_stat, sent_at, resp_at,
                       receipt_at)
    SELECT id, 1, 1, 1, carrier, carrier || '-1', 'h' || id, 'delivered', 0, 'DELIVRD',
           accepted_at, accepted_at, accepted_at + interval '5 seconds'
    FROM sent
)
INSERT INTO message_events (message_id, at, kind, state, carrier)
SELECT id, accepted_at, kind, state, carrier
FROM sent, (VALUES ('accepted', 'queued'), ('sending', 'sending'),
                   ('delivered', 'delivered')) AS e(kind, state)
"""


def sim_toml(ports: dict[str, int]) -> str:
    lines = [
        "seed = 3",
        "[defaults]",
        'accounts = { bench = "bench" }',
        "receipt_delay_min_s = 0.2",
        "receipt_delay_max_s = 1.0",
    ]
    for carrier, port in ports.items():
        lines += [f"[carriers.{carrier}]", f"port = {port}"]
    return "\n".join(lines) + "\n"


def daemon_toml(
    ports: dict[str, int],
    binds: int,
    window: int,
    reassign_port: int | None = None,
    reassign_batch: int = 100,
) -> str:
    lines = [
        "[engine]",
        "pacing = false",
        "claim_batch = 1000",
        "[database]",
        "pool_max = 20",
        "[accounts.bench]",
        'tokens = ["bench-token"]',
        'senders = { docomo = "0120111111", au = "0120111111", softbank = "249200", '
        'rakuten = "0120111111" }',
    ]
    for carrier, port in ports.items():
        lines += [
            f"[carriers.{carrier}]",
            'host = "127.0.0.1"',
            f"port = {port}",
            'system_id = "bench"',
            'password = "bench"',
            f"binds = {binds}",
            f"window = {window}",
        ]
    if reassign_port is not None:
        lines += [
            "[reassign]",
            f'url = "http://127.0.0.1:{reassign_port}"',
            'token = "bench-reassign-token"',
            f"batch_size = {reassign_batch}",
        ]
    return "\n".join(lines) + "\n"


def cpu_s(pid: int) -> float:
    """utime + stime of one process, in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def postgres_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres":
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def cpu_snapshot(
    daemon_pids: list[int], sim_pid: int, reassign_sim_pid: int | None = None
) -> dict[str, float]:
    """CPU seconds so far of the daemons, the simulators and every PostgreSQL process."""
    return {
        "daemon": sum(cpu_s(pid) for pid in daemon_pids),
        "simulator": cpu_s(sim_pid),
        # It stands in for a service elsewhere, but shares this machine.
        **({"reassign simulator": cpu_s(reassign_sim_pid)} if reassign_sim_pid else {}),
        "PostgreSQL": sum(cpu_s(p) for p in postgres_pids()),
        "bench client": cpu_s(os.getpid()),
    }


def rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


async def final_by_metrics(http: aiohttp.ClientSession, port: int) -> float:
    """Messages the daemon counts as final (carrierd_messages_final_total)."""
    async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
        text = await resp.text()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("carrierd_messages_final_total{")
    )


async def load_optout_list(port: int, numbers: list[str]) -> None:
    headers = {"Authorization": "Bearer bench-token"}
    async with aiohttp.ClientSession() as http:
        for start in range(0, len(numbers), 10_000):
            async with http.post(
                f"http://127.0.0.1:{port}/v1/optouts",
                json={"numbers": numbers[start : start + 10_000]},
                headers=headers,
            ) as resp:
                assert resp.status == 200, await resp.text()


async def run(
    dsn: str,
    ports: list[int],
    pids: list[int],
    sim_pid: int,
    total: int,
    batch: int,
    optout_list: int = 0,
    reassign_check: bool = False,
    reassign_sim_pid: int | None = None,
    history: int = 0,
) -> float:
    """One run; returns its messages/s end to end. With `history`, the
    database first holds that many delivered messages of the past 90 days
    (HISTORY_SQL) and is vacuumed and analyzed, untimed."""
    headers = {"Authorization": "Bearer bench-token"}
    numbers = new_numbers(total, 0)
    # Numbers after the recipients': on the list, never sent to.
    if optout_list:
        await load_optout_list(ports[0], new_numbers(optout_list, total))
    ask = {"skip_opted_out": True} if optout_list else {}
    conn = await asyncpg.connect(dsn)
    after_id = 0
    if history:
        await conn.execute(HISTORY_SQL, history, datetime.now(UTC))
        # Only what it filled: a table analyzed empty plans scans of itself.
        # Vacuumed too: autovacuum's pass over the fill (its insert
        # threshold) would otherwise land in whichever run came next, a
        # third more PostgreSQL CPU in that run alone.
        await conn.execute("VACUUM (ANALYZE) messages, parts, message_events")
        # The fill's WAL checkpointed now, not in the middle of the run
        # (bench/harness.py does the same for the run before).
        await conn.execute("CHECKPOINT")
        after_id = await conn.fetchval("SELECT coalesce(max(id), 0) FROM messages")
        print(f"e2e: the database holds {history:,} delivered messages of 90 days, analyzed")
    async with aiohttp.ClientSession() as http:
        sem = asyncio.Semaphore(4)

        async def post(recipients: list[str], b: int) -> None:
            items = [
                {
                    "to": to,
                    "sms": {"text": f"ご利用ありがとうございます {b}-{i}"},
                    **ask,
                    **({"reassigned_check": {"base_date": "2025-04-01"}} if reassign_check else {}),
                }
                for i, to in enumerate(recipients[b * batch : (b + 1) * batch])
            ]
            async with (
                sem,
                http.post(
                    f"http://127.0.0.1:{ports[b % len(ports)]}/v1/messages",
                    json={"messages": items},
                    headers=headers,
                ) as resp,
            ):
                assert resp.status == 202, await resp.text()

        final_before = sum([await final_by_metrics(http, port) for port in ports])
        cpu_before = cpu_snapshot(pids, sim_pid, reassign_sim_pid)
        started = time.perf_counter()
        await asyncio.gather(*(post(numbers, b) for b in range(total // batch)))
        intake_s = time.perf_counter() - started
        peak_during = 0
        while True:
            # Watched like Prometheus watches it, and seldom: counting rows
            # four times a second was 5% of the database's time at 100k
            # messages, and rendering /metrics that often a few % of the
            # daemon's. Every second, then every 0.1 s for the last tenth,
            # where the end is timed. The counter moves inside the settling
            # transaction, so the database confirms the end.
            final = sum([await final_by_metrics(http, port) for port in ports]) - final_before
            if final >= total:
                done = await conn.fetchval(
                    "SELECT count(*) FROM messages WHERE final_at IS NOT NULL AND id > $1",
                    after_id,
                )
                if done >= total:
                    break
            peak_during = max(peak_during, *(rss_kib(pid, "VmRSS") for pid in pids))
            await asyncio.sleep(1.0 if final < 0.9 * total else 0.1)
    elapsed = time.perf_counter() - started
    cpu_after = cpu_snapshot(pids, sim_pid, reassign_sim_pid)
    latency = await conn.fetchrow(
        """SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY d) AS p50,
                  percentile_cont(0.99) WITHIN GROUP (ORDER BY d) AS p99
           FROM (SELECT extract(epoch FROM p.sent_at - m.accepted_at) AS d
                 FROM messages m JOIN parts p ON p.message_id = m.id
                 WHERE p.attempt = 1 AND p.part_no = 1 AND m.id > $1) x""",
        after_id,
    )
    states = await conn.fetch(
        "SELECT state, count(*) AS n FROM messages WHERE id > $1 GROUP BY state", after_id
    )
    # Rows read by sequential scans, per table: a plan PostgreSQL cached
    # while a table of this fresh database was still small shows here.
    scans = await conn.fetch(
        "SELECT relname, seq_scan, seq_tup_read FROM pg_stat_user_tables"
        " WHERE seq_tup_read > 0 ORDER BY seq_tup_read DESC LIMIT 3"
    )
    # Per second of the run: where the pipeline keeps up and where it queues.
    timeline = await conn.fetch(
        """WITH t0 AS (SELECT min(accepted_at) AS t FROM messages WHERE id > $1),
                stamps AS (
                    SELECT accepted_at AS at, 'accepted' AS what FROM messages WHERE id > $1
                    UNION ALL SELECT sent_at, 'sent' FROM parts WHERE message_id > $1
                    UNION ALL SELECT resp_at, 'responded' FROM parts WHERE message_id > $1
                    UNION ALL SELECT receipt_at, 'receipted' FROM parts WHERE message_id > $1
                    UNION ALL SELECT final_at, 'final' FROM messages WHERE id > $1)
           SELECT floor(extract(epoch FROM s.at - t0.t))::int AS second,
                  count(*) FILTER (WHERE what = 'accepted') AS accepted,
                  count(*) FILTER (WHERE what = 'sent') AS sent,
                  count(*) FILTER (WHERE what = 'responded') AS responded,
                  count(*) FILTER (WHERE what = 'receipted') AS receipted,
                  count(*) FILTER (WHERE what = 'final') AS final
           FROM stamps s, t0 WHERE s.at IS NOT NULL GROUP BY 1 ORDER BY 1""",
        after_id,
    )
    events = await conn.fetch(
        "SELECT kind, count(*) AS n FROM message_events WHERE message_id > $1"
        " GROUP BY kind ORDER BY min(id)",
        after_id,
    )
    await conn.close()
    variant = f" skipping opted-out numbers ({optout_list:,}-number list)" if optout_list else ""
    if reassign_check:
        variant += " with the reassigned-number check"
    print(
        f"e2e: {total} messages{variant} accepted in {intake_s:.1f} s, all final after "
        f"{elapsed:.1f} s = {total / elapsed:,.0f} messages/s end to end"
    )
    print(
        f"e2e: intake-to-submit latency p50 {latency['p50'] * 1000:.0f} ms, "
        f"p99 {latency['p99'] * 1000:.0f} ms"
    )
    for pid in pids:
        print(
            f"e2e: daemon RSS peak {rss_kib(pid, 'VmHWM') / 1024:.0f} MiB, "
            f"at the end {rss_kib(pid, 'VmRSS') / 1024:.0f} MiB"
        )
    used = {k: cpu_after[k] - cpu_before[k] for k in cpu_before}
    print(
        f"e2e: CPU per 1,000 messages ({os.cpu_count()} cores): "
        + ", ".join(f"{k} {v * 1000 / total * 1000:.0f} ms" for k, v in used.items())
        + f"; busy {sum(used.values()) / elapsed / (os.cpu_count() or 1):.0%} of the machine"
    )
    print("e2e: final states " + ", ".join(f"{r['state']}={r['n']}" for r in states))
    print(
        "e2e: rows read by sequential scans (this bench's queries too): "
        + ", ".join(f"{r['relname']} {r['seq_tup_read']:,} in {r['seq_scan']}" for r in scans)
    )
    columns = ("accepted", "sent", "responded", "receipted", "final")
    print("e2e: per second  " + "".join(f"{c:>10}" for c in columns))
    for r in timeline:
        print(f"e2e: {r['second']:>9} s  " + "".join(f"{r[c]:>10}" for c in columns))
    # Each event is a row version of the message: what the database writes.
    print(
        "e2e: history events per message: "
        + ", ".join(f"{r['kind']} {r['n'] / total:.2f}" for r in events)
    )
    return total / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--binds", type=int, default=2)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument(
        "--daemons",
        type=int,
        default=1,
        help="daemons sharing the database, each with its own binds (intake spread over them)",
    )
    parser.add_argument(
        "--optout-list",
        type=int,
        default=0,
        help="every message skips opted-out numbers, against a list of this many (none sent to)",
    )
    parser.add_argument(
        "--reassign-latency-ms",
        type=float,
        default=None,
        help="every message asks for the reassigned-number check, answered after this long",
    )
    parser.add_argument(
        "--reassign-batch", type=int, default=100, help="[reassign] batch_size (default 100)"
    )
    parser.add_argument(
        "--pairs",
        type=int,
        default=0,
        help="with --optout-list or --reassign-latency-ms: this many plain runs, each followed "
        "by one asking for that, and the median of their costs (a machine whose speed drifts "
        "between runs shows in each pair alike)",
    )
    parser.add_argument(
        "--history",
        type=int,
        default=0,
        help="the database first holds this many delivered messages of the past 90 days, "
        "analyzed (default 0: a new, empty database)",
    )
    args = parser.parse_args()
    variant_asked = bool(args.optout_list) or args.reassign_latency_ms is not None
    if args.pairs and not variant_asked:
        parser.error("--pairs compares plain runs with --optout-list or --reassign-latency-ms")
    ports = {carrier: free_port() for carrier in CARRIERS}
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(sim_toml(ports))
        sim_config = f.name
    sim = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "carrierd",
            "sim",
            "smsc",
            "--config",
            sim_config,
            "--log-level",
            "warning",
        ],
        stdout=subprocess.DEVNULL,
    )
    reassign_port = free_port() if args.reassign_latency_ms is not None else None
    reassign_sim = None
    if reassign_port is not None:
        print(
            f"e2e: reassignment database simulator answering after {args.reassign_latency_ms:g} ms"
        )
        reassign_sim = reassign_sim_process(
            reassign_port, "bench-reassign-token", args.reassign_latency_ms
        )
    try:
        time.sleep(1.0)

        def one_run(variant: bool) -> float:
            http_ports = [free_port() for _ in range(args.daemons)]
            with fresh_database("e2e") as dsn, contextlib.ExitStack() as daemons:
                pids = [
                    daemons.enter_context(
                        daemon_process(
                            daemon_toml(
                                ports, args.binds, args.window, reassign_port, args.reassign_batch
                            ),
                            dsn,
                            port,
                            f"bench-{n}",
                        )
                    ).pid
                    for n, port in enumerate(http_ports, start=1)
                ]
                return asyncio.run(
                    run(
                        dsn,
                        http_ports,
                        pids,
                        sim.pid,
                        args.messages,
                        args.batch,
                        args.optout_list if variant else 0,
                        reassign_check=variant and reassign_port is not None,
                        reassign_sim_pid=reassign_sim.pid if reassign_sim is not None else None,
                        history=args.history,
                    )
                )

        if not args.pairs:
            one_run(variant_asked)
            return
        costs: list[float] = []
        for n in range(1, args.pairs + 1):
            plain, asked = one_run(False), one_run(True)
            costs.append(1 - asked / plain)
            print(
                f"e2e pair {n}: {plain:,.0f} messages/s plain, {asked:,.0f} asking = "
                f"{costs[-1]:.1%} cost",
                flush=True,
            )
        print(
            f"e2e: median cost {statistics.median(costs):.1%} over {len(costs)} alternating pairs"
            f" (from {min(costs):.1%} to {max(costs):.1%}), {args.messages} messages a run"
        )
    finally:
        sim.terminate()
        sim.wait(10)
        if reassign_sim is not None:
            reassign_sim.terminate()
            reassign_sim.wait(10)
        os.unlink(sim_config)


if __name__ == "__main__":
    main()
