"""``vic config example agent``: a containerVM's ``/etc/vic/agent.toml`` (the tether,
usually PID 1), with open-vm-tools' ``vmware-rpctool`` for guestinfo."""

AGENT = """\
# /etc/vic/agent.toml: the in-guest tether (vic agent), in a vSphere containerVM.
[guestinfo]
backend = "rpctool"                     # open-vm-tools: vmware-rpctool info-get/info-set
tool = "vmware-rpctool"                 # a name on $PATH or an absolute path
poll-interval = 0.25                    # seconds between reads of guestinfo
# max-value = 65536
# max-total = 1048576

[console]                               # the VM's console channel to the relay on its host
transport = "vsock"                     # serial | vsock | hybrid | unix | tcp | none
cid = 2                                 # the host
port = 2377                             # the relay's [[vsock]] listener
# transport = "serial"                  # or an ESX network serial port:
# path = "/dev/ttyS1"
# baud = 115200

[session]                               # sealed session with the appliance (exec, attach)
enabled = true
transport = "console"                   # over [console]'s channel
# transports = ["vsock", "serial"]      # or several, preferred first, each in its table:
# [session.vsock]
# cid = 2
# port = 2377
# [session.serial]
# path = "/dev/ttyS1"
handshake-timeout = 10.0
keepalive = 10.0

[network]                               # publish the guest's addresses to guestinfo
publish = true
exclude = ["lo"]

[agent]
subreaper = true                        # reap orphans (as PID 1 it reaps everything)
exit-when-done = false
log-level = "info"
"""
