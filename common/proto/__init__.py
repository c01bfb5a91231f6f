"""Sans-IO protocols: no trio, no sockets, no clock, no os."""
