"""``corral login|cluster|host|vm|event|task``: operator commands over the engine's REST API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import typer

from corral.cli.client import ApiClient
from corral.cli.cloudinit import HELP as CLOUD_INIT_HELP
from corral.cli.cloudinit import parse_cloud_init
from corral.cli.common import fail, load_data
from corral.cli.output import Output, Record, Rows, Text, current_output, outcome_style, output_option, show
from corral.cli.snapshots import snapshot_app
from corral.cli.storage import parse_size

OutputOpt = output_option()

cluster_app = typer.Typer(no_args_is_help=True, help="Clusters.")
host_app = typer.Typer(no_args_is_help=True, help="Hosts.")
vm_app = typer.Typer(no_args_is_help=True, help="Virtual machines.")
event_app = typer.Typer(no_args_is_help=True, help="Events.")
task_app = typer.Typer(no_args_is_help=True, help="Tasks (long operations).")


def _page(data: dict[str, Any], columns: list[str], title: str, output: Output) -> None:
    """A page of a list answer: the whole answer (items and cursor) as json/yaml, its items as a table."""
    show(data, output, Rows(columns, data["items"], title))


def emit(data: Any, output: Output) -> None:
    """``data`` as json or yaml (kept for commands that branch on the format themselves)."""
    show(data, output)


def _table(items: list[dict[str, Any]], columns: list[str], title: str) -> None:
    """Items under columns in the running command's --output (kept for commands that print pages themselves;
    json and yaml print the items, :func:`_page` prints the whole answer)."""
    show(items, current_output(), Rows(columns, items, title))


def _finish(api: ApiClient, result: Any, output: Output, wait: bool) -> Any:
    """Wait for a 202 task unless --no-wait; print progress; fail with the task's error."""
    task = result.get("task") if isinstance(result, dict) and "task" in result else None
    if task is None and isinstance(result, dict) and result.get("kind") and result.get("state") in (
            "pending", "running", "succeeded", "failed"):
        task = result
    if task is None or not wait:
        return result
    show = None if output.machine else (lambda m: typer.echo(f"... {m}", err=True))
    task = api.wait_task(task, show)
    if task["state"] == "failed":
        err = task.get("error") or {}
        extra = f"\n{json.dumps(err.get('rejections'), indent=2)}" if err.get("rejections") else ""
        fail(f"task {task['kind']} failed: {err.get('message', err)}{extra}")
    return task


@cluster_app.command("create")
def cluster_create(name: str, description: str = "", flavor_policy: str = typer.Option("any", "--flavor-policy",
                   help="any, xen or kvm"), output: Output = OutputOpt) -> None:
    data = ApiClient().request("POST", "/clusters", json={"name": name, "description": description,
                                                          "flavor_policy": flavor_policy})
    show(data, output)


@cluster_app.command("list")
def cluster_list(output: Output = OutputOpt) -> None:
    _page(ApiClient().get("/clusters", limit=1000), ["id", "name", "flavor_policy", "description"], "clusters",
          output)


