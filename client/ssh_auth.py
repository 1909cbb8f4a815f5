"""Public-key authentication for the SSH push, offering keys in OpenSSH's order.

``--ssh-key`` alone when given; else the config's IdentityFile, the SSH agent's keys and
the default key files, so the push logs in wherever ``ssh board`` does without a password.
"""
from __future__ import annotations

from pathlib import Path

import paramiko
from paramiko.auth_strategy import AuthStrategy

from qverify.client.ssh_errors import SshAuthFailed
from qverify.client.ssh_hostkeys import fingerprint
from qverify.client.ssh_target import Target

__all__ = ["KeyAuth"]

_DEFAULT_KEYS = ("id_ed25519", "id_ecdsa", "id_rsa")


class KeyAuth(AuthStrategy):
    """Offer keys in OpenSSH's order: --ssh-key alone; else config IdentityFile, agent keys, default keys."""

    def __init__(self, target: Target) -> None:
        super().__init__(ssh_config=None)
        self.target = target
        self.tried: list[str] = []
        self.unusable: list[str] = []

    def _load(self, path: Path) -> paramiko.PKey | None:
        try:
            return paramiko.PKey.from_path(path)
        except paramiko.PasswordRequiredException:
            self.unusable.append(f"{path} (passphrase-protected: add it to the agent with ssh-add)")
        except (OSError, paramiko.SSHException, ValueError) as exc:
            reason = str(exc).split(". ")[0][:100] or type(exc).__name__
            self.unusable.append(f"{path} (not a private key file paramiko can read: {reason})")
        return None

    def get_sources(self):  # the keys to offer, loaded lazily
        seen: set[bytes] = set()

        def fresh(key: paramiko.PKey) -> bool:
            blob = key.asbytes()
            if blob in seen:
                return False
            seen.add(blob)
            return True

        for path in self.target.identity_files:
            if not path.is_file():
                if self.target.explicit_key:
                    raise SshAuthFailed(f"SSH key file {path} does not exist; pass the private key file "
                                        "(the one without .pub)")
                continue
            key = self._load(path)
            if key is not None and fresh(key):
                yield str(path), key
        if self.target.explicit_key:
            if self.unusable:
                raise SshAuthFailed(f"SSH key {self.unusable[0]} cannot be used for {self.target.label}; pass a "
                                    "usable private key, or leave the key out to use the SSH agent")
            return
        agent = None
        try:
            agent = paramiko.Agent()
            for key in agent.get_keys():
                if fresh(key):
                    yield f"agent key {fingerprint(key)}", key
        except paramiko.SSHException:
            pass  # no usable agent: not an error, other keys may do
        finally:
            if agent is not None:
                agent.close()
        if not self.target.identity_files:
            for name in _DEFAULT_KEYS:
                path = Path("~/.ssh").expanduser() / name
                if path.is_file():
                    key = self._load(path)
                    if key is not None and fresh(key):
                        yield str(path), key

    def authenticate(self, transport: paramiko.Transport) -> list:
        user = self.target.user
        for label, key in self.get_sources():
            self.tried.append(label)
            try:
                remaining = transport.auth_publickey(user, key)
            except paramiko.BadAuthenticationType as exc:
                raise SshAuthFailed(f"{self.target.label} does not accept SSH key logins (it allows "
                                    f"{', '.join(exc.allowed_types) or 'nothing'}); enable PubkeyAuthentication "
                                    "in the board's sshd_config") from None
            except paramiko.AuthenticationException:
                continue
            except (paramiko.SSHException, EOFError, OSError):
                break  # the server hung up (e.g. too many attempts): report what was tried
            if not remaining:
                return []
            raise SshAuthFailed(f"{self.target.label} accepted key {label} but also wants "
                                f"{', '.join(remaining)}; allow key-only logins for {user} on the board")
        if not self.tried:
            extra = f" ({'; '.join(self.unusable)})" if self.unusable else ""
            raise SshAuthFailed(f"no SSH key to log in to {self.target.label} with{extra}; pass a private key file, "
                                "set IdentityFile in ~/.ssh/config, or add a key to the SSH agent (ssh-add)")
        raise SshAuthFailed(f"{self.target.label} refused the SSH key{'s' if len(self.tried) > 1 else ''} "
                            f"{', '.join(self.tried)}; add the matching public key to ~{user}/.ssh/authorized_keys "
                            "on the board, pass the right key and user, or push through the agent instead: "
                            "--transport grpc")
