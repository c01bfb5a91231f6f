"""A stand-in for open-vm-tools' ``vmware-rpctool`` (the guest backdoor is the one thing
this machine lacks). It keeps the VM's extraConfig in the file store's JSON format,
so the appliance-side FileStoreWatcher sees what the guest set, as vSphere would.

Environment: FAKE_RPCTOOL_STORE (JSON path), FAKE_RPCTOOL_FAIL_GET (keys containing
this substring fail to read, exit 2), FAKE_RPCTOOL_LOG (append each command).
"""

from __future__ import annotations

import fcntl
import json
import os
import sys


def main() -> int:
    store = os.environ["FAKE_RPCTOOL_STORE"]
    if len(sys.argv) != 2:
        print("usage: vmware-rpctool <command>", file=sys.stderr)
        return 64
    cmd = sys.argv[1]
    if log := os.environ.get("FAKE_RPCTOOL_LOG"):
        with open(log, "a") as f:
            f.write(cmd.split(" ", 2)[0] + " " + cmd.split(" ", 2)[1] + "\n")
    verb, _, rest = cmd.partition(" ")
    lock = os.open(store + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        with open(store) as f:
            data = json.load(f)
    except FileNotFoundError:
        data = {"version": 0, "power": "poweredOn", "extraConfig": {}}
    values = data["extraConfig"]
    if verb == "info-get":
        key = rest
        fail = os.environ.get("FAKE_RPCTOOL_FAIL_GET")
        if fail and fail in key:
            print("Permission denied", file=sys.stderr)
            return 2
        if key not in values:
            print("No value found", file=sys.stderr)
            return 1
        sys.stdout.write(values[key] + "\n")
        return 0
    if verb == "info-set":
        key, _, value = rest.partition(" ")
        if not key.startswith("guestinfo."):
            print("Invalid key", file=sys.stderr)
            return 1
        if value == "":
            values.pop(key, None)
        else:
            values[key] = value
        data["version"] += 1
        tmp = f"{store}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(data, f)
        os.replace(tmp, store)
        return 0
    print(f"Unknown command {verb}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