def _ssh_body(ssh: str | None, ssh_key: Path | None, password_prompt: bool,
              host_key: str | None, tofu: bool = False) -> dict[str, Any] | None:
    """``--ssh [USER@]ADDRESS[:PORT]`` and the credential, as the API's ``ssh`` object."""
    if not ssh:
        if ssh_key or password_prompt:
            fail("--ssh-key and --password-prompt go with --ssh")
        return None
    user, _, hostport = ssh.rpartition("@")
    address, port = hostport, 22
    if hostport.startswith("["):
        address, _, rest = hostport[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else 22
    elif hostport.count(":") == 1:
        address, _, p = hostport.partition(":")
        if not p.isdigit():
            fail(f"--ssh {ssh}: the port must be a number")
        port = int(p)
    body: dict[str, Any] = {"address": address, "port": port, "user": user or "root"}
    if ssh_key is not None and password_prompt:
        fail("give --ssh-key or --password-prompt, not both")
    if ssh_key is not None:
        try:
            body["private_key"] = ssh_key.expanduser().read_text()
        except OSError as exc:
            fail(f"--ssh-key {ssh_key}: {exc.strerror}")
    elif password_prompt:
        body["password"] = typer.prompt(f"password of {body['user']}@{address}", hide_input=True)
    if host_key:
        body["host_key_fingerprint"] = host_key
    if tofu:
        body["trust_on_first_use"] = True
    return body


def _deploy_options(allow_tcg: bool, libvirt_uri: str | None, agent_port: int | None,
                    agent_url: str | None) -> dict[str, Any] | None:
    options: dict[str, Any] = {}
    if allow_tcg:
        options["allow_tcg"] = True
    if libvirt_uri:
        options["libvirt_uri"] = libvirt_uri
    if agent_port:
        options["agent_port"] = agent_port
    if agent_url:
        options["agent_url"] = agent_url
    return options or None


SshKeyOpt = typer.Option(None, "--ssh-key", help="private key file for SSH")
PasswordOpt = typer.Option(False, "--password-prompt", help="ask for the SSH password")
HostKeyOpt = typer.Option(None, "--host-key", help="expected SSH host key fingerprint SHA256:... (else pinned on "
                                                   "first use and shown)")
TofuOpt = typer.Option(False, "--trust-on-first-use", help="with --password-prompt and no --host-key: accept the "
                                                          "host key the host shows (a machine in the middle would "
                                                          "get the password)")
TcgOpt = typer.Option(False, "--allow-tcg", help="deploy: accept a host without KVM (QEMU under TCG, slow)")
LibvirtOpt = typer.Option(None, "--libvirt", help="deploy: libvirt URI for the agent (default by hypervisor)")
AgentPortOpt = typer.Option(None, "--agent-port", help="deploy: port the agent listens on (default 8470)")
AgentUrlOpt = typer.Option(None, "--agent-url", help="deploy: https URL the engine uses to reach the agent (NAT)")


@host_app.command("add")
def host_add(name: str, url: str = typer.Option(None, "--url", help="agent URL (an agent that runs already)"),
             token_file: Path = typer.Option(None, "--token-file", help="file with the agent's token"),
             token: str = typer.Option(None, "--token", help="the agent's token"),
             ssh: str = typer.Option(None, "--ssh", help="deploy over SSH: [USER@]ADDRESS[:PORT] (user root)"),
             ssh_key: Path = SshKeyOpt, password_prompt: bool = PasswordOpt, host_key: str = HostKeyOpt,
             trust_on_first_use: bool = TofuOpt, allow_tcg: bool = TcgOpt, libvirt_uri: str = LibvirtOpt,
             agent_port: int = AgentPortOpt, agent_url: str = AgentUrlOpt,
             cluster: str = typer.Option(None, "--cluster"), wait: bool = typer.Option(True, "--wait/--no-wait"),
             output: Output = OutputOpt) -> None:
    """Add a host: deploy the agent over SSH (--ssh), or register an agent that runs already (--url).

    Over SSH the host key is shown and pinned on first use; rerunning the same command after a failure
    resumes the deploy."""
    ssh_body = _ssh_body(ssh, ssh_key, password_prompt, host_key, trust_on_first_use)
    body: dict[str, Any] = {"name": name}
    if ssh_body is not None:
        if url or token or token_file:
            fail("--ssh deploys the agent; --url/--token are for an agent that runs already")
        body["ssh"] = ssh_body
        options = _deploy_options(allow_tcg, libvirt_uri, agent_port, agent_url)
        if options:
            body["options"] = options
    else:
        if not url:
            fail("give --ssh root@ADDRESS (deploy) or --url URL --token ... (a running agent)")
        if token_file is not None:
            try:
                token = token_file.read_text().strip()
            except OSError as exc:
                fail(f"--token-file {token_file}: {exc.strerror}")
        if not token:
            fail("give --token or --token-file")
        body.update(url=url, token=token)
    api = ApiClient()
    if cluster:
        body["cluster"] = cluster
    result = _finish(api, api.request("POST", "/hosts", json=body), output, wait)
    if isinstance(result, dict) and result.get("kind") and wait:
        result = api.resolve("hosts", name)
    show(result, output)


@host_app.command("reinstall")
def host_reinstall(host: str, ssh_key: Path = SshKeyOpt, password_prompt: bool = PasswordOpt,
                   allow_tcg: bool = TcgOpt, libvirt_uri: str = LibvirtOpt, agent_port: int = AgentPortOpt,
                   agent_url: str = AgentUrlOpt, wait: bool = typer.Option(True, "--wait/--no-wait"),
                   output: Output = OutputOpt) -> None:
    """Deploy a host's agent again over SSH (the engine's key and the pinned host key; the options of the last
    deploy unless given)."""
    api = ApiClient()
    h = api.get(f"/hosts/{api.resolve('hosts', host)['id']}")
    if not h.get("ssh_address"):
        fail(f"host {h['name']} was not added over SSH; remove it and add it with --ssh")
    body: dict[str, Any] = {}
    if ssh_key is not None or password_prompt:
        # the pinned key: the engine checks it anyway, and a password needs it named
        creds = _ssh_body(f"root@{h['ssh_address']}", ssh_key, password_prompt,
                          (h.get("deploy") or {}).get("host_key_fingerprint"))
        assert creds is not None
        creds.update(address=h["ssh_address"], port=h.get("ssh_port") or 22)
        body["ssh"] = creds
    options = _deploy_options(allow_tcg, libvirt_uri, agent_port, agent_url)
    if options:
        body["options"] = options
    result = _finish(api, api.request("POST", f"/hosts/{h['id']}/reinstall", json=body), output, wait)
    if isinstance(result, dict) and result.get("kind") and wait:
        result = api.resolve("hosts", h["id"])
    show(result, output)


@host_app.command("renew-certificate")
def host_renew_certificate(host: str, wait: bool = typer.Option(True, "--wait/--no-wait"),
                           output: Output = OutputOpt) -> None:
    """Issue the host's agent a new TLS certificate now (the engine renews by itself 30 days before expiry)."""
    api = ApiClient()
    h = api.resolve("hosts", host)
    show(_finish(api, api.request("POST", f"/hosts/{h['id']}/renew-certificate"), output, wait), output)


@host_app.command("list")
def host_list(state: str = typer.Option(None), cluster: str = typer.Option(None),
              limit: int = typer.Option(100), output: Output = OutputOpt) -> None:
    data = ApiClient().get("/hosts", state=state, cluster=cluster, limit=limit)
    if output is Output.JSON:
        emit(data, output)
    else:
        # "emulated": libvirt's test driver presenting the hypervisor (nothing really runs there)
        rows = [{**h, "emulated": "yes" if h.get("emulated") else ""} for h in data["items"]]
        _table(rows, ["id", "name", "state", "hypervisor", "emulated", "url", "state_reason"], "hosts")


@host_app.command("show")
def host_show(host: str, output: Output = OutputOpt) -> None:
    """The host's fields and its hardware check, item by item (json/yaml: also the agent's whole report)."""
    api = ApiClient()
    data = api.get(f"/hosts/{api.resolve('hosts', host)['id']}")
    info = data.get("info") or {}
    check = info.get("hardware_check") or {}
    items = [{"check": i.get("name"), "result": "ok" if i.get("ok") else "FAIL", "detail": i.get("detail")}
             for i in check.get("items") or []]
    verdict = "no answer from the agent yet" if not check else "ok" if check.get("ok") else "FAILED"
    show(data, output, Record({k: v for k, v in data.items() if k != "info"}),
         Rows(["check", "result", "detail"], items, f"hardware check: {verdict}", _check_style))


def _check_style(column: str, text: str) -> str | None:
    return ("green" if text == "ok" else "bold red") if column == "result" else None


@host_app.command("maintenance")
def host_maintenance(host: str, off: bool = typer.Option(False, "--off", help="leave maintenance"),
                     output: Output = OutputOpt) -> None:
    api = ApiClient()
    h = api.resolve("hosts", host)
    show(api.request("POST", f"/hosts/{h['id']}/{'activate' if off else 'maintenance'}"), output)


@host_app.command("remove")
def host_remove(host: str, output: Output = OutputOpt) -> None:
    api = ApiClient()
    h = api.resolve("hosts", host)
    api.request("DELETE", f"/hosts/{h['id']}")
    show({"id": h["id"], "name": h["name"], "removed": True}, output, Text(f"host {h['name']} removed"))


_DISK_OPTS = ("format", "bus", "readonly", "source_type", "storage", "size", "clone")


def _disk(value: str, device: str = "disk") -> dict[str, Any]:
    """``PATH[,opts]`` or ``path=PATH[,opts]`` (a path on the host), ``size=10G[,opts]`` (a new volume the engine
    makes for the VM, in ``storage=S`` or the cluster's only storage domain), ``volume=NAME[,opts]`` (a volume
    of the engine), ``image=NAME[,size=20G][,clone=full][,opts]`` (a new volume of the VM made from an uploaded
    image: a thin clone where it can be, grown to ``size``)."""
    first, *opts = value.split(",")
    key, eq, val = first.partition("=")
    disk: dict[str, Any] = {"device": device}
    if not eq:
        disk["source"] = first
    elif key == "path":
        disk["source"] = val
    elif key == "size":
        disk["size_bytes"] = parse_size(val, "--disk size=")
    elif key in ("volume", "image"):
        disk[key] = val
    else:
        opts.insert(0, first)
    for opt in opts:
        key, _, val = opt.partition("=")
        if key not in _DISK_OPTS:
            fail(f"--disk {value}: unknown option {key!r} ({', '.join(_DISK_OPTS)})")
        if key == "size":
            disk["size_bytes"] = parse_size(val, "--disk size=")
        else:
            disk[key] = val if key != "readonly" else val in ("1", "yes", "true", "on")
    if not {"source", "size_bytes", "volume", "image"} & set(disk):
        fail(f"--disk {value}: give a PATH, size=SIZE (a new volume), volume=NAME or image=NAME")
    if str(disk.get("source", "")).startswith("/dev/") and "source_type" not in disk:
        disk["source_type"] = "block"
    return disk


def _nic(value: str) -> dict[str, Any]:
    """``bridge=BR``, ``network=NET`` (a logical network of the VM's cluster, issue 18) or ``libvirt-network=NET``
    (a libvirt network defined on the host), then ``model=``, ``mac=``, ``link=``, ``filter=``."""
    nic: dict[str, Any] = {}
    for opt in value.split(","):
        key, _, val = opt.partition("=")
        if key == "bridge":
            nic["source_type"], nic["source"] = key, val
        elif key == "network":
            nic["network"] = val
        elif key == "libvirt-network":
            nic["source_type"], nic["source"] = "network", val
        elif key in ("model", "mac", "link", "filter"):
            nic[key] = val
        else:
            fail(f"--nic {value}: unknown option {key!r} (bridge, network, libvirt-network, model, mac, link, "
                 "filter)")
    if "source" not in nic and "network" not in nic:
        fail(f"--nic {value}: give bridge=NAME, network=NAME or libvirt-network=NAME")
    return nic


def _cdrom(value: str) -> dict[str, Any]:
    """``iso=NAME`` (an uploaded ISO, by name or id), ``empty``, or an ISO's path on the host."""
    if value == "empty":
        return {"device": "cdrom"}
    key, eq, val = value.partition("=")
    if eq and key == "iso":
        return {"device": "cdrom", "image": val}
    return _disk(value, "cdrom")


def _template_disks(template: str, clone: str | None) -> list[dict[str, Any]]:
    """The template's disks as a create body names them (its base volumes to be cloned), to add more to."""
    t = ApiClient().get(f"/templates/{quote(template, safe='')}")
    bases = {v["name"] for v in t.get("volumes") or []}
    disks = []
    for d in t["spec"].get("disks") or []:
        if d.get("volume") in bases:
            d = {k: v for k, v in d.items() if k != "format"} | {"clone": clone or "thin"}
        disks.append(d)
    return disks


@vm_app.command("create")
def vm_create(
    name: str = typer.Argument(None),
    spec: Path = typer.Option(None, "--spec", help="a VmSpec file (JSON/YAML), e.g. from 'corral xml import'"),
    memory: int = typer.Option(None, "--memory", help="MiB (default 512, or the template's)"),
    vcpus: int = typer.Option(None, "--vcpus", help="default 1, or the template's"),
    guest_type: str = typer.Option(None, "--guest-type", help="hvm, pv or pvh"),
    disk: list[str] = typer.Option(None, "--disk", help="size=10G[,format=qcow2][,storage=S][,bus=virtio] (a new "
                                   "volume), image=NAME[,size=20G][,clone=full] (a new volume from an uploaded "
                                   "image), volume=NAME (an existing one) or PATH[,format=qcow2] (a host path)"),
    nic: list[str] = typer.Option(None, "--nic", help="bridge=BR[,model=virtio], network=NET (a logical "
                                   "network) or libvirt-network=NET"),
    cdrom: list[str] = typer.Option(None, "--cdrom", help="iso=NAME (an uploaded ISO), an ISO path, or 'empty' "
                                    "(repeatable)"),
    template: str = typer.Option(None, "--template", help="make the VM from this template: its disks are clones "
                                 "of the template's; --disk and --cdrom add to them, other options replace its"),
    clone: str = typer.Option(None, "--clone", help="with --template: thin (qcow2 overlays, the default) or full"),
    kernel: str = typer.Option(None, "--kernel"),
    initrd: str = typer.Option(None, "--initrd"),
    cmdline: str = typer.Option(None, "--cmdline"),
    graphics: str = typer.Option(None, "--graphics", help="vnc or spice"),
    cloud_init: str = typer.Option(None, "--cloud-init", help=CLOUD_INIT_HELP),
    cluster: str = typer.Option(None, "--cluster"),
    ha: bool = typer.Option(False, "--ha", help="highly available: restarted elsewhere after its host was fenced "
                            "(docs/ha.md)"),
    ha_priority: int = typer.Option(None, "--ha-priority", help="0-100, highest restarted first (default 0)"),
    output: Output = OutputOpt,
) -> None:
    """Define a VM in the engine (it is placed on a host when started)."""
    if spec is not None:
        body: dict[str, Any] = load_data(spec, "spec")
        if not isinstance(body, dict):
            fail(f"--spec {spec}: not a VmSpec object")
        if name:
            body["name"] = name
        if template or clone:
            fail("--template goes without --spec")
    else:
        if not name:
            fail("give a NAME or --spec FILE")
        if clone and not template:
            fail("--clone goes with --template")
        body = {"name": name}
        if template:
            body.update(template=template, **({"clone": clone} if clone else {}))
        for key, value, default in (("memory_mib", memory, 512), ("vcpus", vcpus, 1)):
            if value is not None or not template:
                body[key] = default if value is None else value
        disks = [_disk(d) for d in disk or []] + [_cdrom(c) for c in cdrom or []]
        if template and disks:
            disks = _template_disks(template, clone) + disks
        if disks or not template:
            body["disks"] = disks
        if nic or not template:
            body["nics"] = [_nic(n) for n in nic or []]
        for key, value in (("kernel", kernel), ("initrd", initrd), ("cmdline", cmdline),
                           ("guest_type", guest_type)):
            if value:
                body[key] = value
        if graphics:
            body["graphics"] = {"type": graphics}
    if cloud_init:
        body["cloud_init"] = parse_cloud_init(cloud_init)
    if ha or ha_priority is not None:  # engine settings beside the spec (issue 13)
        body.update(ha=ha, **({"ha_priority": ha_priority} if ha_priority is not None else {}))
    api = ApiClient()
    path = "/vms" + (f"?cluster={cluster}" if cluster else "")
    show(api.request("POST", path, json=body), output)


@vm_app.command("list")
def vm_list(state: str = typer.Option(None), host: str = typer.Option(None), name: str = typer.Option(None),
            cluster: str = typer.Option(None), limit: int = typer.Option(100), after: str = typer.Option(None),
            output: Output = OutputOpt) -> None:
    api = ApiClient()
    if host:
        host = api.resolve("hosts", host)["id"]
    data = api.get("/vms", state=state, host=host, name=name, cluster=cluster, limit=limit, after=after)
    _page(data, ["id", "name", "state", "host_name", "memory_mib", "memory_current_mib", "vcpus", "external"],
          "VMs", output)


@vm_app.command("show")
def vm_show(vm: str, output: Output = OutputOpt) -> None:
    api = ApiClient()
    show(api.get(f"/vms/{api.resolve('vms', vm)['id']}"), output)


@vm_app.command("plan")
def vm_plan(vm: str, host: str = typer.Option(..., "--host"), output: Output = OutputOpt) -> None:
    """The decisions of that host's flavor for this VM: native, translated (to what) or refused (why)."""
    api = ApiClient()
    v = api.resolve("vms", vm)
    h = api.resolve("hosts", host)
    data = api.get(f"/vms/{v['id']}/plan", host=h["id"])
    rows = [{"field": d["path"], "outcome": d["outcome"], "detail": d["detail"]} for d in data["decisions"]]
    show(data, output, Rows(["field", "outcome", "detail"], rows,
                            f"plan of {v['name']} on {h['name']} ({data.get('flavor')})", outcome_style))


def _action(vm: str, action: str, body: dict[str, Any] | None, wait: bool, output: Output) -> None:
    api = ApiClient()
    v = api.resolve("vms", vm)
    result = _finish(api, api.request("POST", f"/vms/{v['id']}/{action}", json=body or {}), output, wait)
    if wait:
        result = api.get(f"/vms/{v['id']}")
    show(result, output, Text(f"{v['name']}: {result.get('state', result.get('kind'))}"
                              + (f" on {result['host_name']}" if result.get("host_name") else "")))


WaitOpt = typer.Option(True, "--wait/--no-wait", help="wait for the task to finish")


@vm_app.command("start")
def vm_start(vm: str, host: str = typer.Option(None, "--host", help="target host (default: the scheduler's)"),
             wait: bool = WaitOpt, output: Output = OutputOpt) -> None:
    body = {}
    if host:
        body["host"] = ApiClient().resolve("hosts", host)["id"]
    _action(vm, "start", body, wait, output)


@vm_app.command("shutdown")
def vm_shutdown(vm: str, timeout: int = typer.Option(60, "--timeout"), wait: bool = WaitOpt,
                output: Output = OutputOpt) -> None:
    _action(vm, "shutdown", {"timeout": timeout}, wait, output)


@vm_app.command("stop")
def vm_stop(vm: str, timeout: int = typer.Option(30, "--timeout"), wait: bool = WaitOpt,
            output: Output = OutputOpt) -> None:
    """Shut down; destroy after the timeout if the guest does not stop."""
    _action(vm, "stop", {"timeout": timeout}, wait, output)


@vm_app.command("reboot")
def vm_reboot(vm: str, wait: bool = WaitOpt, output: Output = OutputOpt) -> None:
    _action(vm, "reboot", None, wait, output)


@vm_app.command("pause")
def vm_pause(vm: str, wait: bool = WaitOpt, output: Output = OutputOpt) -> None:
    _action(vm, "pause", None, wait, output)


@vm_app.command("resume")
def vm_resume(vm: str, wait: bool = WaitOpt, output: Output = OutputOpt) -> None:
    _action(vm, "resume", None, wait, output)


@vm_app.command("delete")
def vm_delete(vm: str, keep_volumes: bool = typer.Option(False, "--keep-volumes",
                                                         help="keep the volumes made for the VM (size= disks)"),
              output: Output = OutputOpt) -> None:
    """Delete a stopped VM; the volumes made for it go with it unless --keep-volumes."""
    api = ApiClient()
    v = api.resolve("vms", vm)
    api.request("DELETE", f"/vms/{v['id']}", params={"keep_volumes": "true"} if keep_volumes else None)
    show({"id": v["id"], "name": v["name"], "deleted": True, **({"kept_volumes": True} if keep_volumes else {})},
         output,
         Text(f"VM {v['name']} deleted" + (" (its volumes kept)" if keep_volumes else "")))


def vm_console(vm: str, tail: int = typer.Option(65536, "--tail"), output: Output = OutputOpt) -> None:
    """Print the VM's console log; exit 2 when there is none to print (no serial port or console, or a host
    that keeps no log of it), rather than print nothing."""
    api = ApiClient()
    v = api.get(f"/vms/{api.resolve('vms', vm)['id']}")
    # the devices libvirt reports (or the spec's, for a VM that does not run): an agent answers the log file
    # a Xen guest's console would have even when the guest has none
    if not any(d.get("kind") in ("serial", "console") for d in v.get("devices") or []):
        fail(f"VM {v['name']} has no serial port or console, so it has no console log; give its spec a console "
             "(consoles: [{kind: serial}]) to have one")
    data = api.get(f"/vms/{v['id']}/console", tail=tail)
    if not data.get("path"):
        host = v.get("host_name") or "its host"
        fail(f"{host} keeps no log of VM {v['name']}'s console (its agent names no log file)")
    if not data.get("log") and not output.machine:
        typer.echo(f"(the console log {data['path']} is empty so far)", err=True)
    show(data, output, Text(data.get("log") or "", verbatim=True))


@event_app.command("list")
def event_list(object_id: str = typer.Option(None, "--object"), severity: str = typer.Option(None, "--severity"),
               user: str = typer.Option(None, "--user", help="changes made by this user (token:NAME: by a token "
                                        "without an owner)"),
               limit: int = typer.Option(50), output: Output = OutputOpt) -> None:
    data = ApiClient().get("/events", object_id=object_id, severity=severity, user=user, limit=limit)
    _page(data, ["time", "severity", "object_type", "object_name", "actor", "message"], "events", output)


@task_app.command("show")
def task_show(task_id: str, output: Output = OutputOpt) -> None:
    show(ApiClient().get(f"/tasks/{task_id}"), output)


def register(app: typer.Typer) -> None:
    from corral.cli.login import login

    app.command("login")(login)
    app.add_typer(cluster_app, name="cluster")
    app.add_typer(host_app, name="host")
    vm_app.add_typer(snapshot_app, name="snapshot")
    app.add_typer(vm_app, name="vm")
    app.add_typer(event_app, name="event")
    app.add_typer(task_app, name="task")
