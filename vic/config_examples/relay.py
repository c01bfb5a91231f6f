"""``vic config example relay`` (a host that runs containerVMs) and
``relay-appliance-host`` (a host that can run the appliance VM)."""

_COMMON = """\
[limits]
max-streams = 10000
max-streams-per-vm = 64
accept-rate = 500.0                     # new streams per second (token bucket)
accept-burst = 1000

[timeouts]                              # seconds; idle and stall 0 = off
connect = 10.0
idle = 0.0
stall = 60.0
drain = 30.0                            # SIGTERM: live streams get this long
retry-min = 0.2
retry-max = 10.0

[metrics]                               # Prometheus: http://127.0.0.1:9108/metrics
enabled = true
host = "127.0.0.1"
port = 9108
"""

RELAY_VM_HOST = (
    """\
# /etc/vic/relay.toml on a host that runs containerVMs (vic relay). `vic relay --check`
# validates it; SIGHUP (systemctl reload vic-relay) applies it, unchanged listeners
# keep their streams. Certificates: vic certs issue --dir /etc/vic --host esx-01.
host = "esx-01"                         # origin host in every stream header ("" = hostname)
log-level = "info"

[egress.default]                        # resumable streams over the peer link
kind = "peer"
route = "appliance"

[peer]
admin-socket = "/run/vic/relay.sock"    # vic relay route show|set

[peer.tls]                              # this host's identity, vic://host/esx-01
cert = "/etc/vic/host-esx-01.crt"
key = "/etc/vic/host-esx-01.key"
ca = "/etc/vic/ca.crt"

[peer.routes.appliance]                 # the relay on the appliance's host
address = "tcp:10.0.0.12:7443"
identity = "vic://host/esx-02"

# [peer.follow.appliance]               # follow the appliance VM's host in vCenter
# vcenter = "vc.example.com"
# user = "relay@vsphere.local"
# password-file = "/etc/vic/vc.password"
# vm = "vch-appliance"
# [peer.follow.appliance.hosts]
# "esx-02.example.com" = "tcp:10.0.0.12:7443"
# [peer.follow.appliance.identities]
# "esx-02.example.com" = "vic://host/esx-02"

[[vsock]]                               # guests' agents connect to the host (CID 2) here
name = "guests"
port = 2377
cids = { "3" = "vm5" }                  # CID -> VM name
allow-unknown = false

[[vspc]]                                # ESX network serial ports: telnet://<this host>:13370
name = "vspc"
host = "0.0.0.0"
port = 13370

# [[serial]]                            # a local serial line
# name = "vm4-tty"
# vm = "vm4"
# device = "/dev/ttyS1"
# baudrate = 115200

"""
    + _COMMON
)

RELAY_APPLIANCE_HOST = (
    """\
# /etc/vic/relay.toml on a host that can run the appliance VM (vic relay): accepts the
# peer links of the other hosts' relays and forwards each, TLS ended here, to the
# appliance's link endpoint over vsock. Certificates: vic certs issue --host esx-02.
host = "esx-02"
log-level = "info"

[egress.default]                        # this host's own streams: the appliance endpoint
kind = "vsock"
cid = 3                                 # the appliance VM
port = 13371

[peer]
admin-socket = "/run/vic/relay.sock"    # vic relay route show|set

[peer.tls]                              # this host's identity, vic://host/esx-02
cert = "/etc/vic/host-esx-02.crt"
key = "/etc/vic/host-esx-02.key"
ca = "/etc/vic/ca.crt"

[[peer.listen]]
address = "tcp:0.0.0.0:7443"
allowed-peers = ["vic://host/esx-01", "vic://host/esx-03"]
forward = "vsock:3:7444"                # the appliance's [[endpoint.link]] (forwarded = true)
# egress = "default"                    # instead of forward: end sessions here, go on by egress

[[vsock]]                               # containerVMs on this host too
name = "guests"
port = 2377
cids = { "4" = "vm6" }

"""
    + _COMMON
)
