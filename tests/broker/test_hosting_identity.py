"""What a client is told at initialize, from the servers the daemon hosts."""

from __future__ import annotations

from broker.hosting.identity import present

OWN = {"name": "exai-broker", "version": "1"}
FS = (
    "fs",
    {"resources": {"subscribe": True}, "tools": {}},
    {"name": "fs", "version": "2"},
    "Files.",
)
GIT = (
    "git",
    {"tools": {"listChanged": False}, "logging": {}},
    {"name": "git", "version": "3"},
    None,
)


def test_one_hosted_server_is_presented_as_itself() -> None:
    capabilities, info, instructions = present([FS], OWN, own_tools=False)
    assert capabilities == {"resources": {"subscribe": True}, "tools": {}}
    assert info == {"name": "fs", "version": "2"} and instructions == "Files."


def test_several_are_merged_under_the_daemons_name() -> None:
    capabilities, info, instructions = present([FS, GIT], OWN, own_tools=True)
    assert capabilities == {
        "tools": {"listChanged": True},
        "resources": {"listChanged": True, "subscribe": True},
        "logging": {},
    }
    assert info == OWN and instructions == "fs: Files."


def test_what_no_server_offers_is_not_advertised() -> None:
    capabilities, _, instructions = present([], OWN, own_tools=True)
    assert capabilities == {"tools": {"listChanged": False}} and instructions is None
