"""Unit tests for exai.loops: uvloop when it is there, asyncio otherwise, and a program's
own ImportError is the program's failure: it propagates and nothing runs twice."""

from __future__ import annotations

import asyncio
import importlib.util
import sys

import pytest

from exai.loops import event_loop_runner, run

HAVE_UVLOOP = importlib.util.find_spec("uvloop") is not None


@pytest.fixture(params=["uvloop", "asyncio"])
def loop_kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test on uvloop (where installed) and on plain asyncio."""
    kind: str = request.param
    if kind == "uvloop" and not HAVE_UVLOOP:
        pytest.skip("uvloop is not installed")
    if kind == "asyncio":
        # A None entry makes `import uvloop` raise ImportError, as on Windows.
        monkeypatch.setitem(sys.modules, "uvloop", None)
    return kind


def test_without_uvloop_the_runner_is_asyncio_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)
    assert event_loop_runner() is asyncio.run


@pytest.mark.skipif(not HAVE_UVLOOP, reason="uvloop is not installed")
def test_with_uvloop_the_runner_is_uvloop_run() -> None:
    import uvloop

    assert event_loop_runner() is uvloop.run


def test_run_returns_what_the_program_returns(loop_kind: str) -> None:
    async def program() -> int:
        await asyncio.sleep(0)
        return 42

    assert run(program()) == 42


def test_an_import_error_inside_the_program_propagates_and_it_runs_once(loop_kind: str) -> None:
    """A program that fails with ImportError (a lazy import of a missing module) fails
    with that error; it is not taken for a missing uvloop and started a second time."""
    runs = []

    async def program() -> None:
        runs.append(type(asyncio.get_running_loop()).__module__)
        await asyncio.sleep(0)
        import no_such_module_inside_the_program  # noqa: F401

    with pytest.raises(ModuleNotFoundError, match="no_such_module_inside_the_program"):
        run(program())
    assert len(runs) == 1, runs
    assert runs[0].startswith("uvloop") is (loop_kind == "uvloop")


def test_an_import_error_raised_by_the_program_itself_propagates(loop_kind: str) -> None:
    """Even a bare ImportError (not ModuleNotFoundError) is passed through untouched."""
    runs = 0

    async def program() -> None:
        nonlocal runs
        runs += 1
        raise ImportError("cannot import name 'x' from 'y'")

    with pytest.raises(ImportError, match="cannot import name 'x'") as info:
        run(program())
    assert type(info.value) is ImportError
    assert runs == 1
