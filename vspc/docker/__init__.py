"""The Docker Engine API endpoint on the appliance (issue 14): ``vspc.docker.server``."""
