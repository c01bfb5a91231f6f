"""The identity grammar: every name either validates to a key whose files stay in
the log directory, or is refused; only real UUIDs are canonicalised."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.proto.identity import name_from
from common.proto.link.header import HeaderError, OriginHeader, check_identity
from vspc.console.logfile import file_stem, rotated
from vspc.core.identity import IdentityError, PortKey, canonical_uuid, vm_key

LOG_DIR = Path("/var/log/vic/consoles")
ESX_UUID = "42 3f 5a 1b 2c 3d 4e 5f-60 71 82 93 a4 b5 c6 d7"
CANON = "423f5a1b2c3d4e5f60718293a4b5c6d7"

# Anything at all, plus strings built from the characters that matter here.
_tricky = st.text(alphabet=st.sampled_from(list("./\\_- aA0f\x00\n\u2028%~:")), max_size=80)
any_text = st.one_of(st.text(max_size=300), _tricky)


def _inside(stem: str) -> bool:
    for path in (LOG_DIR / f"{stem}.log", rotated(LOG_DIR / f"{stem}.events.jsonl", 3)):
        full = os.path.normpath(path)
        if os.path.dirname(full) != str(LOG_DIR):
            return False
    return True


@given(any_text, any_text)
@settings(max_examples=400)
def test_any_name_is_refused_or_its_file_stays_in_the_log_dir(vm: str, label: str) -> None:
    try:
        key = PortKey.from_raw(vm, label)
    except IdentityError:
        return
    stem = file_stem(key)
    assert _inside(stem), stem
    assert "/" not in stem and "\x00" not in stem and stem not in (".", "..")
    assert len(f"{stem}.events.jsonl.99".encode()) < 255  # never ENAMETOOLONG


@given(any_text, any_text)
def test_distinct_keys_never_share_a_file(a: str, b: str) -> None:
    try:
        ka, kb = PortKey.from_raw(a, "x_y"), PortKey.from_raw(b, "y")
        kc = PortKey.from_raw(a, "y")
    except IdentityError:
        return
    assert file_stem(ka) != file_stem(kb)
    assert (file_stem(kc) == file_stem(kb)) == (kc == kb)


@given(any_text)
def test_a_name_is_kept_exactly_or_refused(raw: str) -> None:
    try:
        key = vm_key(raw)
    except IdentityError:
        return
    if len(key) == 32 and all(c in "0123456789abcdef" for c in key) and key != raw:
        assert raw.replace(" ", "").replace("-", "").lower() == key  # a UUID, canonicalised
    else:
        assert key == raw


@pytest.mark.parametrize(
    "a,b", [("ab-cd", "abcd"), ("Web Server", "web server"), ("vm 1", "vm1"), ("ABCD", "abcd")]
)
def test_different_names_are_different_vms(a: str, b: str) -> None:
    assert vm_key(a) == a and vm_key(b) == b and PortKey.from_raw(a) != PortKey.from_raw(b)


@pytest.mark.parametrize("raw", [ESX_UUID, CANON.upper(), "423f5a1b-2c3d-4e5f-6071-8293a4b5c6d7"])
def test_every_form_of_one_uuid_is_one_vm(raw: str) -> None:
    assert canonical_uuid(raw) == vm_key(raw) == CANON


@pytest.mark.parametrize(
    "raw",
    [
        "../../../somewhere/x",
        "..",
        ".",
        "a/b",
        "-rf",
        ".hidden",
        "",
        "x" * 65,
        "5" * 60_000,
        "tab\there",
        "new\nline",
        "nul\x00",
        "caf\u00e9",
        "sep\u2028",
    ],
)
def test_refused_names(raw: str) -> None:
    with pytest.raises(IdentityError):
        vm_key(raw)
    with pytest.raises(ValueError):
        canonical_uuid(raw)


@pytest.mark.parametrize("label", ["", ".x", "a/b", "a b", "x" * 33, "..", "com1\n"])
def test_refused_labels(label: str) -> None:
    with pytest.raises(IdentityError):
        PortKey(CANON, label)


@pytest.mark.parametrize(
    "field,value",
    [
        ("host", "../h"),
        ("host", "esx a"),
        ("vm", "../../x"),
        ("label", "../l"),
        ("stream_id", "s/1"),
        ("vm", "x" * 200),
    ],
)
def test_header_names_are_checked(field: str, value: str) -> None:
    good = OriginHeader("esx-a", "vm-1", "tcp", "com1", "s-1")
    assert check_identity(good) is good
    with pytest.raises(HeaderError, match="origin header: invalid"):
        check_identity(OriginHeader(**{**good.__dict__, field: value}))


@given(st.text(max_size=200))
def test_name_from_always_makes_a_valid_name(text: str) -> None:
    assert vm_key(name_from(f"esx-{text}")).startswith("esx-")
    assert vm_key(name_from(text))
