"""The console attach protocol and the replay ring, sans-IO."""
