"""Throughput of ``POST /api/v1/transfers`` and ``POST /api/v1/payments`` through gunicorn, as
production runs it, under wrk, in one session under the same conditions.

Prepares cardholders (verified, cards topped up) through the services; for the ``transfer``
workload one access token per cardholder, for the ``payment`` workload one active merchant
(approved by a staff user) with one secret key. Then, for every worker x thread split,
configuration and workload, it starts ``gunicorn -c gunicorn.conf.py "portal:create_app()"``
(``PORTAL_ENV=production``, JSON logs to a file, Redis on), warms it up, and drives it with wrk
and a generated Lua script:

- ``transfer``: a random sender card with its owner's bearer token, a random other card as
  recipient, 1-500 cents;
- ``payment``: the merchant's ``sk_live_`` key as bearer, a random card's number, expiry and
  security code, 50-500 cents (USD payments start at $0.50), ``capture_method`` left to its
  default, automatic: a 201 with status ``succeeded``.

Every request carries a unique Idempotency-Key. Runs are interleaved (rep 1 of every split,
configuration and workload, then rep 2, ...; within a configuration transfer then payment, so
each payment run has a transfer run beside it) and medians reported, with the payment/transfer
throughput ratio per split and configuration.

Configurations: ``off`` (PORTAL_METRICS_ENABLED=false, no tracing), ``metrics`` (Prometheus in
multiprocess mode: PROMETHEUS_MULTIPROC_DIR, PORTAL_METRICS_TOKEN), ``tracing`` (metrics plus
OpenTelemetry exporting OTLP/HTTP to a sink in this process that answers 200 and counts spans),
and, only when asked for, ``sampled`` (tracing with OTEL_TRACES_SAMPLER=parentbased_traceidratio
at ``--sample-ratio``).

After each run: the ledger reconciles, the transfers (or payments) recorded as succeeded match
wrk's 201s (at most the requests still in flight when wrk stopped may be recorded without an
answer counted), no answer was other than 201 (a sample of each other status is printed), and
with metrics on, the scraped request counter of the route matches too. CPU per process group
comes from /proc. The exit status is 1 when any check failed.

``--count-statements N`` first sends N requests of each workload one at a time to a 1x1 server
with PostgreSQL logging every statement of the bench database with its duration (``ALTER
DATABASE ... SET log_min_duration_statement = 0``, parameters not logged, reset afterwards),
reads the server log (``--postgres-log``) and prints statements and PostgreSQL milliseconds per
request by kind.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/portal_bench_api \\
        .venv/bin/python bench/transfer_api.py --workloads transfer,payment --configs off,metrics \\
        --splits 2x4 --repeat 3 --seconds 18 --redis-url redis://127.0.0.1:6379/10

Needs wrk (``apt-get install wrk``) and Redis (``--redis-url``). The database is migrated if
needed and this script's data is wiped afterwards; the load generator shares the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import sessionmaker

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ("off", "metrics", "tracing", "sampled")
TRACED = ("tracing", "sampled")
WORKLOADS = ("transfer", "payment")
METRICS_TOKEN = "bench-metrics-token-0123456789"  # noqa: S105 (a throwaway scrape token)
TICKS = os.sysconf("SC_CLK_TCK")
#: perf-baselines.md, "Bare Flask + gunicorn, POST /transfer (6-RT)".
BARE_FLASK_RPS = 1950

#: The tests' WIPE (tests/conftest.py): every table this script's set-up and requests write.
WIPE = """
TRUNCATE postings, holds, journal_entries, top_ups, transfers, withdrawals, refunds, events,
         checkout_sessions, payments, merchant_invitations, merchant_members,
         idempotency_keys, jobs, outbox_events, audit_events, api_keys, refresh_tokens,
         ledger_checks CASCADE;
DELETE FROM accounts WHERE kind IN ('wallet', 'merchant');
DELETE FROM cards; DELETE FROM merchants; DELETE FROM user_roles; DELETE FROM users;
"""

#: Lua shared by every workload; a workload's script defines ``request()`` before it. The
#: global ``run`` (set by the workload's part) names this set-up in the idempotency keys.
LUA_COMMON = r"""
local threads = {}
sent = 0
statuses = {}
samples = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

