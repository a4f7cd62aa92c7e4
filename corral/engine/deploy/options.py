"""What a deploy is asked (the API's ``ssh`` and ``options`` bodies) and how it fails (a step and a reason)."""

from __future__ import annotations

from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from corral.domain.spec import FieldError
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
    host_key_fingerprint: str | None = Field(None, pattern=r"^(SHA256:)?[A-Za-z0-9+/]{43}=?$",
                                             description="expected SHA256:... (else pinned on first use)")
    trust_on_first_use: bool = Field(False, description="with a password and no host_key_fingerprint: accept the "
                                     "key the host shows and pin it (a machine in the middle would get the password)")
    connect_timeout: float = Field(15.0, gt=0, le=300)

    @model_validator(mode="after")
    def _password_needs_the_host_key(self) -> Self:
        """A password goes to whoever answers at the address: to a machine in the middle as well, on first use,
        when the host key is not known. A private key does not (its signature is bound to the session, so it
        cannot be replayed to the real host), hence pinning on first use stays the default for keys only."""
        if self.password is not None and self.host_key_fingerprint is None and not self.trust_on_first_use:
            raise FieldError("host_key_fingerprint", "an SSH password is sent only to a host whose key is known: "
                             "give host_key_fingerprint (SHA256:..., e.g. 'ssh-keygen -lf "
                             "/etc/ssh/ssh_host_ed25519_key.pub' on the host) or, knowingly, trust_on_first_use: true")
        return self


class DeployOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    allow_tcg: bool = Field(False, description="accept a host without KVM: QEMU under TCG (slow; labs, tests)")
    libvirt_uri: str | None = Field(None, description="default: xen:///system or qemu:///system")
    agent_port: int = Field(AGENT_PORT, ge=1, le=65535, description="port the agent listens on")
    agent_url: str | None = Field(None, pattern=r"^https://([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?$",
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
