"""Hypervisor-neutral VM specs and their translation to libvirt domain XML. Pure code, no I/O."""
