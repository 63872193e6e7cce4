"""The Dockerfile: multi-stage, non-root runtime, health check, gunicorn CMD without migrations."""

from __future__ import annotations

import json
import re

import pytest

from tests.deploy.conftest import ROOT

Instruction = tuple[str, str]


def parse_dockerfile(text: str) -> list[list[Instruction]]:
    """Stages as lists of (INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    logical: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if current and line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1].rstrip() + " "
            continue
        logical.append(current + line)
        current = ""
    if current:
        logical.append(current)
    stages: list[list[Instruction]] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stages.append([])
        if not stages:
            continue  # ARG before the first FROM
        stages[-1].append((keyword, args.strip()))
    return stages


def exec_form(args: str) -> list[str]:
    try:
        value = json.loads(args)
    except json.JSONDecodeError:
        pytest.fail(f"not the exec (JSON) form, which gets signals directly: {args!r}")
    assert isinstance(value, list)
    return [str(item) for item in value]


@pytest.fixture(scope="module")
def stages() -> list[list[Instruction]]:
    return parse_dockerfile((ROOT / "Dockerfile").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def runtime(stages: list[list[Instruction]]) -> list[Instruction]:
    return stages[-1]


def values(stage: list[Instruction], keyword: str) -> list[str]:
    return [args for key, args in stage if key == keyword]


def test_is_multi_stage_and_runtime_is_slim(stages: list[list[Instruction]]) -> None:
    assert len(stages) >= 2
    base = values(stages[-1], "FROM")[0]
    assert "slim" in base, base


def test_build_stages_install_python_deps_and_assets(stages: list[list[Instruction]]) -> None:
    build_runs = " ".join(" ".join(values(stage, "RUN")) for stage in stages[:-1])
    assert "npm ci" in build_runs
    assert "pip install" in build_runs
    # Every asset `make assets` vendors is produced in the build.
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    for asset in ("htmx.min.js", "swagger-ui-bundle.js", "swagger-ui.css", "chart.umd.min.js"):
        assert asset in makefile, f"Makefile no longer vendors {asset}: update this test"
        assert asset in build_runs, f"the image does not vendor {asset}"
    runtime_runs = " ".join(values(stages[-1], "RUN"))
    assert "npm" not in runtime_runs and "pip install" not in runtime_runs


def test_runtime_runs_as_non_root(runtime: list[Instruction]) -> None:
    users = values(runtime, "USER")
    assert users, "runtime stage has no USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}


def test_runtime_has_a_healthcheck_on_healthz(runtime: list[Instruction]) -> None:
    checks = values(runtime, "HEALTHCHECK")
    assert checks, "runtime stage has no HEALTHCHECK"
    assert "NONE" not in checks[-1].upper().split()
    assert "/healthz" in checks[-1]
    assert ":8000/" in checks[-1]


def test_cmd_is_gunicorn_with_the_config_file_and_no_migrations(
    runtime: list[Instruction],
) -> None:
    cmds = values(runtime, "CMD")
    assert cmds, "runtime stage has no CMD"
    cmd = exec_form(cmds[-1])
    assert cmd == ["gunicorn", "-c", "gunicorn.conf.py", "portal:create_app()"]
    for entrypoint in values(runtime, "ENTRYPOINT"):
        assert not re.search(r"upgrade|migrat", entrypoint), entrypoint
    assert not re.search(r"upgrade|migrat", cmds[-1])


def test_runtime_environment(runtime: list[Instruction]) -> None:
    env = " ".join(values(runtime, "ENV"))
    assert "PORTAL_BIND=0.0.0.0:8000" in env
    assert "PORTAL_ENV=production" in env
    # Workers and threads come from the environment (gunicorn.conf.py reads them).
    conf = (ROOT / "gunicorn.conf.py").read_text(encoding="utf-8")
    assert 'os.environ.get("WEB_CONCURRENCY"' in conf
    assert 'os.environ.get("PORTAL_THREADS"' in conf
    assert "8000" in values(runtime, "EXPOSE")[0]
    multiproc = re.search(r"PROMETHEUS_MULTIPROC_DIR=(\S+)", env)
    if multiproc:  # the non-root user must be able to write there before gunicorn starts
        runs = " ".join(values(runtime, "RUN"))
        assert f"mkdir -p {multiproc.group(1)}" in runs
        assert re.search(rf"chown \S+ {re.escape(multiproc.group(1))}", runs)
    copied = " ".join(values(runtime, "COPY"))
    assert "gunicorn.conf.py" in copied
    assert "migrations" in copied, "`portal db upgrade` needs the migrations in the image"


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_dockerignore_keeps_local_state_out() -> None:
    patterns = dockerignore_patterns()
    for must in (".git", ".venv", "node_modules", "instance", ".env"):
        assert must in patterns, f".dockerignore does not exclude {must}"


@pytest.mark.parametrize(
    "source",
    [
        "pyproject.toml",
        "README.md",
        "portal",
        "gunicorn.conf.py",
        "migrations",
        "package.json",
        "package-lock.json",
    ],
)
def test_copied_sources_exist_and_are_not_ignored(source: str) -> None:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(rf"^COPY\b[^\n]*\b{re.escape(source)}\b", text, re.MULTILINE), source
    assert (ROOT / source).exists()
    assert source not in dockerignore_patterns()


def test_parser_sees_a_root_runtime_as_such() -> None:
    """The parser really finds the last stage's USER, not an earlier one."""
    stages = parse_dockerfile('FROM a AS b\nUSER 1000\nFROM c\nRUN x \\\n  y\nCMD ["z"]\n')
    assert values(stages[-1], "USER") == []
    assert values(stages[-1], "RUN") == ["x y"]
