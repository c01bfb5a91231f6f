"""Sessions (issue 13): exec, attach and exit status between appliance and tether, sans-IO.

Two layers live here. The sealed transport (``secure``, ``handshake``, ``records``,
``sync``, ``errors``) turns one byte stream into an authenticated connection that
carries whole plaintext records. The session layer above it (``messages``: the codec;
``replay``: one channel-stream's replay buffer and receive offset; ``channels``: channel
states, transition table and events; ``session``: the ``Session`` that outlives
connections) carries channels exactly once across any number of those connections.
"""
