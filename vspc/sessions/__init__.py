"""Sessions with tethered VMs on the appliance (issue 13).

``api`` is the one async API (exec, attach, logs, status) under the CLI and the
Docker endpoint; ``service`` keeps one ``SessionEndpoint`` per VM, its secret in
guestinfo, and takes the relayed streams labelled ``session``; ``channel`` routes
a session's events to its channels and the main process's output to the
container logs; ``requests`` serves EXEC and LOGS on the console endpoint.
"""
