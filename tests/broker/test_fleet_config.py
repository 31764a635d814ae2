"""The servers file, as a user writes it: what is accepted, what each mistake says, and
how a server's tools are named and filtered. Pure."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from broker.fleet.config import (
    MAX_TOOL_NAME,
    SEPARATOR,
    ConfigError,
    ServersConfig,
    ServerSpec,
    Startup,
    changed_servers,
    check_tool_names,
    default_config_path,
    load_servers,
    parse_servers,
)
from exai.settings import Isolation

GIT = {"command": "uvx", "args": ["mcp-server-git", "--repository", "."]}
DOCS = {"url": "https://docs.example.com/mcp"}


def parse(servers: dict[str, Any], environ: dict[str, str] | None = None) -> ServersConfig:
    text = json.dumps({"mcpServers": servers})
    return parse_servers(text, source="servers.json", environ=environ or {})


def one(entry: dict[str, Any], environ: dict[str, str] | None = None) -> ServerSpec:
    return parse({"git": entry}, environ).servers["git"]


def refused(servers: dict[str, Any], environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        parse(servers, environ)
    return str(caught.value)


def refused_entry(entry: dict[str, Any], environ: dict[str, str] | None = None) -> str:
    return refused({"git": entry}, environ)


def with_exai(**options: Any) -> dict[str, Any]:
    return {**GIT, "exai": options}


# --- the two kinds of server ---


def test_a_stdio_server_runs_its_command_with_its_args_env_and_cwd() -> None:
    spec = one({**GIT, "env": {"Z": "1", "A": "2"}, "cwd": "/srv/repo"})
    assert spec.command == ("uvx", "mcp-server-git", "--repository", ".")
    assert spec.env == (("A", "2"), ("Z", "1"))
    assert spec.cwd == "/srv/repo"
    assert (spec.url, spec.headers, spec.remote) == (None, (), False)


def test_a_server_with_a_url_is_remote_and_sends_its_headers() -> None:
    spec = one({**DOCS, "headers": {"X-Team": "a", "Authorization": "Bearer t"}})
    assert spec.remote
    assert spec.url == "https://docs.example.com/mcp"
    assert spec.headers == (("Authorization", "Bearer t"), ("X-Team", "a"))
    assert (spec.command, spec.env, spec.cwd) == (None, (), None)


def test_a_command_alone_is_a_whole_argv() -> None:
    assert one({"command": "my-server"}).command == ("my-server",)


def test_the_defaults_are_shared_eager_one_instance_no_cap_everything_allowed() -> None:
    spec = one(GIT)
    assert spec.isolation is Isolation.SHARED
    assert spec.startup is Startup.EAGER
    assert (spec.instances, spec.max_inflight) == (1, None)
    assert (spec.allow, spec.deny) == (None, ())
    assert spec.prefix == "git"


@pytest.mark.parametrize(
    ("kind", "entry"), [("stdio", GIT), ("http", DOCS), ("streamable-http", DOCS)]
)
def test_a_type_may_say_what_the_entry_is(kind: str, entry: dict[str, Any]) -> None:
    assert one({**entry, "type": kind}).remote == (kind != "stdio")


def test_sse_remotes_are_refused_saying_only_streamable_http_is_supported() -> None:
    message = refused_entry({"type": "sse", "url": "https://x.example.com/sse"})
    assert message.startswith('servers.json: server "git": type "sse" is not supported')
    assert "only Streamable HTTP" in message


def test_an_unknown_type_is_refused_with_the_accepted_ones() -> None:
    message = refused_entry({**GIT, "type": "websocket"})
    assert message == (
        'servers.json: server "git": type must be "stdio", "http" or "streamable-http", '
        'got "websocket"'
    )


def test_a_type_that_contradicts_the_entry_is_refused() -> None:
    assert 'type "stdio" needs "command"' in refused_entry({**DOCS, "type": "stdio"})
    assert 'type "http" needs "url"' in refused_entry({**GIT, "type": "http"})


def test_a_server_is_a_command_or_a_url_not_both_nor_neither() -> None:
    both = refused_entry({**GIT, **DOCS})
    assert both == (
        'servers.json: server "git": has both "command" and "url"; a server is one or the other'
    )
    neither = refused_entry({"args": ["x"]})
    assert neither.startswith('servers.json: server "git": needs "command"')


def test_keys_of_the_other_kind_are_reported_not_fatal() -> None:
    config = parse({"git": {**GIT, "headers": {"A": "b"}}, "docs": {**DOCS, "cwd": "/tmp"}})
    assert config.notes == (
        'servers.json: server "git": "headers" applies only to remote servers (ignored)',
        'servers.json: server "docs": "cwd" applies only to stdio servers (ignored)',
    )
    assert config.servers["git"].headers == ()
    assert config.servers["docs"].cwd is None


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"command": ["uvx", "x"]}, "command must be a string, got an array"),
        ({"command": "  "}, "command must not be empty"),
        ({"command": "uvx", "args": "x y"}, 'args must be an array of strings, got "x y"'),
        ({"command": "uvx", "args": ["x", 3]}, "args[1] must be a string, got 3"),
        ({"command": "uvx", "env": ["A=1"]}, "env must be an object of strings, got an array"),
        ({"command": "uvx", "env": {"PORT": 8080}}, "env.PORT must be a string, got 8080"),
        ({"command": "uvx", "env": {"A=B": "1"}}, 'env key "A=B" is not a variable name'),
        ({"command": "uvx", "cwd": 1}, "cwd must be a string, got 1"),
        ({"url": 5}, "url must be a string, got 5"),
        ({"url": "docs.example.com/mcp"}, "url must be an http:// or https:// address"),
        ({"url": "ftp://docs.example.com"}, "url must be an http:// or https:// address"),
        ({**DOCS, "headers": {"X": True}}, "headers.X must be a string, got true"),
        ({**GIT, "disabled": "yes"}, 'disabled must be true or false, got "yes"'),
    ],
)
def test_a_bad_value_is_refused_naming_server_and_key(entry: dict[str, Any], message: str) -> None:
    got = refused_entry(entry)
    assert got.startswith('servers.json: server "git": ')
    assert message in got


def test_a_null_is_the_same_as_leaving_the_key_out() -> None:
    spec = one({**GIT, "env": None, "cwd": None, "url": None, "exai": {"maxInflight": None}})
    assert (spec.env, spec.cwd, spec.remote, spec.max_inflight) == ((), None, False, None)


# --- the file around the entries ---


def test_vs_codes_servers_key_is_accepted_but_not_beside_mcp_servers() -> None:
    config = parse_servers(json.dumps({"servers": {"git": GIT}}), environ={})
    assert list(config.servers) == ["git"]
    with pytest.raises(ConfigError, match='has both "mcpServers" and "servers"'):
        parse_servers(json.dumps({"servers": {}, "mcpServers": {}}), environ={})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[]", "servers.json: the top level must be a JSON object, got an array"),
        ('{"mcpServer": {}}', 'servers.json: no "mcpServers" object at the top level'),
        ('{"mcpServers": []}', 'servers.json: "mcpServers" must be an object, got an array'),
        ('{"mcpServers": {"git": "uvx"}}', 'servers.json: server "git": must be an object'),
        ('{"mcpServers": {"": {"command": "x"}}}', "servers.json: a server name must not be empty"),
    ],
)
def test_a_file_of_the_wrong_shape_is_refused(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_servers(text, source="servers.json", environ={})
    assert str(caught.value).startswith(message)


def test_invalid_json_is_refused_with_its_line_and_column() -> None:
    text = '{"mcpServers": {\n  "git": {"command": "uvx",}\n}}'
    with pytest.raises(ConfigError, match=r"^servers.json: not valid JSON at line 2, column 28: "):
        parse_servers(text, source="servers.json", environ={})


def test_a_comment_is_pointed_out_as_what_json_lacks() -> None:
    text = '{"mcpServers": {\n  // the git server\n}}'
    with pytest.raises(ConfigError, match=r"line 2, column 3: .*\(JSON has no comments\)$"):
        parse_servers(text, source="servers.json", environ={})


def test_a_server_written_twice_is_refused_rather_than_the_first_lost() -> None:
    text = '{"mcpServers": {"git": {"command": "a"}, "git": {"command": "b"}}}'
    with pytest.raises(ConfigError, match=r'servers\.json: key "git" appears twice'):
        parse_servers(text, source="servers.json", environ={})


def test_servers_keep_the_order_of_the_file() -> None:
    config = parse({"b": GIT, "a": DOCS, "c": GIT | {"exai": {"prefix": "c"}}})
    assert list(config.servers) == ["b", "a", "c"]
    assert config.source == "servers.json"


def test_an_empty_file_of_servers_is_valid() -> None:
    config = parse({})
    assert (config.servers, config.notes) == ({}, ())


def test_a_disabled_server_is_skipped_unchecked_and_reported() -> None:
    config = parse({"git": GIT, "broken": {"disabled": True, "command": 3}})
    assert list(config.servers) == ["git"]
    assert config.notes == ('servers.json: server "broken": disabled (skipped)',)
    assert list(parse({"git": {**GIT, "disabled": False}}).servers) == ["git"]


def test_unknown_keys_are_reported_where_they_are_and_ignored() -> None:
    text = json.dumps(
        {
            "globalShortcut": "",
            "mcpServers": {
                "git": {**GIT, "autoApprove": [], "exai": {"instance": 2, "tools": {"alow": []}}}
            },
        }
    )
    config = parse_servers(text, source="servers.json", environ={})
    assert config.notes == (
        'servers.json: unknown key "globalShortcut" (ignored)',
        'servers.json: server "git": unknown key "autoApprove" (ignored)',
        'servers.json: server "git": unknown key "exai.instance" (ignored)',
        'servers.json: server "git": unknown key "exai.tools.alow" (ignored)',
    )
    assert config.servers["git"].instances == 1
    assert config.servers["git"].allow is None


def test_a_file_is_named_by_its_path_and_may_start_with_a_byte_order_mark(
    tmp_path: Path,
) -> None:
    path = tmp_path / "servers.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"mcpServers": {"git": GIT}}).encode())
    config = load_servers(path, environ={})
    assert config.source == str(path)
    assert list(config.servers) == ["git"]
    path.write_text('{"mcpServers": {"git": {"command": 1}}}')
    with pytest.raises(ConfigError, match=f"^{re.escape(str(path))}: server"):
        load_servers(path, environ={})


def test_a_file_that_cannot_be_read_is_a_config_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(
        ConfigError, match=f"^{re.escape(str(missing))}: cannot read the servers file"
    ):
        load_servers(missing)
    (tmp_path / "bad.json").write_bytes(b'{"mcpServers": {"\xff": {}}}')
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_servers(tmp_path / "bad.json")


# --- ${VAR} expansion ---


def test_variables_are_expanded_in_every_string_a_server_runs_with() -> None:
    environ = {"HOME": "/home/ann", "TOKEN": "t0k", "HOST": "docs.example.com"}
    stdio = one(
        {
            "command": "${HOME}/bin/srv",
            "args": ["--root", "${HOME}/src"],
            "env": {"GH_TOKEN": "${TOKEN}"},
            "cwd": "${HOME}",
        },
        environ,
    )
    assert stdio.command == ("/home/ann/bin/srv", "--root", "/home/ann/src")
    assert (stdio.env, stdio.cwd) == ((("GH_TOKEN", "t0k"),), "/home/ann")
    remote = one(
        {"url": "https://${HOST}/mcp", "headers": {"Authorization": "Bearer ${TOKEN}"}}, environ
    )
    assert remote.url == "https://docs.example.com/mcp"
    assert remote.headers == (("Authorization", "Bearer t0k"),)


def test_a_default_is_used_only_when_the_variable_is_unset() -> None:
    entry = {"command": "srv", "args": ["${LEVEL:-info}", "${EMPTY:-x}", "${A:-}"]}
    assert one(entry, {"EMPTY": ""}).command == ("srv", "info", "", "")
    assert one(entry, {"LEVEL": "debug"}).command == ("srv", "debug", "x", "")


def test_vs_codes_env_spelling_is_expanded_too() -> None:
    assert one({"command": "srv", "args": ["${env:USER}"]}, {"USER": "ann"}).command == (
        "srv",
        "ann",
    )


def test_an_unset_variable_without_a_default_names_server_key_and_variable() -> None:
    message = refused_entry({**GIT, "env": {"GH_TOKEN": "${GITHUB_TOKEN}"}})
    assert message == (
        'servers.json: server "git": env.GH_TOKEN uses ${GITHUB_TOKEN}, which is not set '
        "(set it, or give a default: ${GITHUB_TOKEN:-value})"
    )
    assert "args[1] uses ${X}" in refused_entry({"command": "srv", "args": ["a", "${X}"]})
    assert "headers.A uses ${X}" in refused_entry({**DOCS, "headers": {"A": "${X}"}})


def test_what_is_not_a_variable_reference_is_left_alone() -> None:
    entry = {"command": "srv", "args": ["$HOME", "${}", "${1X}", "cost: $5"]}
    assert one(entry).command == ("srv", "$HOME", "${}", "${1X}", "cost: $5")


def test_names_and_options_are_not_expanded() -> None:
    spec = one({**GIT, "env": {"${K}": "v"}, "exai": {"prefix": "g"}}, {"K": "x"})
    assert spec.env == (("${K}", "v"),)


def test_a_bad_url_is_shown_as_written_not_with_its_secret() -> None:
    message = refused_entry({"url": "${SECRET}"}, {"SECRET": "hunter2"})
    assert "hunter2" not in message
    assert 'got "${SECRET}"' in message


# --- exai options ---


def test_every_option_is_read() -> None:
    spec = one(
        with_exai(
            isolation="session",
            maxInflight=3,
            prefix="vcs",
            tools={"allow": ["git_*"], "deny": ["git_push"]},
            startup="lazy",
        )
    )
    assert spec.isolation is Isolation.SESSION
    assert spec.max_inflight == 3
    assert spec.prefix == "vcs"
    assert (spec.allow, spec.deny) == (("git_*",), ("git_push",))
    assert spec.startup is Startup.LAZY
    assert one(with_exai(instances=4)).instances == 4


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"isolation": "per-call"}, 'exai.isolation must be "shared" or "session", got "per-call"'),
        ({"isolation": "Shared"}, 'exai.isolation must be "shared" or "session", got "Shared"'),
        ({"instances": 0}, "exai.instances must be an integer >= 1, got 0"),
        ({"instances": 2.0}, "exai.instances must be an integer >= 1, got 2.0"),
        ({"instances": True}, "exai.instances must be an integer >= 1, got true"),
        ({"instances": "2"}, 'exai.instances must be an integer >= 1, got "2"'),
        ({"maxInflight": -1}, "exai.maxInflight must be an integer >= 1, got -1"),
        ({"startup": "now"}, 'exai.startup must be "lazy" or "eager", got "now"'),
        ({"prefix": 7}, "exai.prefix must be a string, got 7"),
        ({"tools": ["a"]}, "exai.tools must be an object, got an array"),
        (
            {"tools": {"allow": "a*"}},
            'exai.tools.allow must be an array of tool names or globs, got "a*"',
        ),
        ({"tools": {"deny": ["a", ""]}}, 'exai.tools.deny[1] must be a non-empty string, got ""'),
        ({"tools": {"deny": [1]}}, "exai.tools.deny[0] must be a non-empty string, got 1"),
    ],
)
def test_a_bad_option_is_refused_naming_server_and_key(
    options: dict[str, Any], message: str
) -> None:
    assert refused_entry(with_exai(**options)) == f'servers.json: server "git": {message}'


def test_exai_must_be_an_object() -> None:
    message = refused_entry({**GIT, "exai": "shared"})
    assert message == 'servers.json: server "git": exai must be an object, got "shared"'


def test_instances_of_a_per_session_server_are_reported_as_ignored() -> None:
    config = parse({"git": with_exai(isolation="session", instances=3)})
    assert config.notes == (
        'servers.json: server "git": exai.instances applies only to isolation "shared" (ignored)',
    )


# --- prefixes ---


@pytest.mark.parametrize(
    ("name", "prefix"),
    [
        ("git", "git"),
        ("my-server", "my-server"),
        ("Git Hub", "Git_Hub"),
        ("a.b/c", "a_b_c"),
        ("__a...b__", "a_b"),
        ("ünïcode", "n_code"),
    ],
)
def test_the_default_prefix_is_the_name_in_the_tool_name_alphabet(name: str, prefix: str) -> None:
    assert parse({name: GIT}).servers[name].prefix == prefix


def test_a_name_with_nothing_to_make_a_prefix_of_asks_for_one() -> None:
    message = refused({"...": GIT})
    assert message.startswith('servers.json: server "...": the name has no letter')
    assert message.endswith("set exai.prefix")
    assert parse({"...": with_exai(prefix="dots")}).servers["..."].prefix == "dots"


@pytest.mark.parametrize("prefix", ["a.b", "a b", "ä", "a__b", "a_", "__"])
def test_a_prefix_that_would_make_tool_names_ambiguous_or_invalid_is_refused(prefix: str) -> None:
    message = refused_entry(with_exai(prefix=prefix))
    assert message.startswith('servers.json: server "git": exai.prefix ')
    assert message.endswith(f'got "{prefix}"')


@pytest.mark.parametrize("prefix", ["a", "_a", "a-", "A_b-9", "-"])
def test_a_prefix_in_the_alphabet_is_kept_as_written(prefix: str) -> None:
    assert one(with_exai(prefix=prefix)).prefix == prefix


def test_a_prefix_too_long_for_any_tool_name_is_refused() -> None:
    longest = MAX_TOOL_NAME - len(SEPARATOR) - 1
    assert one(with_exai(prefix="p" * longest)).prefix == "p" * longest
    message = refused_entry(with_exai(prefix="p" * (longest + 1)))
    assert message.startswith(
        f'servers.json: server "git": the tool prefix "{"p" * (longest + 1)}"'
    )
    assert f"set an exai.prefix of at most {longest}" in message
    assert "the tool prefix" in refused({"n" * 80: GIT})


def test_two_servers_may_not_share_a_prefix() -> None:
    message = refused({"git": GIT, "vcs": with_exai(prefix="git")})
    assert message == (
        'servers.json: servers "git" and "vcs" both have the tool prefix "git"; '
        "set a different exai.prefix on one of them"
    )
    assert 'servers "my.git" and "my_git"' in refused({"my.git": GIT, "my_git": GIT})


def test_only_one_server_may_go_without_a_prefix() -> None:
    config = parse({"git": with_exai(prefix=""), "docs": DOCS})
    assert config.servers["git"].prefix == ""
    message = refused({"git": with_exai(prefix=""), "docs": {**DOCS, "exai": {"prefix": ""}}})
    assert message.startswith('servers.json: servers "git" and "docs" both have exai.prefix ""')


def test_a_disabled_server_does_not_hold_its_prefix() -> None:
    config = parse({"old": {**GIT, "disabled": True, "exai": {"prefix": "git"}}, "git": GIT})
    assert config.servers["git"].prefix == "git"


# --- tool names ---


def test_exposed_names_join_prefix_and_tool_and_split_back() -> None:
    spec = one(GIT)
    assert spec.exposed_name("status") == "git__status"
    assert spec.own_name("git__status") == "status"
    assert spec.own_name("git___private") == "_private"
    assert spec.own_name("git__a__b") == "a__b"
    for other in ("github__status", "status", "git_status", "git__", "Git__status"):
        assert spec.own_name(other) is None, other


def test_without_a_prefix_tools_keep_their_own_names() -> None:
    spec = one(with_exai(prefix=""))
    assert spec.exposed_name("status") == "status"
    assert spec.own_name("status") == "status"
    assert spec.own_name("") is None


def test_deny_wins_over_allow_and_globs_are_case_sensitive() -> None:
    spec = one(with_exai(tools={"allow": ["git_*", "log"], "deny": ["git_push*"]}))
    assert spec.allows("git_status")
    assert spec.allows("log")
    assert not spec.allows("git_push")
    assert not spec.allows("git_push_force")
    assert not spec.allows("GIT_status")
    assert not spec.allows("diff")


def test_without_an_allow_list_everything_not_denied_is_allowed() -> None:
    spec = one(with_exai(tools={"deny": ["rm", "[xy]*"]}))
    assert spec.allows("status")
    assert not spec.allows("rm")
    assert not spec.allows("xfer")
    assert not one(with_exai(tools={"allow": []})).allows("status")


def test_a_denied_tool_is_not_this_servers_to_call() -> None:
    spec = one(with_exai(tools={"deny": ["push"]}))
    assert spec.own_name("git__push") is None
    assert spec.own_name("git__pull") == "pull"


def test_tool_names_too_long_for_clients_are_named_with_their_length() -> None:
    spec = one(with_exai(prefix="p" * 20))
    fits = "t" * (MAX_TOOL_NAME - 22)
    long = "t" * (MAX_TOOL_NAME - 21)
    problems = check_tool_names(spec, [fits, long])
    assert len(problems) == 1
    assert problems[0].startswith(f'server "git": tool "{long}" is exposed as "{"p" * 20}__{long}"')
    assert f"{MAX_TOOL_NAME + 1} characters" in problems[0]


def test_a_denied_tool_name_is_never_shown_so_never_too_long() -> None:
    spec = one(with_exai(tools={"deny": ["huge_*"]}))
    assert check_tool_names(spec, ["huge_" + "x" * 100, "ok"]) == []


# --- reloads ---


def test_changes_between_two_files_are_named_by_server() -> None:
    old = parse({"git": GIT, "docs": DOCS, "time": {"command": "uvx", "args": ["time"]}})
    new = parse(
        {
            "time": {"command": "uvx", "args": ["time"]},
            "git": with_exai(instances=2),
            "fetch": {"command": "uvx", "args": ["fetch"]},
        }
    )
    assert changed_servers(old, new) == (["fetch"], ["docs"], ["git"])
    assert changed_servers(new, new) == ([], [], [])


def test_an_env_value_change_from_the_environment_is_a_change() -> None:
    entry = {**GIT, "env": {"T": "${T}"}}
    old = parse({"git": entry}, {"T": "1"})
    new = parse({"git": entry}, {"T": "2"})
    assert changed_servers(old, new) == ([], [], ["git"])


# --- where the file lives ---


def test_the_default_path_follows_each_platforms_convention() -> None:
    home = {"HOME": "/home/ann"}
    assert default_config_path(home, "linux") == Path("/home/ann/.config/exai-broker/servers.json")
    assert default_config_path({**home, "XDG_CONFIG_HOME": "/cfg"}, "linux") == Path(
        "/cfg/exai-broker/servers.json"
    )
    # A relative XDG_CONFIG_HOME is to be ignored.
    assert default_config_path({**home, "XDG_CONFIG_HOME": "cfg"}, "freebsd") == Path(
        "/home/ann/.config/exai-broker/servers.json"
    )
    assert default_config_path({"HOME": "/Users/ann"}, "darwin") == Path(
        "/Users/ann/Library/Application Support/exai-broker/servers.json"
    )
    assert default_config_path({"APPDATA": "/c/Roaming"}, "win32") == Path(
        "/c/Roaming/exai-broker/servers.json"
    )
    assert default_config_path({"USERPROFILE": "/c/ann"}, "win32") == Path(
        "/c/ann/AppData/Roaming/exai-broker/servers.json"
    )


def test_a_relative_cwd_is_next_to_the_servers_file(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "servers.json"
    path.parent.mkdir()
    path.write_text(
        '{"mcpServers": {"a": {"command": "x", "cwd": "work"},'
        ' "b": {"command": "y", "cwd": "/abs/dir"}}}'
    )
    servers = load_servers(path, environ={}).servers
    assert servers["a"].cwd == str((tmp_path / "conf" / "work").resolve())
    assert servers["b"].cwd == "/abs/dir"


def test_a_servers_file_and_a_one_server_option_are_refused_together(tmp_path: Path) -> None:
    from broker.fleet.source import servers_path
    from exai.settings import Settings

    with pytest.raises(ConfigError, match="--server-cmd"):
        servers_path(Settings(config="s.json", server_cmd="uvx mcp-server-time"), {})
    with pytest.raises(ConfigError, match="module:attr"):
        servers_path(Settings(config="s.json", server="pkg.app:server"), {})
    assert servers_path(Settings(config="s.json", server="pkg.tools"), {}) == Path("s.json")
    if not sys.platform.startswith("linux"):
        return  # the default location below is the XDG one
    home = {"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    assert servers_path(Settings(), home) is None
    default = tmp_path / "cfg" / "exai-broker" / "servers.json"
    default.parent.mkdir(parents=True)
    default.write_text('{"mcpServers": {}}')
    assert servers_path(Settings(), home) == default
    assert servers_path(Settings(server_cmd="x"), home) is None
