"""``vic config example vspc``: the appliance's ``/etc/vic/vspc.toml``, every table
shown, optional keys commented out at their defaults."""

VSPC = """\
# /etc/vic/vspc.toml: the appliance (vic vspc). `vic vspc --check` validates it;
# SIGHUP (systemctl reload vic-vspc) applies it without dropping connections.
# Paths match the systemd unit: RuntimeDirectory=vic (/run/vic),
# LogsDirectory=vic (/var/log/vic), StateDirectory=vic (/var/lib/vic),
# ConfigurationDirectory=vic (/etc/vic). The daemon rotates its own files.
log-level = "info"                      # debug | info | warning | error

[listen]                                # ESX network serial ports: telnet://<appliance>:13370
host = "0.0.0.0"
port = 13370
allowed-sources = ["10.20.0.0/24"]      # the ESX hosts' management networks (off loopback)
# identify-timeout = 10.0               # seconds to name the VM (VM-VC-UUID)
# idle-probe = 60.0                     # seconds of silence before IAC DO TIMING-MARK
# probe-timeout = 5.0
# tls = { cert = "/etc/vic/vspc.crt", key = "/etc/vic/vspc.key" }

[endpoint]                              # relays deliver streams here (origin header first)
host = "0.0.0.0"
port = 13371
unix = "/run/vic/endpoint.sock"
# header-timeout = 10.0
# resend-bytes = 65536                  # per stream, kept to resend after a relay restart
# insecure = false                      # true: plaintext off loopback (do not)

[endpoint.tls]                          # off loopback, relays prove their host (mTLS)
cert = "/etc/vic/appliance-vch.crt"     # vic certs issue --dir /etc/vic --appliance vch
key = "/etc/vic/appliance-vch.key"
client-ca = "/etc/vic/ca.crt"

[[endpoint.link]]                       # peer links forwarded by the relay on this VM's host
address = "vsock:4294967295:7444"       # any CID: only the host reaches it
tls = false
forwarded = true

# [endpoint.link-tls]                   # for TLS link listeners (tls = true)
# cert = "/etc/vic/appliance-vch.crt"
# key = "/etc/vic/appliance-vch.key"
# ca = "/etc/vic/ca.crt"

# [endpoint.vcenter]                    # a relay speaks only for VMs vCenter places on its host
# url = "https://vc.example.com/sdk"
# user = "vspc@vsphere.local"
# password-file = "/etc/vic/vc.password"
# refresh = 30.0

[console]                               # vic console list|attach|replay
socket = "/run/vic/console.sock"
socket-mode = 0o600
log-dir = "/var/log/vic/consoles"       # <uuid>_<label>.log, rotated by the daemon
log-max-bytes = 8388608
log-keep = 5
log-hold-bytes = 4194304                # held while the log disk is full; VMs wait beyond
retention = 86400.0                     # seconds a departed VM's console stays in memory
max-departed = 1000
# ring-bytes = 65536
# client-queue-bytes = 262144
# max-clients = 64

# [console.tcp]                         # operators over TCP, mutual TLS
# host = "0.0.0.0"
# port = 7701
# cert = "/etc/vic/appliance-vch.crt"
# key = "/etc/vic/appliance-vch.key"
# client-ca = "/etc/vic/ca.crt"

[sessions]                              # sealed sessions with tethered VMs (exec, attach, logs)
enabled = true
logs-dir = "/var/log/vic/containers"    # container logs per VM, rotated by the daemon
log-max-bytes = 10485760
log-keep = 4
replay-limit = 1048576
guestinfo = "file"                      # "vsphere": each VM's guestinfo via [sessions.vsphere]
guestinfo-dir = "/var/lib/vic/guestinfo"
# max-vms = 4096

# [sessions.vsphere]                    # with guestinfo = "vsphere" (instead of guestinfo-dir)
# url = "https://vc.example.com/sdk"
# user = "vspc@vsphere.local"
# password-file = "/etc/vic/vc.password"

[docker]                                # Docker Engine API (DOCKER_HOST=unix:///run/vic/docker.sock)
enabled = false
socket = "/run/vic/docker.sock"
socket-mode = 0o660
# socket-group = "docker"

[vmotion]
timeout = 30.0
max-concurrent = 64
max-per-source = 8                      # pending vMotions begun from one ESX host's address

[metrics]                               # Prometheus: http://127.0.0.1:9470/metrics
enabled = true
host = "127.0.0.1"
port = 9470
"""
