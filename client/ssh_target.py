"""Where and as whom an SSH push connects: the options, then ``~/.ssh/config``, then defaults.

``~/.ssh/config`` (HostName, User, Port, IdentityFile) is honoured, so ``qverify -b board``
reaches the same machine, as the same user, with the same key as ``ssh board``.
"""
from __future__ import annotations

import getpass
from dataclasses import dataclass
from pathlib import Path

import paramiko

from qverify.client.ssh_errors import SshError

__all__ = ["SshOptions", "Target", "resolve_target", "agent_host"]


@dataclass(frozen=True)
class SshOptions:
    """How to reach a board over SSH; every None falls back to ~/.ssh/config, then OpenSSH's default."""

    user: str | None = None          # --ssh-user; default from ~/.ssh/config, else the local user
    key: Path | None = None          # --ssh-key (private key file); else config IdentityFile, SSH agent, default keys
    port: int | None = None          # --ssh-port; default from ~/.ssh/config, else 22
    config_file: Path | None = None  # default ~/.ssh/config (honoured when it exists)
    known_hosts: Path | None = None  # default ~/.ssh/known_hosts
    connect_timeout: float = 10.0


@dataclass(frozen=True)
class Target:
    """A host resolved: the address, port and user to connect as, the keys to offer, the known_hosts file."""

    host: str                          # as the caller named it (may be a config alias)
    hostname: str
    port: int
    user: str
    identity_files: tuple[Path, ...]   # from --ssh-key or the config's IdentityFile
    explicit_key: bool                 # --ssh-key given: offer that key only
    known_hosts: Path

    @property
    def label(self) -> str:
        return f"{self.user}@{self.hostname}:{self.port}"

    @property
    def known_hosts_name(self) -> str:
        """The name known_hosts uses: ``host``, or ``[host]:port`` off port 22."""
        return self.hostname if self.port == 22 else f"[{self.hostname}]:{self.port}"


def resolve_target(host: str, options: SshOptions) -> Target:
    """Apply the options, then ~/.ssh/config, then the defaults, as ``ssh`` does."""
    explicit_config = options.config_file is not None
    config_path = Path(options.config_file or "~/.ssh/config").expanduser()
    conf: dict = {}
    if explicit_config and not config_path.is_file():
        raise SshError(f"SSH config file {config_path} does not exist; fix the path or leave it out")
    if config_path.is_file():
        try:
            conf = paramiko.SSHConfig.from_path(str(config_path)).lookup(host)
        except Exception as exc:  # paramiko raises several types for unsupported or broken configs
            raise SshError(f"cannot read the SSH config {config_path} for host {host!r} ({exc}); fix the file, "
                           "or pass the user, port and key explicitly") from None
    for keyword in ("proxyjump", "proxycommand"):
        value = conf.get(keyword)
        if value and str(value).lower() != "none":
            raise SshError(f"{config_path} sets {keyword} for host {host!r}, which the SFTP push does not support; "
                           "push through the agent instead with --transport grpc, or push to an address reachable "
                           "directly (a host without that setting)")
    hostname = conf.get("hostname") or host
    port = options.port
    if port is None:
        try:
            port = int(conf.get("port", 22))
        except ValueError:
            raise SshError(f"{config_path} sets Port {conf.get('port')!r} for host {host!r}; "
                           "make it a number or pass the port explicitly") from None
    if not 0 < port < 65536:
        raise SshError(f"SSH port {port} is out of range; pass a port between 1 and 65535")
    user = options.user or conf.get("user") or getpass.getuser()
    if options.key is not None:
        identity_files: tuple[Path, ...] = (Path(options.key).expanduser(),)
    else:
        identity_files = tuple(Path(p).expanduser() for p in conf.get("identityfile", ()))
    known_hosts = Path(options.known_hosts or "~/.ssh/known_hosts").expanduser()
    return Target(host, hostname, port, user, identity_files, options.key is not None, known_hosts)


def agent_host(host: str, options: SshOptions | None = None) -> str:
    """Where the board's agent is reached: the ``HostName`` ~/.ssh/config gives ``host`` (an alias
    such as ``board1``), else ``host`` itself. The push resolves the alias the same way, so
    ``-b board1`` reaches the agent and the SSH server of the same machine. A config that cannot be
    read leaves ``host`` as it is: the push names the problem, the agent need not.

    An IP address is kept as given: it already names the machine, and a HostName for it in the
    config is a detour for SSH (a forwarded port, a tunnel), not the agent's address."""
    import ipaddress

    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    options = options or SshOptions()
    path = Path(options.config_file or "~/.ssh/config").expanduser()
    try:
        if not path.is_file():
            return host
        hostname = paramiko.SSHConfig.from_path(str(path)).lookup(host).get("hostname")
    except Exception:  # paramiko raises several types for unsupported or broken configs
        return host
    return str(hostname) if hostname else host
