"""What a deploy is asked (the API's ``ssh`` and ``options`` bodies) and how it fails (a step and a reason)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from corral.engine.db.models import HostState
from corral.engine.errors import ApiError

AGENT_PORT = 8470


class SshIn(BaseModel):
    """How to reach the host. The password and key are used for this deploy only and never stored: the deploy
    authorizes the engine's own SSH key on the host for later operations."""

    model_config = ConfigDict(extra="forbid")
    address: str = Field(pattern=r"^[A-Za-z0-9._:\[\]-]{1,255}$", description="host name or IP address")
    port: int = Field(22, ge=1, le=65535)
    user: str = Field("root", pattern=r"^[a-z_][a-z0-9_.-]{0,31}$")
    password: str | None = Field(None, max_length=1024)
    private_key: str | None = Field(None, max_length=65536, description="private key text (OpenSSH or PEM)")
    passphrase: str | None = Field(None, max_length=1024)
    host_key_fingerprint: str | None = Field(None, description="expected SHA256:... (else pinned on first use)")
    connect_timeout: float = Field(15.0, gt=0, le=300)


class DeployOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    allow_tcg: bool = Field(False, description="accept a host without KVM: QEMU under TCG (slow; labs, tests)")
    libvirt_uri: str | None = Field(None, description="default: xen:///system or qemu:///system")
    agent_port: int = Field(AGENT_PORT, ge=1, le=65535, description="port the agent listens on")
    agent_url: str | None = Field(None, pattern=r"^https://[^\s/]+$",
                                  description="how the engine reaches the agent (NAT, tunnels); "
                                              "default https://ADDRESS:AGENT_PORT")
    install_root: str = Field("/", pattern=r"^/[A-Za-z0-9._/-]*$",
                              description="prefix for every file the deploy writes (tests, chroots)")
    install_packages: bool = True
    cert_days: int = Field(365, ge=1, le=3650)
    health_timeout: float = Field(120.0, gt=0, le=3600)
    command_timeout: float = Field(900.0, gt=0, le=7200)


class DeployFailed(ApiError):
    status = 502
    code = "deploy_failed"

    def __init__(self, step: str, message: str, *, code: str | None = None,
                 state: HostState = HostState.NON_OPERATIONAL, items: list[dict[str, Any]] | None = None) -> None:
        super().__init__(f"deploy step {step!r} failed: {message}", code=code, step=step,
                         failed_items=items or [])
        self.step = step
        self.reason = message
        self.host_state = state
