"""Unit tests for exai.settings: defaults, precedence, validation and `.env` pitfalls."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from exai.settings import (
    Isolation,
    LogFormat,
    PoolKind,
    Settings,
    SettingsError,
    collect_environment,
    load_settings,
    load_shim_settings,
    read_token_file,
    worker_overrides,
)


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Run every test in an empty folder with no EXAI_* (or DEFAULT_MODEL) in os.environ."""
    for name in list(os.environ):
        if name.startswith("EXAI_") or name == "DEFAULT_MODEL":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    yield


def write_env(path: Path, text: str) -> Path:
    """Write a .env file byte for byte (so CRLF survives) and return its path."""
    path.write_bytes(text.encode())
    return path


def settings_error(environ: dict[str, str], cli: dict[str, object] | None = None) -> str:
    """The one-line message load_settings raises for `environ`/`cli`."""
    with pytest.raises(SettingsError) as info:
        load_settings(environ, cli)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- defaults ------------------------------------------------------------------------


def test_defaults_match_the_design_table() -> None:
    """With nothing configured, every value is the one the runbook documents."""
    s = load_settings({})
    assert s.host == "127.0.0.1"
    assert s.port == 8765
    assert s.token == ""
    assert s.max_frame_bytes == 33_554_432
    assert s.ping_interval_s == 25
    assert s.ping_timeout_s == 10
    assert s.call_timeout_s == 120
    assert s.session_max_inflight == 8
    assert s.global_max_inflight == 24
    assert dict(s.provider_caps) == {"kimi": 6, "glm": 4}
    assert s.queue_timeout_s == 0
    assert s.resume_grace_s == 60
    assert s.workers == 4
    assert s.log_dir == "logs"
    assert s.default_model == "glm-4.5-flash"
    assert s.url == "ws://127.0.0.1:8765"
    assert s.isolation is Isolation.SHARED
    assert s.log_format is LogFormat.TEXT
    assert (s.pool_kind, s.pool_address, s.pool) == (PoolKind.LOCAL, None, "local")


def test_collect_environment_without_a_dotenv_is_the_process_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No ./.env and no --env-file: the process environment alone is used."""
    monkeypatch.setenv("EXAI_WS_PORT", "9100")
    env = collect_environment()
    assert env["EXAI_WS_PORT"] == "9100"
    assert load_settings(env).port == 9100


def test_settings_are_frozen() -> None:
    """Settings are built once; nothing can change them afterwards."""
    s = load_settings({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.port = 1  # type: ignore[misc]


def test_ipv6_host_is_bracketed_in_the_url() -> None:
    """An IPv6 listen address yields a usable ws:// URL."""
    assert load_settings({"EXAI_WS_HOST": "::1", "EXAI_WS_PORT": "9000"}).url == "ws://[::1]:9000"


# --- precedence ----------------------------------------------------------------------


def test_precedence_dotenv_then_environment_then_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """.env < process environment < CLI flags, variable by variable."""
    write_env(
        tmp_path / ".env",
        "EXAI_WS_PORT=1111\nEXAI_WORKERS=2\nEXAI_LOG_DIR=from-dotenv\nEXAI_WS_GLOBAL_MAX_INFLIGHT=7\n",
    )
    monkeypatch.setenv("EXAI_WS_PORT", "2222")
    monkeypatch.setenv("EXAI_WORKERS", "3")

    env = collect_environment()
    s = load_settings(env)
    assert s.port == 2222  # environment beats .env
    assert s.workers == 3
    assert s.log_dir == "from-dotenv"  # only in .env
    assert s.global_max_inflight == 7

    s = load_settings(env, {"port": "3333", "log_dir": "from-cli", "workers": None})
    assert s.port == 3333  # CLI beats both
    assert s.log_dir == "from-cli"
    assert s.workers == 3  # a flag left unset (None) does not override


def test_cli_flags_accept_non_string_values() -> None:
    """argparse or a caller may hand ints; they are parsed like the variables."""
    s = load_settings({}, {"port": 0, "workers": 8, "host": "localhost", "log_level": "debug"})
    assert (s.port, s.workers, s.host, s.log_level) == (0, 8, "localhost", "DEBUG")


