"""Telnet option negotiation as the simulated ESX does it: RFC 1143, simplified.

No queue bits: the simulator never changes its mind. Each option has our side
(``us``) and his side (``him``), each ``no``/``yes``/``wantyes``/``wantno``.
Answers that a correct peer would not send are reported through ``violate``;
``refused`` is told when the vSPC turns off (or refuses) one of our options.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from vic.lab import telnet_wire as tw


@dataclass
class OptState:
    us: str = "no"  # our side: no / yes / wantyes / wantno
    him: str = "no"


class OptionTable:
    """Every option's state, and the answer to each DO/DONT/WILL/WONT."""

    def __init__(
        self,
        local_ok: set[int],
        remote_ok: set[int],
        violate: Callable[[str], None],
        refused: Callable[[int], None],
    ) -> None:
        self.local_ok = local_ok  # options we agree to enable on our side
        self.remote_ok = remote_ok  # options we let the vSPC enable on its side
        self._violate = violate
        self._refused = refused
        self._opts: dict[int, OptState] = {}

    def state(self, opt: int) -> OptState:
        st = self._opts.get(opt)
        if st is None:
            st = self._opts[opt] = OptState()
        return st

    def enabled_any(self, opt: int) -> bool:
        st = self._opts.get(opt)
        return st is not None and (st.us == "yes" or st.him == "yes")

    def ask_local(self, opt: int) -> bytes:
        st = self.state(opt)
        if st.us == "no":
            st.us = "wantyes"
            return tw.negotiation(tw.WILL, opt)
        return b""

    def ask_remote(self, opt: int) -> bytes:
        st = self.state(opt)
        if st.him == "no":
            st.him = "wantyes"
            return tw.negotiation(tw.DO, opt)
        return b""

    def negotiate(self, verb: int, opt: int) -> bytes:
        """The wire answer to ``IAC verb opt`` (b"" for none)."""
        st = self.state(opt)
        if verb == tw.DO:
            return self._on_do(st, opt)
        if verb == tw.DONT:
            return self._on_dont(st, opt)
        if verb == tw.WILL:
            return self._on_will(st, opt)
        if verb == tw.WONT:
            return self._on_wont(st, opt)
        return b""

    def _on_do(self, st: OptState, opt: int) -> bytes:
        if st.us == "no":
            if opt in self.local_ok:
                st.us = "yes"
                return tw.negotiation(tw.WILL, opt)
            return tw.negotiation(tw.WONT, opt)
        if st.us == "wantyes":
            st.us = "yes"
        elif st.us == "wantno":
            self._violate(f"DO {opt} answering our WONT")
            st.us = "no"
        else:
            self._violate(f"DO {opt} re-acknowledged (already enabled)")
        return b""

    def _on_dont(self, st: OptState, opt: int) -> bytes:
        if st.us == "yes":
            st.us = "no"
            self._refused(opt)
            return tw.negotiation(tw.WONT, opt)
        if st.us in ("wantyes", "wantno"):
            st.us = "no"  # refused (or acknowledged our WONT)
            self._refused(opt)
        # DONT while already off: allowed, no reply (RFC 1143)
        return b""

    def _on_will(self, st: OptState, opt: int) -> bytes:
        if st.him == "no":
            if opt in self.remote_ok:
                st.him = "yes"
                return tw.negotiation(tw.DO, opt)
            return tw.negotiation(tw.DONT, opt)
        if st.him == "wantyes":
            st.him = "yes"
        elif st.him == "wantno":
            self._violate(f"WILL {opt} answering our DONT")
            st.him = "no"
        else:
            self._violate(f"WILL {opt} re-acknowledged (already enabled)")
        return b""

    def _on_wont(self, st: OptState, opt: int) -> bytes:
        if st.him == "yes":
            st.him = "no"
            return tw.negotiation(tw.DONT, opt)
        if st.him in ("wantyes", "wantno"):
            st.him = "no"
        return b""
