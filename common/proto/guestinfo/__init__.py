"""VIC's guestinfo key scheme, sans-IO: keys, value encoding, session config, results.

Modules: ``keys`` (key names), ``codec`` (value encoding), ``limits`` (size
limits), ``session`` (session config and signal requests), ``results`` (what
the guest publishes and the appliance's view of it), ``errors``.

Layout (compatible with VIC's extraconfig encoding):

* every key starts with ``guestinfo.vice.``;
* after the prefix, ``/``-separated paths are *config*, written by the appliance
  and read-only for the guest (``guestinfo.vice./sessions|<id>/cmd/Path``);
  ``.``-separated paths are *results*, written by the guest
  (``guestinfo.vice..sessions|<id>.started``). The guest never writes a key
  containing ``/``;
* a map is its key list at the bare key (``guestinfo.vice./sessions`` =
  ``"a|b"``) plus one subtree per entry (``sessions|a``);
* an array ``X`` stores its last index at ``X`` (``-1`` when empty) and its
  items at ``X~`` joined by ``|``; an item's ``%`` and ``|`` are written
  ``%25`` and ``%7C``;
* an empty string is stored as ``<nil>`` (vSphere deletes a key set to ``""``);
  an absent or empty value means "not set";
* IP addresses are base64 of the address bytes (4 or 16).

Limits in the field: about 64 KiB per value and 1 MiB of guestinfo per VM.
``SizeLedger`` checks a write against both *before* it is made.

Control from the appliance to the guest (our extension, config keys):
``/sessions|<id>/goahead`` = ``true`` releases a session that has
``/sessions|<id>/runblock`` = ``true``; ``/sessions|<id>/signal`` =
``"<seq> <SIGNAME or number>"`` asks for a signal, acknowledged by the guest at
``..sessions|<id>.signal.ack`` = ``<seq>``.
"""

from __future__ import annotations

from common.proto.guestinfo.codec import (
    NIL,
    TRUE,
    IPAddress,
    decode_array,
    decode_bool,
    decode_ip,
    decode_ip_list,
    decode_map_keys,
    decode_str,
    encode_array,
    encode_bool,
    encode_ip,
    encode_ip_list,
    encode_map_keys,
    encode_str,
    is_set,
    parse_seq,
)
from common.proto.guestinfo.errors import (
    GuestinfoError,
    GuestinfoLimitError,
    ReadOnlyKeyError,
    SessionConfigError,
)
from common.proto.guestinfo.keys import (
    ERRORS,
    NETWORKS,
    PREFIX,
    SESSIONS,
    assigned_ip_key,
    assigned_ips_key,
    check_name,
    common_id_key,
    config_key,
    entry,
    error_key,
    errors_index_key,
    goahead_key,
    guest_key,
    guest_networks_key,
    is_guest_writable,
    is_vice_key,
    require_guest_writable,
    session_base,
    sessions_key,
    signal_ack_key,
    signal_key,
    signaled_key,
    started_key,
    starttime_key,
    status_key,
    stoptime_key,
)
from common.proto.guestinfo.limits import (
    MAX_TOTAL_BYTES,
    MAX_VALUE_BYTES,
    SizeLedger,
    check_value,
    entry_size,
)
from common.proto.guestinfo.results import (
    MAX_ERROR_TEXT,
    ExitInfo,
    SessionView,
    clip_error,
    encode_exit,
    encode_networks,
    encode_started,
    view_errors,
    view_networks,
    view_session,
)
from common.proto.guestinfo.session import (
    SessionConfig,
    decode_session,
    decode_signal_request,
    encode_session,
    encode_sessions,
    encode_signal_request,
    session_keys,
)

__all__ = [
    "ERRORS",
    "MAX_ERROR_TEXT",
    "MAX_TOTAL_BYTES",
    "MAX_VALUE_BYTES",
    "NETWORKS",
    "NIL",
    "PREFIX",
    "SESSIONS",
    "TRUE",
    "ExitInfo",
    "GuestinfoError",
    "GuestinfoLimitError",
    "IPAddress",
    "ReadOnlyKeyError",
    "SessionConfig",
    "SessionConfigError",
    "SessionView",
    "SizeLedger",
    "assigned_ip_key",
    "assigned_ips_key",
    "check_name",
    "check_value",
    "clip_error",
    "common_id_key",
    "config_key",
    "decode_array",
    "decode_bool",
    "decode_ip",
    "decode_ip_list",
    "decode_map_keys",
    "decode_session",
    "decode_signal_request",
    "decode_str",
    "encode_array",
    "encode_bool",
    "encode_exit",
    "encode_ip",
    "encode_ip_list",
    "encode_map_keys",
    "encode_networks",
    "encode_session",
    "encode_sessions",
    "encode_signal_request",
    "encode_started",
    "encode_str",
    "entry",
    "entry_size",
    "error_key",
    "errors_index_key",
    "goahead_key",
    "guest_key",
    "guest_networks_key",
    "is_guest_writable",
    "is_set",
    "is_vice_key",
    "parse_seq",
    "require_guest_writable",
    "session_base",
    "session_keys",
    "sessions_key",
    "signal_ack_key",
    "signal_key",
    "signaled_key",
    "started_key",
    "starttime_key",
    "status_key",
    "stoptime_key",
    "view_errors",
    "view_networks",
    "view_session",
]