def test_unrelated_cli_keys_are_ignored() -> None:
    """The full argparse namespace (env_file, version, ...) can be passed as is."""
    s = load_settings({}, {"env_file": "x.env", "something_else": 5})
    assert s.port == 8765


def test_explicit_env_file_is_read_and_environment_still_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--env-file names a file anywhere; the process environment still overrides it."""
    env_file = write_env(tmp_path / "custom.env", "EXAI_WS_PORT=4444\nEXAI_WORKERS=5\n")
    monkeypatch.setenv("EXAI_WORKERS", "6")
    s = load_settings(collect_environment(env_file))
    assert (s.port, s.workers) == (4444, 6)


def test_explicit_missing_env_file_is_an_error(tmp_path: Path) -> None:
    """Asking for a .env file that does not exist fails instead of silently using defaults."""
    missing = tmp_path / "nope.env"
    with pytest.raises(SettingsError, match=r"nope\.env"):
        collect_environment(missing)


# --- invalid values ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("var", "raw"),
    [
        ("EXAI_WS_PORT", "http"),
        ("EXAI_WS_PORT", "8765.0"),
        ("EXAI_WS_PORT", "70000"),
        ("EXAI_WS_PORT", "-1"),
        ("EXAI_WS_MAX_BYTES", " 33554432 #comment"),
        ("EXAI_WS_MAX_BYTES", "32MB"),
        ("EXAI_WS_SESSION_MAX_INFLIGHT", "-1"),
        ("EXAI_WS_SESSION_MAX_INFLIGHT", "0"),
        ("EXAI_WS_GLOBAL_MAX_INFLIGHT", "-5"),
        ("EXAI_WS_KIMI_MAX_INFLIGHT", "-1"),
        ("EXAI_WS_GLM_MAX_INFLIGHT", "four"),
        ("EXAI_WS_OPENAI_MAX_INFLIGHT", "0"),
        ("EXAI_WORKERS", "0"),
        ("EXAI_WORKERS", "many"),
        ("EXAI_DIAGNOSTIC_TOOLS", "maybe"),
        ("EXAI_DIAGNOSTIC_TOOLS", "2"),
        ("EXAI_LOG_LEVEL", "verbose"),
        ("EXAI_WS_CALL_TIMEOUT", "0"),
        ("EXAI_WS_CALL_TIMEOUT", "nan"),
        ("EXAI_WS_CALL_TIMEOUT", "inf"),
        ("EXAI_WS_QUEUE_TIMEOUT", "-1"),
        ("EXAI_WS_RESUME_GRACE", "soon"),
        ("EXAI_WS_PING_INTERVAL", "0"),
        ("EXAI_ISOLATION", "private"),
        ("EXAI_ISOLATION", ""),
        ("EXAI_LOG_FORMAT", "xml"),
        ("EXAI_POOL", "dask"),
    ],
)
def test_invalid_value_names_variable_value_and_expectation(var: str, raw: str) -> None:
    """Start-up fails with one line naming the variable, the bad value and what was expected."""
    message = settings_error({var: raw})
    assert var in message
    assert raw.strip() in message
    assert "expected" in message


@pytest.mark.parametrize("raw", ["abc def", "secret # my token"])
def test_invalid_token_is_refused_without_echoing_it(raw: str) -> None:
    """A token with whitespace (often a pasted comment) fails, and the secret is not printed."""
    message = settings_error({"EXAI_WS_TOKEN": raw})
    assert "EXAI_WS_TOKEN" in message
    assert "expected" in message
    assert raw not in message and "secret" not in message
    with pytest.raises(SettingsError) as info:
        load_shim_settings({"EXAI_WS_TOKEN": raw})
    assert raw not in str(info.value)


@pytest.mark.parametrize("raw", ["tökén-secret", "secret-\u00e9", "秘密secret"])
def test_a_token_that_cannot_travel_in_a_header_is_refused_at_start(raw: str) -> None:
    """Only printable ASCII arrives intact in an HTTP header, so any other token could
    never be matched: it fails at start-up with one line, and the secret is not printed."""
    message = settings_error({"EXAI_WS_TOKEN": raw})
    assert "EXAI_WS_TOKEN" in message and "ASCII" in message
    assert "\n" not in message.strip()
    assert raw not in message and "secret" not in message
    with pytest.raises(SettingsError) as info:
        load_shim_settings({"EXAI_WS_TOKEN": raw})
    assert raw not in str(info.value)


def test_invalid_cli_flag_is_reported_with_its_value() -> None:
    """A bad flag fails like a bad variable, naming the setting and the value."""
    message = settings_error({}, {"workers": "0"})
    assert "--workers" in message or "EXAI_WORKERS" in message
    assert "'0'" in message


def test_empty_host_is_refused() -> None:
    """An empty EXAI_WS_HOST would listen nowhere useful; it is an error."""
    assert "EXAI_WS_HOST" in settings_error({"EXAI_WS_HOST": "  "})


def test_non_loopback_host_without_token_is_refused() -> None:
    """The design refuses to listen beyond loopback unless a token is set."""
    assert "EXAI_WS_HOST" in settings_error({"EXAI_WS_HOST": "0.0.0.0"})


def test_non_loopback_host_with_token_is_accepted() -> None:
    """With a token, listening on all interfaces is allowed."""
    s = load_settings({"EXAI_WS_HOST": "0.0.0.0", "EXAI_WS_TOKEN": "s3cret"})
    assert (s.host, s.token) == ("0.0.0.0", "s3cret")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1", True),
        ("true", True),
        ("YES", True),
        (" on ", True),
        ("0", False),
        ("false", False),
        ("No", False),
        ("off", False),
        ("", False),
    ],
)
def test_boolean_spellings(raw: str, expected: bool) -> None:
    """The usual boolean spellings are accepted, case-insensitively."""
    assert load_settings({"EXAI_DIAGNOSTIC_TOOLS": raw}).diagnostic_tools is expected


@pytest.mark.parametrize("level", ["debug", "INFO", "Warning", "error"])
def test_log_level_is_case_insensitive(level: str) -> None:
    """Log levels are normalised to the upper-case name logging expects."""
    assert load_settings({"EXAI_LOG_LEVEL": level}).log_level == level.upper()


def test_surrounding_whitespace_is_ignored() -> None:
    """Values set from a shell with stray spaces still parse."""
    s = load_settings({"EXAI_WS_PORT": " 9001 ", "EXAI_WS_TOKEN": " tok "})
    assert (s.port, s.token) == (9001, "tok")


def test_allowed_origins_are_split_and_normalised() -> None:
    """A comma-separated allow-list drops blanks and trailing slashes."""
    s = load_settings({"EXAI_WS_ALLOWED_ORIGINS": "https://a.example/, ,http://b.example"})
    assert s.allowed_origins == ("https://a.example", "http://b.example")


# --- provider caps -------------------------------------------------------------------


def test_any_provider_max_inflight_variable_defines_a_cap() -> None:
    """EXAI_WS_<NAME>_MAX_INFLIGHT adds a provider cap next to the defaults."""
    s = load_settings({"EXAI_WS_OPENAI_MAX_INFLIGHT": "3", "EXAI_WS_KIMI_MAX_INFLIGHT": "2"})
    assert dict(s.provider_caps) == {"kimi": 2, "glm": 4, "openai": 3}


def test_session_and_global_caps_are_not_providers() -> None:
    """The session and global caps look like provider variables but are not providers."""
    s = load_settings({"EXAI_WS_SESSION_MAX_INFLIGHT": "3", "EXAI_WS_GLOBAL_MAX_INFLIGHT": "9"})
    assert (s.session_max_inflight, s.global_max_inflight) == (3, 9)
    assert "session" not in s.provider_caps
    assert "global" not in s.provider_caps


def test_provider_cap_from_dotenv(tmp_path: Path) -> None:
    """Provider caps can come from the .env file too."""
    write_env(tmp_path / ".env", "EXAI_WS_DEEPSEEK_MAX_INFLIGHT=5\n")
    assert load_settings(collect_environment()).provider_caps["deepseek"] == 5


# --- .env pitfalls (parsed by python-dotenv) -----------------------------------------


def dotenv_settings(tmp_path: Path, text: str) -> Settings:
    """Settings from a ./.env holding `text`."""
    write_env(tmp_path / ".env", text)
    return load_settings(collect_environment())


def test_dotenv_inline_comment_after_value(tmp_path: Path) -> None:
    """`VAR=value # comment` in .env is the value; the comment is dropped."""
    s = dotenv_settings(tmp_path, "EXAI_WS_MAX_BYTES=1048576 # one MiB\nEXAI_WORKERS= 3 # x\n")
    assert (s.max_frame_bytes, s.workers) == (1_048_576, 3)


def test_dotenv_quoted_values_keep_hash(tmp_path: Path) -> None:
    """A `#` inside quotes is part of the value, not a comment."""
    s = dotenv_settings(
        tmp_path, "EXAI_WS_TOKEN=\"abc#def\"\nEXAI_LOG_DIR='logs #2'  # where logs go\n"
    )
    assert s.token == "abc#def"
    assert s.log_dir == "logs #2"


def test_dotenv_hash_without_space_is_an_error(tmp_path: Path) -> None:
    """`VAR=4#x` keeps `4#x` as the value, which fails loudly rather than reading 4."""
    write_env(tmp_path / ".env", "EXAI_WS_GLM_MAX_INFLIGHT=4#x\n")
    message = settings_error(collect_environment())
    assert "EXAI_WS_GLM_MAX_INFLIGHT" in message
    assert "4#x" in message


def test_dotenv_export_lines(tmp_path: Path) -> None:
    """Shell-style `export VAR=value` lines are read like plain assignments."""
    s = dotenv_settings(tmp_path, "export EXAI_WS_PORT=9002\nexport EXAI_WS_TOKEN=tok\n")
    assert (s.port, s.token) == (9002, "tok")


def test_dotenv_crlf_line_endings(tmp_path: Path) -> None:
    """A .env saved on Windows (CRLF) gives the same values, with no stray carriage return."""
    s = dotenv_settings(tmp_path, "EXAI_WS_PORT=9003\r\nEXAI_WS_TOKEN=tok\r\nEXAI_WORKERS=2\r\n")
    assert (s.port, s.token, s.workers) == (9003, "tok", 2)


def test_dotenv_spaces_around_equals(tmp_path: Path) -> None:
    """`VAR = value` works."""
    s = dotenv_settings(tmp_path, "EXAI_WS_PORT = 9004\nEXAI_WS_HOST =localhost\n")
    assert (s.port, s.host) == (9004, "localhost")


def test_dotenv_empty_token_means_auth_off(tmp_path: Path) -> None:
    """`EXAI_WS_TOKEN=` is the documented default: auth off."""
    assert dotenv_settings(tmp_path, "EXAI_WS_TOKEN=\n").token == ""


def test_dotenv_empty_number_is_default_or_a_clear_error(tmp_path: Path) -> None:
    """`EXAI_WORKERS=` either means the default or fails naming the variable; never garbage."""
    write_env(tmp_path / ".env", "EXAI_WORKERS=\n")
    try:
        s = load_settings(collect_environment())
    except SettingsError as exc:
        assert "EXAI_WORKERS" in str(exc)
    else:
        assert s.workers == 4


def test_dotenv_empty_log_dir_is_default_or_a_clear_error(tmp_path: Path) -> None:
    """`EXAI_LOG_DIR=` either means the default `logs` or fails naming the variable."""
    write_env(tmp_path / ".env", "EXAI_LOG_DIR=\n")
    try:
        s = load_settings(collect_environment())
    except SettingsError as exc:
        assert "EXAI_LOG_DIR" in str(exc)
    else:
        assert s.log_dir == "logs"


def test_dotenv_variable_without_equals_is_ignored(tmp_path: Path) -> None:
    """A bare `VAR` line (no `=`) does not set the variable."""
    assert dotenv_settings(tmp_path, "EXAI_WS_PORT\nEXAI_WORKERS=2\n").port == 8765


def test_comment_given_directly_in_environment_is_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The environment is not a .env file: an inline comment there is part of the value."""
    monkeypatch.setenv("EXAI_WS_MAX_BYTES", " 33554432 #comment")
    message = settings_error(collect_environment())
    assert "EXAI_WS_MAX_BYTES" in message
    assert "#comment" in message