-- args[1]: a number unique to this wrk invocation (the keys' prefix and the random seed).
function init(args)
  math.randomseed(tonumber(args[1]) * 64 + tid)
  prefix = string.format("%s-%s-%d-", run, args[1], tid)
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if status ~= 201 and samples[status] == nil then
    samples[status] = string.gsub(string.sub(body, 1, 300), "\n", " ")
  end
end

function done(summary, latency, requests)
  local total, shown, in_flight = {}, {}, 0
  for _, t in ipairs(threads) do
    local answered = 0
    for status, count in pairs(t:get("statuses")) do
      total[status] = (total[status] or 0) + count
      answered = answered + count
    end
    in_flight = in_flight + t:get("sent") - answered
    for status, text in pairs(t:get("samples")) do shown[status] = text end
  end
  local e = summary.errors
  io.write(string.format("BENCH summary %d %d %d %d %d %d %d %d\n", summary.requests,
    summary.duration, e.connect, e.read, e.write, e.status, e.timeout, in_flight))
  for _, p in ipairs({50, 90, 99, 99.9}) do
    io.write(string.format("BENCH latency %g %d\n", p, latency:percentile(p)))
  end
  io.write(string.format("BENCH latency mean %d\n", latency.mean))
  for status, count in pairs(total) do
    io.write(string.format("BENCH status %d %d\n", status, count))
  end
  for status, text in pairs(shown) do
    io.write(string.format("BENCH sample %d %s\n", status, text))
  end
end
"""

TRANSFER_LUA = r"""
-- POST /api/v1/transfers between random prepared cards: {public id, owner's access token}.
local cards = {
%(cards)s
}
local n = #cards

function request()
  sent = sent + 1
  local i = math.random(n)
  local j = math.random(n - 1)
  if j >= i then j = j + 1 end
  local body = string.format(
    '{"from_card":"%%s","to_card":"%%s","amount":%%d,"currency":"usd"}',
    cards[i][1], cards[j][1], math.random(1, 500))
  return wrk.format("POST", "/api/v1/transfers", {
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. cards[i][2],
    ["Idempotency-Key"] = prefix .. sent,
  }, body)
end
"""

PAYMENT_LUA = r"""
-- POST /api/v1/payments from random prepared cards, {number, exp_month, exp_year, cvc}, to
-- a random prepared merchant (its secret key); capture_method defaults to automatic.
local secrets = {%(secrets)s}
local cards = {
%(cards)s
}
local n = #cards

function request()
  sent = sent + 1
  local c = cards[math.random(n)]
  local body = string.format(
    '{"amount":%%d,"currency":"usd","card":{"number":"%%s","exp_month":%%d,"exp_year":%%d,'
    .. '"cvc":"%%s"}}', math.random(%(low)d, %(high)d), c[1], c[2], c[3], c[4])
  return wrk.format("POST", "/api/v1/payments", {
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. secrets[math.random(#secrets)],
    ["Idempotency-Key"] = prefix .. sent,
  }, body)
end
"""

#: Cents per request (the payment minimum for USD is 50).
TRANSFER_AMOUNTS = (1, 500)
PAYMENT_AMOUNTS = (50, 500)


# -- the trace sink -----------------------------------------------------------------------------
class TraceSink:
    """An OTLP/HTTP endpoint that answers 200 to ``POST /v1/traces`` and keeps the bodies."""

    def __init__(self) -> None:
        bodies: list[bytes] = []
        self.bodies = bodies

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path == "/v1/traces":
                    bodies.append(body)
                self.send_response(200 if self.path == "/v1/traces" else 404)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def take(self) -> tuple[int, int, int, dict[str, int]]:
        """(exports, bytes, spans, spans by name) received since the last call."""
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        bodies, self.bodies[:] = list(self.bodies), []
        names: dict[str, int] = {}
        for body in bodies:
            message = ExportTraceServiceRequest.FromString(body)
            for resource in message.resource_spans:
                for scope in resource.scope_spans:
                    for span in scope.spans:
                        names[span.name] = names.get(span.name, 0) + 1
        return len(bodies), sum(map(len, bodies)), sum(names.values()), names


# -- CPU accounting -----------------------------------------------------------------------------
def _proc_times() -> dict[int, tuple[int, int, str, str]]:
    """pid -> (ppid, utime+stime ticks, owner uid, command line) for every process."""
    out = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
            cmd = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ")
            command = cmd.decode(errors="replace")
            uid = Path(entry.path, "status").read_text().split("\nUid:")[1].split()[0]
        except (OSError, IndexError):
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        out[int(entry.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]), uid, command)
    return out


def _machine_busy() -> tuple[int, int]:
    """(busy, steal) ticks of all cores from /proc/stat; busy includes steal (time the
    hypervisor gave to someone else while this machine wanted to run)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:9]]
    idle = values[3] + values[4]
    return sum(values) - idle, values[7]


@dataclass
class CpuSnapshot:
    at: float
    procs: dict[int, tuple[int, int, str, str]]
    busy: int
    steal: int


def cpu_snapshot() -> CpuSnapshot:
    return CpuSnapshot(time.perf_counter(), _proc_times(), *_machine_busy())


def cpu_split(
    before: CpuSnapshot, after: CpuSnapshot, master: int, db_name: str, extra: dict[str, int]
) -> dict[str, float]:
    """Cores used per group between two snapshots: gunicorn (master and workers), postgres
    backends of ``db_name``, other postgres processes, ``extra`` (name -> CPU ticks measured
    otherwise, e.g. wrk's), and everything else on the machine."""
    seconds = after.at - before.at
    postgres_uid = str(_uid_of("postgres"))
    groups: dict[str, int] = {"gunicorn": 0, "postgres (bench db)": 0, "postgres (other)": 0}
    for pid, (ppid, ticks, uid, cmd) in after.procs.items():
        start = before.procs.get(pid)
        used = ticks - (start[1] if start and start[3] == cmd else 0)
        if pid == master or ppid == master:
            groups["gunicorn"] += used
        elif uid == postgres_uid and f" {db_name} " in f" {cmd} ":
            groups["postgres (bench db)"] += used
        elif uid == postgres_uid:
            groups["postgres (other)"] += used
    groups.update(extra)
    groups["steal"] = after.steal - before.steal
    groups["rest of machine"] = (after.busy - before.busy) - sum(groups.values())
    return {name: ticks / TICKS / seconds for name, ticks in groups.items()}


def _uid_of(user: str) -> int:
    import pwd

    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        return -1


# -- workloads ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class HolderCard:
    """A prepared card: what the API needs to move money with it."""

    public_id: str
    number: str
    exp_month: int
    exp_year: int
    cvc: str
    #: The owner's access token (transfer workload only).
    token: str = ""


#: (random source, idempotency key) -> the request's headers and JSON body.
RequestMaker = Callable[[random.Random, str], tuple[dict[str, str], dict[str, Any]]]


@dataclass(frozen=True)
class Workload:
    """What one workload sends, and where its outcome is recorded."""

    name: str
    #: The endpoint's url_rule (the label of its request metrics).
    route: str
    #: The business table; its rows with status 'succeeded' are the 201s.
    table: str
    lua: str
    #: The same request as the Lua's, for the one-at-a-time requests of --count-statements.
    make_request: RequestMaker


def lua_script(part: str, run: str) -> str:
    return f'-- Generated by bench/transfer_api.py.\nrun = "{run}"\n{part}{LUA_COMMON}'


def transfer_workload(cards: list[HolderCard], run: str) -> Workload:
    rows = ",\n".join(f'  {{"{c.public_id}", "{c.token}"}}' for c in cards)

    def make(rng: random.Random, key: str) -> tuple[dict[str, str], dict[str, Any]]:
        sender, recipient = rng.sample(cards, 2)
        return (
            {"Authorization": f"Bearer {sender.token}", "Idempotency-Key": key},
            {"from_card": sender.public_id, "to_card": recipient.public_id,
             "amount": rng.randint(*TRANSFER_AMOUNTS), "currency": "usd"},
        )  # fmt: skip

    return Workload(
        "transfer", "/api/v1/transfers", "transfers",
        lua_script(TRANSFER_LUA % {"cards": rows}, run), make,
    )  # fmt: skip


def payment_workload(cards: list[HolderCard], secrets: list[str], run: str) -> Workload:
    rows = ",\n".join(f'  {{"{c.number}", {c.exp_month}, {c.exp_year}, "{c.cvc}"}}' for c in cards)
    low, high = PAYMENT_AMOUNTS

    def make(rng: random.Random, key: str) -> tuple[dict[str, str], dict[str, Any]]:
        c = rng.choice(cards)
        return (
            {"Authorization": f"Bearer {rng.choice(secrets)}", "Idempotency-Key": key},
            {"amount": rng.randint(low, high), "currency": "usd",
             "card": {"number": c.number, "exp_month": c.exp_month, "exp_year": c.exp_year,
                      "cvc": c.cvc}},
        )  # fmt: skip

    listed = ", ".join(f'"{secret}"' for secret in secrets)
    part = PAYMENT_LUA % {"secrets": listed, "cards": rows, "low": low, "high": high}
    return Workload("payment", "/api/v1/payments", "payments", lua_script(part, run), make)


# -- one run ------------------------------------------------------------------------------------
@dataclass
class Result:
    workload: str
    split: str
    config: str
    rep: int
    code: str
    seconds: float = 0.0
    answered: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    samples: dict[int, str] = field(default_factory=dict)
    latency_us: dict[str, int] = field(default_factory=dict)
    socket_errors: dict[str, int] = field(default_factory=dict)
    in_flight: int = 0
    db_succeeded: int = 0
    db_recorded: int = 0
    scraped_201: float | None = None
    spans: tuple[int, int, int, dict[str, int]] | None = None
    cpu: dict[str, float] = field(default_factory=dict)
    #: Mean over the run of the bench database's backends: running a statement, waiting for a
    #: row or transaction lock (sampled from pg_stat_activity every 0.1 s).
    backends_active: float = 0.0
    backends_lock_wait: float = 0.0
    log_bytes: int = 0
    ledger_ok: bool = False

    @property
    def created(self) -> int:
        return self.statuses.get(201, 0)

    @property
    def rps(self) -> float:
        return self.answered / self.seconds

    @property
    def non_201(self) -> int:
        return self.answered - self.created

    @property
    def failures(self) -> list[str]:
        """The checks this run failed."""
        failed = []
        if not self.ledger_ok:
            failed.append("ledger does not reconcile")
        if self.db_succeeded - self.created not in range(0, self.in_flight + 1):
            failed.append(f"{self.workload}s recorded as succeeded do not match the 201s")
        if self.non_201:
            failed.append(f"{self.non_201} answers other than 201")
        if sum(self.socket_errors.values()):
            failed.append(f"{sum(self.socket_errors.values())} socket errors")
        if self.scraped_201 is not None and round(self.scraped_201) != self.db_succeeded:
            failed.append("scraped 201s do not match the recorded rows")
        return failed


def parse_wrk(text: str, result: Result) -> None:
    for line in text.splitlines():
        parts = line.split(" ", 3)
        if parts[0] != "BENCH":
            continue
        if parts[1] == "summary":
            nums = [int(x) for x in line.split()[2:]]
            result.answered, result.seconds = nums[0], nums[1] / 1e6
            result.socket_errors = dict(
                zip(("connect", "read", "write", "status", "timeout"), nums[2:7], strict=True)
            )
            result.in_flight = nums[7]
        elif parts[1] == "latency":
            result.latency_us[parts[2]] = int(parts[3])
        elif parts[1] == "status":
            result.statuses[int(parts[2])] = int(parts[3])
        elif parts[1] == "sample":
            result.samples[int(parts[2])] = parts[3]


def run_wrk(
    args: argparse.Namespace, url: str, lua: Path, seconds: float, nonce: int
) -> tuple[str, int]:
    """wrk's output and the CPU ticks it used (from its rusage). ``nonce`` makes this
    invocation's idempotency keys and random sequence its own."""
    proc = subprocess.Popen(
        ["wrk", f"-t{args.wrk_threads}", f"-c{args.connections}", f"-d{seconds:g}s",
         "--timeout", "30s", "-s", str(lua), url, "--", str(nonce)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}):\n{out}")
    return out, round((usage.ru_utime + usage.ru_stime) * TICKS)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape_201(base: str, route: str) -> float:
    """201 answers of POST ``route`` as /metrics counts them (all workers): the count of the
    request-duration histogram, the one request metric labelled by route."""
    request = urllib.request.Request(  # noqa: S310 (our own server)
        f"{base}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        text = response.read().decode()
    wanted = ('method="POST"', 'status="201"', f'url_rule="{route}"')
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("portal_http_request_duration_seconds_count{")
        and all(w in line for w in wanted)
    )


def wait_ready(base: str, server: subprocess.Popen[bytes], deadline: float = 60) -> None:
    until = time.monotonic() + deadline
    while time.monotonic() < until:
        if server.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {server.returncode}")
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=2) as r:  # noqa: S310
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("gunicorn did not become ready")


def stop(server: subprocess.Popen[bytes]) -> None:
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def post_json(base: str, path: str, headers: dict[str, str], body: dict[str, Any]) -> int:
    """One request, as a client would send it; raises unless the answer is a 201."""
    request = urllib.request.Request(  # noqa: S310 (our own server)
        base + path, data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json", **headers},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"POST {path}: {exc.code} {exc.read()[:300]!r}") from None
    if status != 201:
        raise RuntimeError(f"POST {path}: {status}")
    return status


# -- statements per request ---------------------------------------------------------------------
#: PostgreSQL log lines (log_line_prefix '%m [%p] %q%u@%d ') of a statement with its duration.
LOG_DURATION = re.compile(
    r"^(?P<at>\S+ \S+) \S+ \[\d+\] \S*@(?P<db>\S+) LOG:  duration: (?P<ms>[\d.]+) ms"
    r"  (?P<kind>statement|parse|bind|execute)[^:]*: ?(?P<text>.*)$"
)
#: How to name a statement (first match of a pattern on its text, whitespace collapsed).
STATEMENT_NAMES = (
    (r"^;$|^SELECT 1$", "pool pre-ping (an empty statement)"),
    (r"^BEGIN", "BEGIN"),
    (r"^COMMIT", "COMMIT"),
    (r"^ROLLBACK", "ROLLBACK"),
    (r"^SET CONSTRAINTS", "SET CONSTRAINTS ALL IMMEDIATE"),
    (r"FROM api_keys k JOIN merchants", "API key check (api_keys + merchants)"),
    (r"^UPDATE api_keys SET last_used", "API key last-used update"),
    (r"FROM merchants m WHERE", "merchant access check (merchants row)"),
    (r"^INSERT INTO idempotency_keys", "idempotency claim"),
    (r"^WITH card AS", "lock: wallet + merchant balance (+ change version)"),
    (r"FROM payments WHERE created_at", "guess-limit count (payments)"),
    (r"INSERT INTO payments", "deferred writes flush (entry, postings, payment, ...)"),
    (r"INSERT INTO transfers", "deferred writes flush (entry, postings, transfer, ...)"),
    (r"FROM users u WHERE u.id", "bearer check (user, live session)"),
    (r"^WITH scope AS \(SELECT id FROM cards", "201 body re-read (activity item)"),
    (r"ORDER BY a.id FOR UPDATE OF a", "lock: both wallets (+ change versions)"),
)


def statement_name(text: str) -> str:
    text = " ".join(text.split())
    for pattern, name in STATEMENT_NAMES:
        if re.search(pattern, text):
            return name
    return text[:70]


@dataclass(frozen=True)
class Logged:
    """One logged step of a statement: ``kind`` is parse, bind, execute or statement."""

    kind: str
    name: str
    ms: float
    #: When the server wrote the line (the step's end), seconds, millisecond resolution.
    at: float


def log_statements(text: str, db_name: str) -> list[Logged]:
    """The bench database's logged statement steps, in order."""
    records: list[Logged] = []
    current: re.Match[str] | None = None
    lines: list[str] = []
    for line in [*text.splitlines(), ""]:
        if line.startswith("\t") and current:
            lines.append(line)
            continue
        if current:
            at = datetime.strptime(current["at"], "%Y-%m-%d %H:%M:%S.%f").timestamp()
            name = statement_name(" ".join(lines))
            records.append(Logged(current["kind"], name, float(current["ms"]), at))
            current = None
        match = LOG_DURATION.match(line)
        if match and match["db"] == db_name:
            current, lines = match, [match["text"]]
    return records


def lock_held_ms(records: list[Logged]) -> float | None:
    """Mean milliseconds from each lock statement's start to the end of the COMMIT after it:
    how long its row locks are held when nothing else runs (from the log's timestamps, so
    each sample is within a millisecond or two; the mean over many is closer)."""
    held, lock = [], None
    for r in records:
        if r.kind in ("statement", "execute") and r.name.startswith("lock"):
            lock = r
        elif r.name == "COMMIT" and lock is not None:
            held.append((r.at - lock.at) * 1000 + lock.ms)
            lock = None
    return statistics.mean(held) if held else None


def statements_table(records: list[Logged], requests: int) -> str:
    """Statements (executions) and PostgreSQL milliseconds (parse + bind + execute) per
    request by name, in order of first appearance, and how long the row locks are held."""
    per: dict[str, list[float]] = {}
    for r in records:
        row = per.setdefault(r.name, [0, 0.0])
        row[0] += r.kind in ("statement", "execute")
        row[1] += r.ms
    total_n = sum(r[0] for r in per.values()) / requests
    total_ms = sum(r[1] for r in per.values()) / requests
    lines = ["| statement | per request | PostgreSQL ms per request |", "| --- | --- | --- |"]
    lines += [f"| {name} | {n / requests:.2f} | {ms / requests:.3f} |"
              for name, (n, ms) in per.items()]  # fmt: skip
    lines.append(f"| **total** | **{total_n:.2f}** | **{total_ms:.3f}** |")
    held = lock_held_ms(records)
    if held is not None:
        lines.append(f"\nrow locks held from the lock statement to the end of COMMIT: {held:.2f} ms"
                     " (mean, one request at a time)")  # fmt: skip
    return "\n".join(lines)


class ActivitySampler:
    """Samples pg_stat_activity for one database every ``every`` seconds on its own
    connection: how many backends are running a statement, and how many of those wait for a
    lock (a hot row shows as lock waits)."""

    def __init__(self, engine: sa.Engine, db_name: str, every: float = 0.1) -> None:
        self.engine, self.db_name, self.every = engine, db_name, every
        self.samples: list[tuple[int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        query = sa.text(
            "SELECT count(*) FILTER (WHERE state = 'active'),"
            " count(*) FILTER (WHERE state = 'active' AND wait_event_type = 'Lock')"
            " FROM pg_stat_activity WHERE datname = :db AND pid <> pg_backend_pid()"
        )
        with self.engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT")
            while not self._stop.wait(self.every):
                active, waiting = conn.execute(query, {"db": self.db_name}).one()
                self.samples.append((int(active), int(waiting)))

    def __enter__(self) -> ActivitySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def means(self) -> tuple[float, float]:
        n = max(len(self.samples), 1)
        return sum(a for a, _ in self.samples) / n, sum(w for _, w in self.samples) / n


# -- the bench ----------------------------------------------------------------------------------
class Bench:
    """What every run shares: the environment, the database, the scratch directory."""

    def __init__(
        self, args: argparse.Namespace, common: dict[str, str], engine: sa.Engine,
        reconcile: Callable[[], Any], workdir: Path,
    ) -> None:  # fmt: skip
        self.args = args
        self.common = common
        self.engine = engine
        self.db_name = engine.url.database or ""
        self.reconcile = reconcile
        self.workdir = workdir
        self.server: subprocess.Popen[bytes] | None = None
        self.sink: TraceSink | None = None
        self.rng = random.Random(args.seed)

    # -- the server --
    def start(self, workers: int, threads: int, config: str, tag: str) -> tuple[str, Path]:
        """Start gunicorn as production does, in ``config``; its base URL and log file."""
        port = free_port()
        env = dict(self.common, PORTAL_BIND=f"127.0.0.1:{port}", WEB_CONCURRENCY=str(workers),
                   PORTAL_THREADS=str(threads), PORTAL_LOG_FORMAT="json")  # fmt: skip
        if config == "off":
            env["PORTAL_METRICS_ENABLED"] = "false"
        else:
            env["PORTAL_METRICS_ENABLED"] = "true"
            env["PORTAL_METRICS_TOKEN"] = METRICS_TOKEN
            env["PROMETHEUS_MULTIPROC_DIR"] = str(self.workdir / f"prom-{tag}")
        if config in TRACED:
            if self.sink is None:
                self.sink = TraceSink()
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] = self.sink.url
        if config == "sampled":
            env["OTEL_TRACES_SAMPLER"] = "parentbased_traceidratio"
            env["OTEL_TRACES_SAMPLER_ARG"] = str(self.args.sample_ratio)
        log = self.workdir / f"gunicorn-{tag}.log"
        with log.open("wb") as out:
            self.server = subprocess.Popen(
                [str(Path(sys.executable).parent / "gunicorn"), "-c", "gunicorn.conf.py",
                 "portal:create_app()"],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        wait_ready(base, self.server)
        return base, log

    def stop(self) -> None:
        if self.server is not None:
            stop(self.server)
            self.server = None

    # -- database checks --
    def counts(self, workload: Workload) -> tuple[int, int]:
        """(succeeded, all) rows of the workload's business table."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.text(
                    "SELECT count(*) FILTER (WHERE status = 'succeeded'), count(*)"
                    f" FROM {workload.table}"
                )
            ).one()
        return int(row[0]), int(row[1])

    def settle(self, workload: Workload) -> tuple[int, int]:
        """The counts once requests still in flight after wrk stopped have finished."""
        last = self.counts(workload)
        while True:
            time.sleep(0.5)
            now = self.counts(workload)
            if now == last:
                return now
            last = now

    # -- one measured run --
    def run(self, workload: Workload, workers: int, threads: int, config: str, rep: int) -> Result:
        split = f"{workers}x{threads}"
        result = Result(workload.name, split, config, rep, code_version())
        lua = self.workdir / f"{workload.name}.lua"
        if not lua.exists():
            lua.write_text(workload.lua)
        base, log = self.start(workers, threads, config, f"{workload.name}-{split}-{config}-{rep}")
        args, sink = self.args, self.sink
        run_wrk(args, base, lua, args.warmup, self.rng.randrange(2**40))
        before_db = self.settle(workload)
        before_scrape = scrape_201(base, workload.route) if config != "off" else None
        if sink:
            sink.take()
        log_before = log.stat().st_size
        before = cpu_snapshot()
        with ActivitySampler(self.engine, self.db_name) as activity:
            out_text, wrk_ticks = run_wrk(args, base, lua, args.seconds, self.rng.randrange(2**40))
        after = cpu_snapshot()
        result.backends_active, result.backends_lock_wait = activity.means()
        parse_wrk(out_text, result)
        assert self.server is not None
        result.cpu = cpu_split(before, after, self.server.pid, self.db_name, {"wrk": wrk_ticks})
        after_db = self.settle(workload)
        result.db_succeeded = after_db[0] - before_db[0]
        result.db_recorded = after_db[1] - before_db[1]
        if before_scrape is not None:
            result.scraped_201 = scrape_201(base, workload.route) - before_scrape
        self.stop()
        result.log_bytes = log.stat().st_size - log_before
        if sink and config in TRACED:
            result.spans = sink.take()  # the batch processors flush at exit
        report = self.reconcile()
        result.ledger_ok = report.ok
        if not report.ok:
            print(f"  LEDGER VIOLATIONS: {report.violations[:5]}", flush=True)
        return result

    # -- statements per request --
    def count_statements(self, workload: Workload, requests: int, postgres_log: Path) -> str:
        """Send ``requests`` requests one at a time to a 1x1 server whose database sessions log
        every statement with its duration; the statements per request, as a table."""
        db = self.db_name.replace('"', '""')
        with self.engine.begin() as conn:
            conn.execute(sa.text(f'ALTER DATABASE "{db}" SET log_min_duration_statement = 0'))
            conn.execute(sa.text(f'ALTER DATABASE "{db}" SET log_parameter_max_length = 0'))
        try:
            base, _ = self.start(1, 1, "off", f"{workload.name}-count")
            rng = random.Random(self.args.seed)
            prefix = uuid.uuid4().hex[:8]
            for i in range(10):  # warm-up: imports, caches, prepared statements, last-used
                post_json(base, workload.route, *workload.make_request(rng, f"{prefix}-w{i}"))
            offset = postgres_log.stat().st_size
            for i in range(requests):
                post_json(base, workload.route, *workload.make_request(rng, f"{prefix}-{i}"))
            time.sleep(1.0)
            with postgres_log.open("rb") as f:
                f.seek(offset)
                text = f.read().decode(errors="replace")
            self.stop()
        finally:
            self.stop()
            with self.engine.begin() as conn:
                conn.execute(sa.text(f'ALTER DATABASE "{db}" RESET log_min_duration_statement'))
                conn.execute(sa.text(f'ALTER DATABASE "{db}" RESET log_parameter_max_length'))
        records = log_statements(text, self.db_name)
        if not records:
            raise RuntimeError(f"no statements of {self.db_name} in {postgres_log}")
        return statements_table(records, requests)


# -- main ---------------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default="transfer,payment", help=", ".join(WORKLOADS))
    parser.add_argument("--cardholders", type=int, default=100)
    parser.add_argument("--merchants", type=int, default=1,
                        help="merchants paid, at random (each its own key)")  # fmt: skip
    parser.add_argument("--cards-per-holder", type=int, default=2)
    parser.add_argument("--splits", default="2x4", help="workers x threads, comma-separated")
    parser.add_argument("--configs", default="off,metrics,tracing", help=", ".join(CONFIGS))
    parser.add_argument("--sample-ratio", type=float, default=0.1, help="of the sampled config")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--wrk-threads", type=int, default=2)
    parser.add_argument(
        "--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write every run's figures here")
    parser.add_argument("--count-statements", type=int, default=0, metavar="N",
                        help="first count statements per request over N requests each")  # fmt: skip
    parser.add_argument("--postgres-log", type=Path,
                        default=Path("/var/log/postgresql/postgresql-15-main.log"),
                        help="the server's log file, for --count-statements")  # fmt: skip
    args = parser.parse_args()
    if not os.environ.get("DATABASE_URL"):
        sys.exit("set DATABASE_URL to a scratch database (its Portal data is wiped)")
    configs = [c.strip() for c in args.configs.split(",")]
    if unknown := set(configs) - set(CONFIGS):
        sys.exit(f"unknown configurations: {sorted(unknown)}")
    names = [w.strip() for w in args.workloads.split(",")]
    if not names or set(names) - set(WORKLOADS):
        sys.exit(f"workloads are {', '.join(WORKLOADS)}, not {args.workloads}")
    splits = [tuple(int(x) for x in s.split("x")) for s in args.splits.split(",")]
    cards_total = args.cardholders * args.cards_per_holder
    if args.merchants < 1:
        sys.exit("need at least one merchant")
    if args.cardholders < 1 or cards_total < 2:
        sys.exit("need at least two cards")

    from portal.config import TEST_SECRETS

    # The same settings for this process (set-up) and gunicorn, as production would have them:
    # fixed public test keys, never used outside benchmarks and tests.
    common = {k: v for k, v in os.environ.items()
              if not k.startswith(("OTEL_", "PROMETHEUS_", "PORTAL_METRICS_"))}  # fmt: skip
    common.update({k: os.environ.get(k) or v for k, v in TEST_SECRETS.items()})
    common.update({"PORTAL_ENV": "production", "REDIS_URL": args.redis_url,
                   "PORTAL_ACCESS_TOKEN_SECONDS": "7200"})  # fmt: skip
    os.environ.clear()
    os.environ.update(common, PORTAL_LOG_FORMAT="off", PORTAL_METRICS_ENABLED="false")

    from flask_migrate import upgrade

    from portal import create_app
    from portal.domain.money import Money
    from portal.domain.types import Actor
    from portal.services.identity import tokens, users
    from portal.services.ledger import reconciliation
    from portal.services.merchants import keys, merchants
    from portal.services.shared.uow import UnitOfWork
    from portal.services.wallet import cards, wallet

    app = create_app()
    with app.app_context():
        upgrade()
    engine = sa.create_engine(
        app.config["SQLALCHEMY_DATABASE_URI"],
        connect_args=app.config["SQLALCHEMY_ENGINE_OPTIONS"]["connect_args"],
    )
    factory = sessionmaker(bind=engine, expire_on_commit=False, autoflush=False)
    uow = UnitOfWork(factory, app.config["SERVICE_SETTINGS"])
    workdir = Path(tempfile.mkdtemp(prefix="portal-bench-api-"))
    bench = Bench(args, common, engine, lambda: reconciliation.reconcile(uow), workdir)
    results: list[Result] = []
    try:
        # -- set-up through the services ---------------------------------------------------
        print(f"commit {code_version()}; setting up {args.cardholders} cardholders x"
              f" {args.cards_per_holder} cards for {', '.join(names)}...", flush=True)  # fmt: skip
        system = Actor.system("bench")
        tag = uuid.uuid4().hex[:6]
        per_card = min(1_000_000, 2_500_000 // args.cards_per_holder)  # top-up max, daily cap
        prepared: list[HolderCard] = []
        for i in range(args.cardholders):
            user = users.create_user(
                uow, actor=system, email=f"api{i}-{tag}@bench.test",
                first_name="Bench", last_name=f"Holder{i}", verified=True,
            )  # fmt: skip
            token = ""
            if "transfer" in names:
                token = tokens.issue_tokens(uow, user_id=user.id, user_agent="bench").access_token
            for _ in range(args.cards_per_holder):
                card = cards.issue_card(uow, actor=system, user_id=user.id, card_type="debit",
                                        brand="visa", currency="USD")  # fmt: skip
                wallet.top_up(uow, actor=system, card_id=card.card_id,
                              amount=Money(per_card, "USD"), method="bank_transfer",
                              idempotency_key=uuid.uuid4().hex)  # fmt: skip
                prepared.append(HolderCard(card.public_id, card.number, card.expiry_month,
                                           card.expiry_year, card.cvv, token))  # fmt: skip
        run = uuid.uuid4().hex[:8]
        workloads: list[Workload] = []
        for name in names:
            if name == "transfer":
                workloads.append(transfer_workload(prepared, run))
                continue
            # Active merchants approved by staff, one secret key each (open_shop's way).
            staff = users.actor_for(uow, users.create_user(
                uow, actor=system, email=f"staff-{tag}@bench.test", first_name="Bench",
                last_name="Staff", roles=("admin",), verified=True,
            ).id)  # fmt: skip
            owner = users.actor_for(uow, users.create_user(
                uow, actor=system, email=f"merchant-{tag}@bench.test", first_name="Bench",
                last_name="Merchant", verified=True,
            ).id)  # fmt: skip
            secrets = []
            for m in range(args.merchants):
                applied = merchants.apply(
                    uow, actor=owner, name=f"Bench Coffee {m + 1}", website="https://shop.example",
                    contact_email=f"merchant-{tag}@bench.test", settlement_currency="USD",
                )  # fmt: skip
                shop = merchants.decide(
                    uow, actor=staff, merchant=applied.public_id, action="approve"
                )
                key = keys.create_api_key(uow, actor=owner, merchant=shop.public_id, name="bench")
                assert key.secret is not None
                assert shop.status == "active"
                secrets.append(key.secret)
            workloads.append(payment_workload(prepared, secrets, run))
            print(f"{args.merchants} active merchant(s), one key each", flush=True)

        # -- statements per request ----------------------------------------------------------
        for workload in workloads if args.count_statements else []:
            table = bench.count_statements(workload, args.count_statements, args.postgres_log)
            print(f"\n{workload.name}: statements per request over {args.count_statements}"
                  f" requests one at a time (1x1, off):\n{table}", flush=True)  # fmt: skip
            if not bench.reconcile().ok:
                print("  LEDGER VIOLATIONS after counting", flush=True)
                return 1

        # -- interleaved runs ----------------------------------------------------------------
        for rep in range(1, args.repeat + 1):
            for workers, threads in splits:
                for config in configs:
                    for workload in workloads:
                        result = bench.run(workload, workers, threads, config, rep)
                        results.append(result)
                        print(describe(result), flush=True)
        print()
        print(summary(results))
        if args.json:
            args.json.write_text(json.dumps([vars(r) for r in results], indent=1, default=str))
    finally:
        bench.stop()
        with engine.begin() as conn:
            conn.execute(sa.text(WIPE))
        for path in sorted(workdir.rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        workdir.rmdir()
    failed = [r for r in results if r.failures]
    print(f"\nchecks: {len(results) - len(failed)} of {len(results)} runs passed every check"
          + "".join(f"\n  FAILED {r.workload} {r.split} {r.config} rep {r.rep}: "
                    + "; ".join(r.failures) for r in failed))  # fmt: skip
    return 1 if failed else 0


def code_version() -> str:
    """The commit gunicorn will load, marked ``+dirty`` when the code it runs has uncommitted
    changes (the work tree is shared: note it per run)."""
    git = ["git", "-C", str(ROOT)]
    commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()  # fmt: skip
    dirty = subprocess.run([*git, "status", "--porcelain", "--", "portal", "gunicorn.conf.py"],
                           capture_output=True, text=True).stdout.strip()  # fmt: skip
    return commit + ("+dirty" if dirty else "")


def describe(r: Result) -> str:
    lat = r.latency_us
    others = {k: v for k, v in sorted(r.statuses.items()) if k != 201}
    checks = [
        f"ledger {'ok' if r.ledger_ok else 'UNBALANCED'}",
        f"db succeeded {r.db_succeeded} (201s {r.created}, in flight at stop {r.in_flight})",
        f"db recorded {r.db_recorded}",
    ]
    if r.scraped_201 is not None:
        checks.append(f"scraped 201s {r.scraped_201:.0f}")
    if r.spans is not None:
        exports, size, spans, names = r.spans
        per = spans / max(r.db_recorded, 1)
        checks.append(f"spans {spans} ({per:.1f}/{r.workload}, {exports} exports,"
                      f" {size >> 10} KiB)")  # fmt: skip
        top = sorted(names.items(), key=lambda kv: -kv[1])[:8]
        checks.append("by name: " + ", ".join(f"{k[:40]} {v}" for k, v in top))
    checks.append(f"db backends active {r.backends_active:.1f}, waiting for a lock"
                  f" {r.backends_lock_wait:.1f}")  # fmt: skip
    cpu = ", ".join(f"{k} {v:.2f}" for k, v in r.cpu.items())
    text = (
        f"{r.workload:8} {r.split} {r.config:8} rep {r.rep} ({r.code}): {r.rps:7.1f} rps,"
        f" p50 {lat['50'] / 1000:.1f} ms,"
        f" p99 {lat['99'] / 1000:.1f} ms, non-201 {r.non_201} {others or ''}"
        f" socket errors {sum(r.socket_errors.values())},"
        f" log {r.log_bytes / max(r.answered, 1):.0f} B/request"
        f"\n  {'; '.join(checks)}\n  cores: {cpu}"
    )
    if r.samples:
        text += "\n  " + "\n  ".join(f"{k}: {v}" for k, v in sorted(r.samples.items()))
    if r.failures:
        text += "\n  CHECK FAILED: " + "; ".join(r.failures)
    return text


def _cpu_per_request(r: Result) -> float:
    """Microseconds of gunicorn plus bench-database CPU per answered request."""
    return (r.cpu["gunicorn"] + r.cpu["postgres (bench db)"]) / r.rps * 1e6


def summary(results: list[Result]) -> str:
    lines = [
        "| workload | config | workers x threads | runs | RPS (median; range) | p50 | p99 "
        "| non-201 (all runs) | gunicorn cores | postgres cores "
        f"| CPU µs/request (gunicorn + bench db) | ratio to {BARE_FLASK_RPS:,} |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    keys = list(dict.fromkeys((r.workload, r.split, r.config) for r in results))
    for workload, split, config in keys:
        runs = [r for r in results if (r.workload, r.split, r.config) == (workload, split, config)]
        rps = statistics.median(r.rps for r in runs)
        p50 = statistics.median(r.latency_us["50"] for r in runs) / 1000
        p99 = statistics.median(r.latency_us["99"] for r in runs) / 1000
        gun = statistics.median(r.cpu["gunicorn"] for r in runs)
        pg = statistics.median(r.cpu["postgres (bench db)"] for r in runs)
        per = statistics.median(_cpu_per_request(r) for r in runs)
        low, high = min(r.rps for r in runs), max(r.rps for r in runs)
        lines.append(
            f"| {workload} | {config} | {split} | {len(runs)} | {rps:,.0f} ({low:,.0f}–{high:,.0f})"
            f" | {p50:.1f} ms | {p99:.1f} ms | {sum(r.non_201 for r in runs)} | {gun:.2f}"
            f" | {pg:.2f} | {per:,.0f} | {rps / BARE_FLASK_RPS:.0%} |"
        )
    codes = sorted({r.code for r in results})
    text = f"code {', '.join(codes)}; medians per workload and configuration:\n" + "\n".join(lines)
    if {"transfer", "payment"} <= {r.workload for r in results}:
        text += "\n\npayment beside transfer (same split, configuration and reps):\n" + compare(
            results
        )
    return text


def _median(runs: dict[int, Result], value: Callable[[Result], float]) -> float:
    return statistics.median(value(r) for r in runs.values())


def compare(results: list[Result]) -> str:
    """Per split and configuration: both workloads' medians side by side, the ratio of the
    medians, and the median (and range) of the ratios of runs paired by rep."""
    lines = [
        "| config | workers x threads | transfer RPS | payment RPS | payment / transfer "
        "| paired ratios: median (range) | p50 transfer / payment | p99 transfer / payment "
        "| CPU µs/request transfer / payment | backends in a lock wait transfer / payment |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for split, config in dict.fromkeys((r.split, r.config) for r in results):
        by = {
            name: {r.rep: r for r in results if (r.workload, r.split, r.config)
                   == (name, split, config)}
            for name in ("transfer", "payment")
        }  # fmt: skip
        if not by["transfer"] or not by["payment"]:
            continue

        t_rps, p_rps = (_median(by[n], lambda r: r.rps) for n in ("transfer", "payment"))
        pairs = [by["payment"][rep].rps / by["transfer"][rep].rps
                 for rep in by["payment"] if rep in by["transfer"]]  # fmt: skip
        p50, p99 = (
            [_median(by[n], lambda r, p=p: r.latency_us[p]) / 1000 for n in ("transfer", "payment")]
            for p in ("50", "99")
        )
        cpu = [_median(by[n], _cpu_per_request) for n in ("transfer", "payment")]
        wait = [_median(by[n], lambda r: r.backends_lock_wait) for n in ("transfer", "payment")]
        lines.append(
            f"| {config} | {split} | {t_rps:,.0f} | {p_rps:,.0f} | **{p_rps / t_rps:.2f}**"
            f" | {statistics.median(pairs):.2f} ({min(pairs):.2f}–{max(pairs):.2f})"
            f" | {p50[0]:.1f} / {p50[1]:.1f} ms | {p99[0]:.1f} / {p99[1]:.1f} ms"
            f" | {cpu[0]:,.0f} / {cpu[1]:,.0f} | {wait[0]:.1f} / {wait[1]:.1f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
