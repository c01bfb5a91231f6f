"""The appliance side: Telnet and the VMware extension, the vSPC, the endpoint, consoles."""
