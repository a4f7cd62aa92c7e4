"""The engine: inventory (database), REST API, scheduler and host monitoring.

The engine never speaks libvirt; every host operation goes through the host's agent (``agent_client``).
"""
