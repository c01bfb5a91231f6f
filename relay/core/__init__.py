"""Sans-IO cores of the relay: no trio, no sockets, no clock."""
