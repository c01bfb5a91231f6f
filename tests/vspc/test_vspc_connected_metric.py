"""vspc_connected_vms counts every live port: ESX Telnet ports and raw streams
relayed through the appliance endpoint."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import trio

from common.proto.link.header import OriginHeader, encode_header
from tests.support.waiting import wait_until
from vic.lab.esx_sim import EsxConnection, SimVM
from vspc.config import EndpointConfig
from vspc.endpoint import Endpoint
from vspc.service import VspcService

from .conftest import make_config, metric


async def test_connected_vms_counts_esx_and_relayed_streams(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    config = replace(make_config(tmp_path), endpoint=EndpointConfig(unix=tmp_path / "ep.sock"))
    service: VspcService = await nursery.start(VspcService(config).run)
    await nursery.start(Endpoint(service).run)
    vm = SimVM.random(random.Random(40))
    with trio.fail_after(10):
        esx = await EsxConnection.open(nursery, "127.0.0.1", service.esx_port or 0, vm=vm)
        await wait_until(lambda: metric(service, "vspc_connected_vms") == 1)
        raw = await trio.open_unix_socket(str(tmp_path / "ep.sock"))
        header = OriginHeader(host="esx-a", vm="vm-raw", kind="tcp", label="com1")
        await raw.send_all(encode_header(header) + b"hello")
        await wait_until(lambda: metric(service, "vspc_connected_vms") == 2)
        await raw.aclose()
        await wait_until(lambda: metric(service, "vspc_connected_vms") == 1)
        await esx.aclose()
        await wait_until(lambda: metric(service, "vspc_connected_vms") == 0)
