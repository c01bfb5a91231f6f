"""How the simulated ESX behaves (:class:`EsxBehaviour`) and what it counts (:class:`EsxStats`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from vic.lab import telnet_wire as tw

#: What ESX lists in KNOWN-SUBOPTIONS-1 by default: every command of the extension.
DEFAULT_KNOWN: tuple[int, ...] = tuple(sorted(tw.EXT_NAMES))

#: ESX gives up on a vMotion whose BEGIN is not answered within 5 s.
ESX_BEGIN_TIMEOUT = 5.0


@dataclass
class EsxBehaviour:
    """Knobs for how the simulated ESX behaves (defaults: like ESX)."""

    label: str | None = None  # serial port label, sent as ?port=<label> in DO-PROXY's URI
    service_uri: str = "vic-console"  # the VM serial port's "Port URI"
    direction: str = "S"  # DO-PROXY direction: S(erver) or C(lient)
    do_proxy: bool = True  # a vMotion destination may send no DO-PROXY at all
    one_byte_segments: bool = False  # one send per wire byte
    initiate: bool = True  # offer WILL/DO BINARY, SGA, WILL 232 right away
    offer_auth: bool = True  # offer WILL AUTHENTICATION (vSPC may refuse)
    offer_comport: bool = True  # offer WILL COM-PORT (vSPC may refuse)
    # answer DO TIMING-MARK with WILL TIMING-MARK, as a Telnet client does (RFC 860);
    # False: a hung host whose TCP is still up (never answers a liveness probe)
    answer_timing_mark: bool = True
    known: tuple[int, ...] = DEFAULT_KNOWN  # KNOWN-SUBOPTIONS-1 list
    begin_timeout: float = ESX_BEGIN_TIMEOUT
    max_sb: int = 4096  # longest subnegotiation accepted from the vSPC
    wait_ready: bool = True  # open() waits for the 232 handshake to finish
    wait_identity: bool = True  # ...including the vSPC asking GET-VM-VC-UUID
    ready_timeout: float = 10.0
    recv_size: int = 65536
    # plain TCP: read with kernel receive timestamps (vic.lab.rxstamp) and time
    # each BEGIN's answer also by when it reached this host (begin_kernel_latencies)
    kernel_timestamps: bool = False


@dataclass
class EsxStats:
    bytes_sent: int = 0  # console bytes, before escaping
    bytes_received: int = 0  # console bytes, after unescaping
    stale_replies: int = 0  # late GOAHEAD/NOTNOW/PEER-OK for a vMotion already given up
    begin_latencies: list[float] = field(default_factory=list)
    # BEGIN sent -> its GOAHEAD/NOTNOW read by the reader task (before the waiting
    # task is woken: without this simulator's own scheduling of that task)
    begin_receipt_latencies: list[float] = field(default_factory=list)
    # BEGIN sent -> its answer in this host's kernel (EsxBehaviour.kernel_timestamps):
    # without this process's own wake-up and event loop either
    begin_kernel_latencies: list[float] = field(default_factory=list)


def known_without(*cmds: int) -> tuple[int, ...]:
    """The default KNOWN-SUBOPTIONS-1 list minus some commands."""
    drop = set(cmds)
    return tuple(c for c in DEFAULT_KNOWN if c not in drop)
