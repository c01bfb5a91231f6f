"""Sessions (issue 13): channels carried exactly once over sealed connections (sans-IO).

``messages`` is the codec, ``replay`` one channel-stream's sender and receiver,
``channels`` the channel states, transition table and events, ``session`` the
``Session`` that ties them to a succession of connections.
"""
