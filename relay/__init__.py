"""The relay daemon that runs on every ESX host: ingress, egress, peer links, pumps."""
