"""Resolving an exec's user in a container's /etc/passwd and /etc/group, and ExecSpec's
checks: what is accepted, and that anything else is refused with ExecStartError only."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guestagent.execspec import ExecSpec, ExecStartError
from guestagent.execuser import MAX_DB_BYTES, Credentials, resolve_user

PASSWD = """\
root:x:0:0:root:/root:/bin/sh
# a comment
broken line
app:x:1000:1000:App:/home/app:/bin/sh
web:x:33:33:www:/var/www:/usr/sbin/nologin
badid:x:notanumber:1::/:/bin/sh
"""
GROUP = """\
root:x:0:
app:x:1000:
audio:x:29:app,web
video:x:44:web
docker:x:999:app
"""


def make_root(tmp: Path, passwd: str | None = PASSWD, group: str | None = GROUP) -> str:
    (tmp / "etc").mkdir(exist_ok=True)
    for name, text in (("passwd", passwd), ("group", group)):
        if text is not None:
            (tmp / "etc" / name).write_text(text)
    return str(tmp)


@pytest.mark.parametrize(
    ("user", "creds"),
    [
        ("app", Credentials(1000, 1000, (1000, 29, 999), "/home/app")),
        ("1000", Credentials(1000, 1000, (1000, 29, 999), "/home/app")),
        ("web", Credentials(33, 33, (33, 29, 44), "/var/www")),
        ("app:video", Credentials(1000, 44, (44,), "/home/app")),
        ("app:7", Credentials(1000, 7, (7,), "/home/app")),
        ("4242", Credentials(4242, 0, (0,), None)),  # numeric, not listed: gid 0
        ("4242:4243", Credentials(4242, 4243, (4243,), None)),
        ("root", Credentials(0, 0, (0,), "/root")),
    ],
)
def test_users_resolve_in_the_containers_files(
    tmp_path: Path, user: str, creds: Credentials
) -> None:
    assert resolve_user(user, make_root(tmp_path)) == creds


def test_no_user_keeps_the_agents(tmp_path: Path) -> None:
    assert resolve_user(None, make_root(tmp_path)) is None
    assert resolve_user("", make_root(tmp_path)) is None


@pytest.mark.parametrize(
    ("user", "reason"),
    [
        ("nobody-here", "unknown user 'nobody-here'"),
        ("badid", "unknown user 'badid'"),  # its line is malformed: skipped
        ("app:nogroup", "unknown group 'nogroup'"),
        ("99999999999", "uid 99999999999 is out of range"),
        ("1:4294967295", "gid 4294967295 is out of range"),
    ],
)
def test_unknown_users_and_groups_are_refused(tmp_path: Path, user: str, reason: str) -> None:
    with pytest.raises(ExecStartError, match=reason):
        resolve_user(user, make_root(tmp_path))


def test_missing_files_allow_numeric_ids_only(tmp_path: Path) -> None:
    root = make_root(tmp_path, passwd=None, group=None)
    assert resolve_user("5:6", root) == Credentials(5, 6, (6,), None)
    with pytest.raises(ExecStartError, match="unknown user 'app'"):
        resolve_user("app", root)


def test_oversized_or_unreadable_files_are_refused(tmp_path: Path) -> None:
    root = make_root(tmp_path, passwd="x" * (MAX_DB_BYTES + 1))
    with pytest.raises(ExecStartError, match="larger than"):
        resolve_user("app", root)
    os.remove(tmp_path / "etc" / "passwd")
    os.mkdir(tmp_path / "etc" / "passwd")
    with pytest.raises(ExecStartError, match="cannot read /etc/passwd"):
        resolve_user("app", root)


_lines = st.lists(
    st.lists(st.text(alphabet="ab01:,\x00 é", max_size=8), max_size=8).map(":".join), max_size=6
).map("\n".join)


@settings(max_examples=200, deadline=None)
@given(passwd=_lines, group=_lines, user=st.text(alphabet="ab01:", min_size=1, max_size=6))
def test_any_files_and_user_resolve_or_refuse(
    tmp_path_factory: pytest.TempPathFactory, passwd: str, group: str, user: str
) -> None:
    root = make_root(tmp_path_factory.mktemp("root"), passwd, group)
    try:
        creds = resolve_user(user, root)
    except ExecStartError:
        return
    assert creds is not None
    assert creds.gid in creds.groups and 0 <= creds.uid <= 0xFFFFFFFE


@given(
    argv=st.lists(st.text(max_size=4), max_size=3),
    env=st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=3),
    cwd=st.one_of(st.none(), st.text(max_size=4)),
    user=st.one_of(st.none(), st.text(max_size=6)),
    rows=st.integers(-2, 70000),
    timeout=st.one_of(st.none(), st.floats(allow_nan=True)),
)
def test_specs_are_accepted_or_refused_with_a_reason(
    argv: list[str],
    env: dict[str, str],
    cwd: str | None,
    user: str | None,
    rows: int,
    timeout: float | None,
) -> None:
    try:
        spec = ExecSpec(argv, env, cwd, user, True, rows, 80, timeout)
    except ExecStartError as e:
        assert e.reason
        return
    assert spec.argv == tuple(argv) and spec.argv[0]
    assert all("\x00" not in a for a in spec.argv)
    assert spec.cwd is None or spec.cwd.startswith("/")
    assert 0 <= spec.rows <= 0xFFFF
    assert spec.timeout is None or spec.timeout > 0