# --- shim settings -------------------------------------------------------------------


def test_shim_defaults() -> None:
    """The shim talks to the default daemon address with a 30 s RPC timeout."""
    s = load_shim_settings({})
    assert (s.host, s.port, s.token, s.rpc_timeout_s) == ("127.0.0.1", 8765, "", 30.0)
    assert s.max_frame_bytes == 33_554_432
    assert s.url == "ws://127.0.0.1:8765"


def test_shim_reads_shared_and_own_variables() -> None:
    """Host, port and token match the daemon's variables; EXAI_SHIM_RPC_TIMEOUT is its own."""
    s = load_shim_settings(
        {
            "EXAI_WS_HOST": "::1",
            "EXAI_WS_PORT": "9005",
            "EXAI_WS_TOKEN": "tok",
            "EXAI_SHIM_RPC_TIMEOUT": "2.5",
        }
    )
    assert (s.port, s.token, s.rpc_timeout_s) == (9005, "tok", 2.5)
    assert s.url == "ws://[::1]:9005"


@pytest.mark.parametrize(
    ("var", "raw"),
    [
        ("EXAI_SHIM_RPC_TIMEOUT", "0"),
        ("EXAI_SHIM_RPC_TIMEOUT", "soon"),
        ("EXAI_SHIM_RPC_TIMEOUT", "-3"),
        ("EXAI_WS_PORT", "0"),
    ],
)
def test_shim_invalid_value_names_variable(var: str, raw: str) -> None:
    """A bad shim value fails naming the variable and the value."""
    with pytest.raises(SettingsError) as info:
        load_shim_settings({var: raw})
    assert var in str(info.value)
    assert repr(raw) in str(info.value)


