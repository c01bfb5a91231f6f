"""Sans-IO cores of the appliance side: no trio, no sockets, no clock."""
