"""Sans-IO cores of the guest agent: no trio, no sockets, no clock."""
