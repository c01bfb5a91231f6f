"""common.proto.address: the one address grammar of links, listeners and routes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.link.route import RouteError
from common.proto.address import (
    AddressError,
    is_loopback_host,
    is_trusted_address,
    parse_address,
    parse_forward,
)


@pytest.mark.parametrize(
    ("address", "parsed"),
    [
        ("tcp:127.0.0.1:7443", ("tcp", ("127.0.0.1", 7443))),
        ("tcp:[::1]:7443", ("tcp", ("::1", 7443))),
        ("tcp:esx-02.example.com:0", ("tcp", ("esx-02.example.com", 0))),
        ("unix:/run/vic/link.sock", ("unix", "/run/vic/link.sock")),
        ("vsock:2:7443", ("vsock", (2, 7443))),
    ],
)
def test_each_kind_parses(address: str, parsed: tuple[str, object]) -> None:
    assert parse_address(address) == parsed
    assert parse_forward(address) == parsed


@pytest.mark.parametrize(
    "address",
    ["tcp:host", "tcp::7443", "tcp:h:65536", "tcp:h:-1", "unix:", "vsock:x:1", "udp:h:1", ""],
)
def test_outside_the_grammar_is_refused_naming_the_address(address: str) -> None:
    with pytest.raises(AddressError) as e:
        parse_address(address)
    assert repr(address) in str(e.value)
    assert issubclass(AddressError, ValueError) and RouteError is AddressError


def test_hvsock_only_where_links_are_forwarded() -> None:
    assert parse_forward("hvsock:/srv/vm.vsock:7444") == ("hvsock", ("/srv/vm.vsock", 7444))
    for bad in ("hvsock:/srv/vm.vsock", "hvsock::7444"):
        with pytest.raises(AddressError):
            parse_forward(bad)
    with pytest.raises(AddressError):
        parse_address("hvsock:/srv/vm.vsock:7444")


def test_trusted_transports_need_no_tls() -> None:
    assert is_trusted_address("unix:/run/x") and is_trusted_address("vsock:3:1")
    assert is_trusted_address("tcp:127.0.0.2:1") and is_trusted_address("tcp:[::1]:1")
    assert not is_trusted_address("tcp:10.0.0.12:7443")
    assert not is_trusted_address("tcp:localhost.example.com:1")
    assert is_loopback_host("LOCALHOST") and not is_loopback_host("10.1.1.1")


@given(st.text(max_size=40))
def test_any_text_parses_or_raises_address_error(text: str) -> None:
    try:
        kind, _ = parse_address(text)
    except AddressError:
        return
    assert kind in {"tcp", "unix", "vsock"}
