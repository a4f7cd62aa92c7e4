"""The host agent: the only part of Corral that talks to libvirt."""