def test_shim_ignores_daemon_only_variables() -> None:
    """A daemon-only typo (bad EXAI_WORKERS) does not stop every editor's shim."""
    assert load_shim_settings({"EXAI_WORKERS": "lots", "EXAI_LOG_LEVEL": "loud"}).port == 8765


# --- the worker pool -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "pool"),
    [("local", "local"), ("ray", "ray"), ("ray:127.0.0.1:6379", "ray:127.0.0.1:6379")],
)
def test_pool_accepts_local_ray_and_a_cluster_address(raw: str, pool: str) -> None:
    assert load_settings({"EXAI_POOL": raw}).pool == pool
    assert load_settings({}, {"pool": raw}).pool == pool
    assert load_settings({}).pool == "local"


@pytest.mark.parametrize("raw", ["", "remote", "ray:", "dask:10.0.0.1:8786"])
def test_pool_rejects_anything_else_naming_the_choices(raw: str) -> None:
    message = settings_error({"EXAI_POOL": raw})
    assert "EXAI_POOL" in message
    assert "local, ray, or ray:ADDRESS" in message


def test_pool_ray_without_ray_installed_is_one_line_saying_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without the extra, `--pool ray` stops before anything starts, saying what to do."""
    import importlib.util

    from broker.__main__ import main
    from exai.exits import ExitCode

    real_find_spec = importlib.util.find_spec

    def without_ray(name: str, package: str | None = None) -> object:
        return None if name == "ray" else real_find_spec(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", without_ray)
    assert main(["--pool", "ray", "--port", "0"]) == ExitCode.USAGE
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "--pool ray needs Ray" in err
    assert "pip install 'exai-broker[ray]'" in err
    assert not Path("logs").exists(), "nothing may start before the check"


@pytest.mark.parametrize(
    ("raw", "kind", "address"),
    [
        ("local", PoolKind.LOCAL, None),
        (" ray ", PoolKind.RAY, None),
        ("ray:10.0.0.5:6379", PoolKind.RAY, "10.0.0.5:6379"),
        ("ray: 10.0.0.5:6379 ", PoolKind.RAY, "10.0.0.5:6379"),
        ("ray:auto", PoolKind.RAY, "auto"),
        ("ray:ray://head:10001", PoolKind.RAY, "ray://head:10001"),
    ],
)
def test_pool_is_a_kind_and_for_a_cluster_its_address(
    raw: str, kind: PoolKind, address: str | None
) -> None:
    """`ray:ADDRESS` joins a cluster (the address is everything after the first colon);
    plain `ray` has no address: a private cluster."""
    s = load_settings({"EXAI_POOL": raw})
    assert (s.pool_kind, s.pool_address) == (kind, address)
    assert s.pool == (kind if address is None else f"ray:{address}")


@pytest.mark.parametrize(
    ("var", "raw"),
    [("EXAI_ISOLATION", "private"), ("EXAI_LOG_FORMAT", "yaml")],
)
def test_a_bad_choice_lists_the_choices(var: str, raw: str) -> None:
    message = settings_error({var: raw})
    assert message.startswith(f"{var}={raw!r}: expected one of ")
    choices = {"EXAI_ISOLATION": "shared, session", "EXAI_LOG_FORMAT": "text, json"}[var]
    assert message.endswith(choices)


def test_choices_are_typed_and_case_insensitive() -> None:
    s = load_settings({"EXAI_ISOLATION": " Session ", "EXAI_LOG_FORMAT": "JSON"})
    assert s.isolation is Isolation.SESSION
    assert s.log_format is LogFormat.JSON
    # Code written against the plain strings still reads them.
    assert s.isolation == "session" and s.log_format == "json"


def test_cli_choices_fail_like_variables() -> None:
    message = settings_error({}, {"isolation": "private"})
    assert "EXAI_ISOLATION" in message and "'private'" in message
    assert load_settings({}, {"pool": "ray:h:1"}).pool_address == "h:1"


@pytest.mark.parametrize("pool", ["local", "ray", "ray:10.0.0.5:6379"])
def test_workers_rebuild_the_same_typed_settings_from_the_overrides(pool: str) -> None:
    """What the daemon resolved (flags included) reaches its workers unchanged."""
    daemon = load_settings({}, {"pool": pool, "isolation": "session", "log_format": "json"})
    overrides = worker_overrides(daemon)
    assert overrides["EXAI_POOL"] == pool
    assert overrides["EXAI_ISOLATION"] == "session"
    worker = load_settings(overrides)
    assert (worker.pool_kind, worker.pool_address) == (daemon.pool_kind, daemon.pool_address)
    assert (worker.isolation, worker.log_format) == (Isolation.SESSION, LogFormat.JSON)


def test_a_token_file_gives_its_one_line_and_a_bad_one_fails_in_one_line(tmp_path: Path) -> None:
    """The token is the file's line without its newline; a missing, empty or non-UTF-8
    file fails naming the flag and the path, never the content."""
    good = tmp_path / "token"
    good.write_text("  tok-file-secret\n")
    assert read_token_file(str(good), "--token-file") == "tok-file-secret"
    empty = tmp_path / "empty"
    empty.write_text("\n")
    binary = tmp_path / "binary"
    binary.write_bytes(b"tok-\xff-secret\n")
    for path, why in ((tmp_path / "none", "cannot read"), (empty, "no token"), (binary, "UTF-8")):
        with pytest.raises(SettingsError) as info:
            read_token_file(str(path), "--token-file")
        message = str(info.value)
        assert message.startswith(f"--token-file: {path}: ") and why in message
        assert "secret" not in message and "\n" not in message
