"""Host network setup by the agent (issue 18): config bodies, netlink apply, safe changes, routes."""
