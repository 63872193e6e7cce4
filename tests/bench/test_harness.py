"""bench/run.py's cheap parts: its arguments, its reading of wrk's summary, and the Lua scenarios
run by the real wrk against a loopback server here (which records what each request carried).
Nothing is timed."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load_run() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "bench" / "run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_run"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


run = _load_run()


def test_quick_sets_short_interleaved_runs() -> None:
    args = run.parse_args(["--quick"])
    assert (args.seconds, args.warmup, args.rounds) == (5.0, 1.0, 3)
    assert args.scenario_list == list(run.SCENARIOS) and "deep_page" in args.scenario_list
    assert args.accounts == 2000  # the baselines get as many accounts as Portal has cards


@pytest.mark.parametrize(
    "argv",
    [["--rounds", "2"], ["--scenarios", "payments"], ["--connections", "1"], ["--size", "huge"]],
)
def test_bad_arguments_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        run.parse_args(argv)
    assert exited.value.code == 2


def test_large_size_and_repeats_are_accepted(capsys: pytest.CaptureFixture[str]) -> None:
    args = run.parse_args(["--size", "large", "--quick", "--repeat", "3"])
    assert args.accounts == 200_000 and args.repeat == 3 and args.hot_connections == 32
    if shutil.which("wrk") and shutil.which("redis-server"):
        assert run.main(["--size", "large", "--dry-run"]) == 0
        assert "arguments fine" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["--repeat", "0"], ["--hot-connections", "1"]])
def test_bad_repeat_or_hot_connections_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        run.parse_args(argv)


def test_wrk_summary_is_read() -> None:
    result = run.Run("transfer", 1)
    run.parse_wrk(
        "noise\nBENCH summary 1000 5000000 0 1 0 0 2 3\nBENCH latency 50 1500\n"
        "BENCH latency 99 9000\nBENCH status 201 990\nBENCH status 402 10\n"
        'BENCH sample 402 {"error": 1}\n',
        result,
    )
    assert (result.requests, result.seconds, result.socket_errors, result.in_flight) == (
        1000,
        5.0,
        3,
        3,
    )
    assert result.ok_count == 990 and result.non_2xx == 10 and result.rps == 198.0
    assert result.latency_ms == {"50": 1.5, "99": 9.0}
    assert result.samples == {402: '{"error": 1}'}


# -- the Lua scripts under the real wrk -----------------------------------------------------------
class Recorder(BaseHTTPRequestHandler):
    seen: list[dict[str, Any]] = []
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode() if length else ""
        Recorder.seen.append(
            {
                "method": self.command,
                "path": self.path,
                "body": body,
                "auth": self.headers.get("Authorization"),
                "key": self.headers.get("Idempotency-Key"),
                "cookie": self.headers.get("Cookie"),
                "hx": self.headers.get("HX-Request"),
            }
        )
        status = 201 if self.command == "POST" else 200
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    do_GET = do_POST = _answer

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed (Debian's wrk package)")
    Recorder.seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _wrk(script: str, url: str, data: Path) -> run.Run:
    env = {
        "PATH": "/usr/bin:/bin",
        "BENCH_LUA_DIR": str(ROOT / "bench" / "lua"),
        "BENCH_DATA": str(data),
    }
    done = subprocess.run(
        ["wrk", "-t1", "-c2", "-d1s", "-s", str(ROOT / "bench" / "lua" / script), url, "--", "7"],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = run.Run(script, 1)
    run.parse_wrk(done.stdout, result)
    return result


def test_portal_scripts_send_what_the_api_expects(server: str, tmp_path: Path) -> None:
    data = tmp_path / "people.lua"
    people = [("tok-a", "card_a1", "card_a2"), ("tok-b", "card_b1", "card_b2")]
    cards = [["4000001234567899", 12, 2030, "123"], ["4000009876543210", 1, 2031, "456"]]
    run.write_lua_data(data, people, 0, cards, ["sk_live_one", "sk_live_two"])

    result = _wrk("transfer.lua", server, data)
    assert result.ok_count > 0 and result.statuses.keys() == {201}
    posts = [s for s in Recorder.seen if s["method"] == "POST"]
    assert {s["path"] for s in posts} == {"/api/v1/transfers"}
    keys = [s["key"] for s in posts]
    assert len(set(keys)) == len(keys) and all(keys), "one unique Idempotency-Key per request"
    owners = {f"Bearer {t}": {a, b} for t, a, b in people}
    for sent in posts:
        body = json.loads(sent["body"])
        # always between the token owner's own two cards, never someone else's
        assert {body["from_card"], body["to_card"]} == owners[sent["auth"]]
        assert 1 <= body["amount"] <= 500 and body["currency"] == "usd"

    Recorder.seen = []
    assert _wrk("payment.lua", server, data).statuses.keys() == {201}
    keys = [s["key"] for s in Recorder.seen]
    assert len(set(keys)) == len(keys) and all(keys)
    for sent in Recorder.seen:
        assert sent["path"] == "/api/v1/payments"
        assert sent["auth"] in ("Bearer sk_live_one", "Bearer sk_live_two")
        body = json.loads(sent["body"])
        card = body["card"]
        assert [card["number"], card["exp_month"], card["exp_year"], card["cvc"]] in cards
        assert 50 <= body["amount"] <= 500 and body["currency"] == "usd"

    Recorder.seen = []
    assert _wrk("balance.lua", server, data).statuses.keys() == {200}
    for sent in Recorder.seen:
        card = sent["path"].removeprefix("/api/v1/cards/").removesuffix("/balance")
        assert card in owners[sent["auth"]]
    Recorder.seen = []
    assert _wrk("activity.lua", server, data).statuses.keys() == {200}
    assert {s["path"] for s in Recorder.seen} == {"/api/v1/activity"}


def test_page_session_and_sign_in_scripts_send_what_portal_expects(
    server: str, tmp_path: Path
) -> None:
    pages = tmp_path / "pages.lua"
    run.write_lua_table(
        pages, {"token": "tok-heavy", "paths": ["/api/v1/activity?starting_after=tr_x"]}
    )
    assert _wrk("page.lua", server, pages).statuses.keys() == {200}
    assert {(s["path"], s["auth"]) for s in Recorder.seen} == {
        ("/api/v1/activity?starting_after=tr_x", "Bearer tok-heavy")
    }

    sessions = tmp_path / "sessions.lua"
    run.write_lua_table(sessions, {"sessions": [["session=a; device=1", 7], ['s="b"', 9]]})
    Recorder.seen = []
    assert _wrk("dashboard.lua", server, sessions).statuses.keys() == {200}
    assert {(s["path"], s["cookie"]) for s in Recorder.seen} <= {
        ("/wallet", "session=a; device=1"),
        ("/wallet", 's="b"'),
    }
    Recorder.seen = []
    assert _wrk("poll.lua", server, sessions).statuses.keys() == {200}
    for sent in Recorder.seen:  # each session polls with its own version, as htmx does
        assert sent["hx"] == "true"
        assert (sent["path"], sent["cookie"]) in {
            ("/wallet/changes?v=7&view=dashboard", "session=a; device=1"),
            ("/wallet/changes?v=9&view=dashboard", 's="b"'),
        }

    logins = tmp_path / "logins.lua"
    run.write_lua_table(logins, {"logins": [["holder1@bench.test", "pw-1"]]})
    Recorder.seen = []
    assert _wrk("signin.lua", server, logins).statuses.keys() == {201}
    for sent in Recorder.seen:
        assert sent["method"] == "POST" and sent["path"] == "/api/v1/auth/token"
        assert json.loads(sent["body"]) == {"email": "holder1@bench.test", "password": "pw-1"}


def test_lua_values_are_quoted() -> None:
    assert run.lua_value({"a": [1, 'x"y\\z'], "b": True}) == '{a = {1, "x\\"y\\\\z"}, b = true}'


def test_statements_round_trips_and_transactions_per_request() -> None:
    result = run.Run("poll", 1, requests=10)
    calls = [
        (20, "BEGIN"),
        (20, "COMMIT"),
        (3, "SET CONSTRAINTS ALL IMMEDIATE"),
        (10, "SELECT change_version FROM users WHERE id = $1"),
        (10, "select s.id from sessions s"),
        (1, "UPDATE jobs SET status = 'running'"),
        # the deferred balance trigger's query, fired at COMMIT: no round trip of its own
        (
            20,
            "SELECT currency, SUM(amount_minor) AS total FROM postings WHERE journal_entry_id ="
            " NEW.journal_entry_id GROUP BY currency",
        ),
    ]
    run.per_request(result, calls)
    assert result.round_trips_per_request == 6.4
    assert result.statements_per_request == 2.1  # BEGIN, COMMIT and SET left out
    assert result.transactions_per_request == 2.0


def test_report_states_the_deep_page_and_sign_in_ratios() -> None:
    def made(name: str, ok: int, p50: float, **extra: float) -> run.Run:
        r = run.Run(name, 1, seconds=1.0, requests=ok, statuses={200: ok})
        r.latency_ms = {"50": p50, "95": p50 * 2, "99": p50 * 3}
        r.extra = dict(extra)
        return r

    runs = [
        made("deep_page", 80, 12.0),
        made("first_page", 100, 10.0),
        made("signin", 100, 50.0, hash_ms=20.0),
    ]
    table, ratios = run.report(runs, ["deep_page", "first_page", "signin"], {"deep_page": 9.0})
    assert ratios["deep_page cost/first_page (1/throughput)"] == 1.25
    assert ratios["deep_page cost/first_page (p50)"] == 1.2
    cores = run.os.cpu_count()
    assert ratios["signin/argon2 ceiling"] == pytest.approx(100 / (cores * 1000 / 20.0))
    assert "costs 1.25x page 1 by throughput" in table and "; 9.0 |" in table


def test_memory_across_repeats_says_whether_it_grew() -> None:
    flat = run.memory_text([[(150, 140), (160, 150)], [(155, 142), (162, 151)]])
    assert "150 -> 151 MB: not growing" in flat
    grew = run.memory_text([[(150, 140)], [(150, 140)], [(260, 250)]])
    assert "GROWING" in grew and "after repeat 3: 260 MB peak / 250 MB now" in grew


def test_baseline_scripts_pick_two_distinct_accounts(server: str, tmp_path: Path) -> None:
    data = tmp_path / "accounts.lua"
    run.write_lua_data(data, None, 3)
    assert _wrk("baseline_transfer.lua", server, data).statuses.keys() == {201}
    for sent in Recorder.seen:
        body = json.loads(sent["body"])
        assert body["from"] != body["to"] and {body["from"], body["to"]} <= {1, 2, 3}
    Recorder.seen = []
    assert _wrk("baseline_balance.lua", server, data).statuses.keys() == {200}
    assert {s["path"] for s in Recorder.seen} <= {"/balance/1", "/balance/2", "/balance/3"}


# -- baseline (a'): Portal's logged statements turned into a pgbench script -----------------------
def _load_replay() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_replay", ROOT / "bench" / "replay.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_replay"] = module
    spec.loader.exec_module(module)
    return module


LOG = """\
2026-12-03 14:33:55.898 UTC [101] LOG:  statement: BEGIN
2026-12-03 14:33:55.899 UTC [202] LOG:  execute _pg3_1: UPDATE jobs SET locked_by = $1
2026-12-03 14:33:55.899 UTC [202] DETAIL:  Parameters: $1 = 'worker'
2026-12-03 14:33:55.900 UTC [101] LOG:  execute _pg3_0: INSERT INTO idempotency_keys (scope, key)
\tVALUES ($1, $2) ON CONFLICT DO NOTHING
2026-12-03 14:33:55.900 UTC [101] DETAIL:  Parameters: $1 = 'user:1', $2 = 'capture-k1'
2026-12-03 14:33:55.901 UTC [101] LOG:  execute <unnamed>: INSERT INTO transfers (public_id, memo, \
amount_minor, n) VALUES ($1, $2, $10, $11)
2026-12-03 14:33:55.901 UTC [101] DETAIL:  Parameters: $1 = 'tr_sF43K35NYZqRCgw3RoPSrphS', \
$2 = 'it''s', $10 = '100', $11 = NULL
2026-12-03 14:33:55.902 UTC [101] LOG:  statement: COMMIT
"""


def test_logged_statements_become_a_replay_with_fresh_unique_values() -> None:
    replay = _load_replay()
    statements = replay.parse_log(LOG)
    assert [s.pid for s in statements] == [101, 202, 101, 101, 101]
    sql = replay.request_sql(statements, {101}, "capture-k1")  # the worker's (202) left out
    assert sql[0] == "BEGIN;" and sql[-1] == "COMMIT;" and len(sql) == 4
    assert "VALUES ('user:1', ('capture-k1-' || :txn)) ON CONFLICT" in sql[1]
    assert "\n" in sql[1]  # a statement's continuation line stays with it
    # a minted public id gets the transaction's suffix; $10 is not $1 followed by "0"
    assert "(left('tr_sF43K35NYZqRCgw3RoPSrphS', -12) || lpad(:txn::text, 12, '0'))" in sql[2]
    assert "'it''s', '100', NULL)" in sql[2]
    text = replay.script([sql, sql])
    assert "\\set txn random(" in text
    assert "\\if :client_id % 2 = 0" in text and "\\elif :client_id % 2 = 1" in text
    assert text.rstrip().endswith("\\endif")
