"""The peer link's wire: frames, the stream mux, resume, origin header, forwarded preamble."""
