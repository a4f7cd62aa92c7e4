"""Deploy a host over SSH: detect the hypervisor, check what it needs, install the agent, trust it over mTLS.

One module per job: ``options`` (what the API takes, how a deploy fails), ``ssh`` (connection, pinned host key,
commands, files), ``probe`` (reading the host; the check items are the flavor's host checks of
``corral.domain.flavors.hostcheck``, the ones the agent runs too), ``packages`` (what the package manager must add),
``units`` (the files written on the host: layout, configuration, systemd unit or start script), ``certs`` (the
agent's certificate), ``deployer`` (the steps, in order, with events and progress) and ``renew`` (certificate
renewal). The steps are described in ``corral.engine.deploy.deployer``.
"""

from corral.engine.deploy.deployer import (
    STEPS,
    Deployer,
    Mode,
    credentials,
    engine_credentials,
    interrupted_deploys,
    run_deploy,
    ssh_placeholder_url,
    stored_options,
)
from corral.engine.deploy.options import AGENT_PORT, DeployFailed, DeployOptions, SshIn
from corral.engine.deploy.renew import CertRenewer, submit_renewal
from corral.engine.deploy.ssh import Credentials

__all__ = ["AGENT_PORT", "STEPS", "CertRenewer", "Credentials", "DeployFailed", "DeployOptions", "Deployer", "Mode",
           "SshIn", "credentials", "engine_credentials", "interrupted_deploys", "run_deploy", "ssh_placeholder_url",
           "stored_options", "submit_renewal"]
