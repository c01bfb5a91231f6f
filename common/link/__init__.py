"""The peer link over trio: links, resumable streams, routes, listeners, peer TLS."""
