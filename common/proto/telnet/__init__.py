"""Telnet (RFC 854/855/1143) and VMware's extension (option 232), sans-IO."""
