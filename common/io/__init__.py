"""The trio/OS toolkit: listeners, TLS contexts, the fast socket path, splice, vSphere."""
