"""The local lab: simulated ESX hosts, VMs, relays and the appliance in one command."""
