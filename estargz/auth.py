"""Registry credentials: given ones, or looked up as docker, podman, skopeo and crane do.

Files searched, first entry for the registry wins: ``$REGISTRY_AUTH_FILE``,
``$XDG_RUNTIME_DIR/containers/auth.json``, ``$DOCKER_CONFIG/config.json`` (default
``~/.docker/config.json``). In each: ``credHelpers[host]``, then ``auths[host]`` (base64 ``auth``,
``username``/``password`` or ``identitytoken``), then ``credsStore``. Helpers are run as
``docker-credential-NAME get`` with the server URL on standard input and answer JSON.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit

from .errors import RegistryError

__all__ = ["Credentials", "Auth", "DOCKER_HUB_SERVER", "IDENTITY_TOKEN_USER"]

#: The key docker uses for Docker Hub in config files and credential helpers.
DOCKER_HUB_SERVER = "https://index.docker.io/v1/"
#: The user name a helper answers for an identity (refresh) token.
IDENTITY_TOKEN_USER = "<token>"
_HUB_NAMES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
_MAX_CONFIG = 1 << 20
_HELPER_TIMEOUT = 30.0


@dataclass(frozen=True)
class Credentials:
    """A user and password, or an identity token (sent as an OAuth2 refresh token)."""

    username: str = field(repr=False)
    password: str = field(repr=False)

    @property
    def identity_token(self) -> str | None:
        return self.password if self.username == IDENTITY_TOKEN_USER else None


def _server_key(text: str) -> str:
    """A config key or server URL as a bare ``host[:port]``."""
    host = urlsplit(text if "://" in text else f"//{text}").netloc.lower()
    return "docker.io" if host in _HUB_NAMES else host


def _helper_server(registry: str) -> str:
    return DOCKER_HUB_SERVER if _server_key(registry) == "docker.io" else registry


class Auth:
    """Where a :class:`~estargz.RegistryClient` gets credentials: fixed ones, or the config files
    and helpers (``config_files=None``: the standard places, read when a registry first asks)."""

    def __init__(self, credentials: Credentials | None = None, *,
                 config_files: list[Path] | None = None, environ: Mapping[str, str] | None = None) -> None:
        self._fixed = credentials
        self._environ = os.environ if environ is None else environ
        self._files = config_files
        self._found: dict[str, Credentials | None] = {}

    @classmethod
    def anonymous(cls) -> "Auth":
        """Never any credentials."""
        return cls(config_files=[])

    def config_files(self) -> list[Path]:
        if self._files is not None:
            return self._files
        env = self._environ
        files = [Path(env["REGISTRY_AUTH_FILE"])] if env.get("REGISTRY_AUTH_FILE") else []
        if env.get("XDG_RUNTIME_DIR"):
            files.append(Path(env["XDG_RUNTIME_DIR"]) / "containers" / "auth.json")
        docker = Path(env["DOCKER_CONFIG"]) if env.get("DOCKER_CONFIG") else Path.home() / ".docker"
        return files + [docker / "config.json"]

    def lookup(self, registry: str) -> Credentials | None:
        """The credentials for ``registry`` (``host[:port]``), or None."""
        if self._fixed is not None:
            return self._fixed
        key = _server_key(registry)
        if key not in self._found:
            self._found[key] = self._search(registry, key)
        return self._found[key]

    def _search(self, registry: str, key: str) -> Credentials | None:
        for path in self.config_files():
            config = _load(path)
            if config is None:
                continue
            helpers = config.get("credHelpers")
            if isinstance(helpers, dict) and isinstance(helpers.get(key), str):
                return _run_helper(helpers[key], _helper_server(registry), self._environ)
            auths = config.get("auths")
            if isinstance(auths, dict):
                for name, entry in auths.items():
                    if _server_key(name) == key and isinstance(entry, dict):
                        found = _from_entry(entry, path, name)
                        if found is not None:
                            return found
            store = config.get("credsStore")
            if isinstance(store, str) and store:
                found = _run_helper(store, _helper_server(registry), self._environ)
                if found is not None:
                    return found
        return None


def _load(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_CONFIG + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise RegistryError(f"{path}: cannot read credentials: {exc.strerror}") from None
    if len(data) > _MAX_CONFIG:
        raise RegistryError(f"{path}: over {_MAX_CONFIG} bytes")
    try:
        config = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise RegistryError(f"{path}: not JSON") from None
    if not isinstance(config, dict):
        raise RegistryError(f"{path}: not a JSON object")
    return config


def _from_entry(entry: dict[str, Any], path: Path, name: str) -> Credentials | None:
    token = entry.get("identitytoken")
    if isinstance(token, str) and token:
        return Credentials(IDENTITY_TOKEN_USER, token)
    encoded = entry.get("auth")
    if isinstance(encoded, str) and encoded:
        try:
            user, sep, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise RegistryError(f"{path}: auths[{name!r}].auth is not base64 of user:password") from None
        if not sep:
            raise RegistryError(f"{path}: auths[{name!r}].auth is not base64 of user:password")
        return Credentials(user, password)
    username, secret = entry.get("username"), entry.get("password")
    if isinstance(username, str) and isinstance(secret, str) and username:
        return Credentials(username, secret)
    return None


def _run_helper(name: str, server: str, environ: Mapping[str, str]) -> Credentials | None:
    """Ask ``docker-credential-NAME``; None when it has nothing for ``server``."""
    if not name or "/" in name or name.startswith("."):
        raise RegistryError(f"invalid credential helper name {name!r}")
    program = f"docker-credential-{name}"
    try:
        done = subprocess.run([program, "get"], input=server.encode(), capture_output=True,
                              timeout=_HELPER_TIMEOUT, env=dict(environ), check=False)
    except FileNotFoundError:
        raise RegistryError(f"credential helper {program} is not installed") from None
    except subprocess.TimeoutExpired:
        raise RegistryError(f"credential helper {program} did not answer in {_HELPER_TIMEOUT:g} s") from None
    except OSError as exc:
        raise RegistryError(f"credential helper {program}: {exc.strerror}") from None
    if done.returncode != 0:
        message = done.stdout.decode("utf-8", "replace").strip() or done.stderr.decode("utf-8", "replace").strip()
        if "credentials not found" in message.lower():
            return None
        reason = message.splitlines()[0][:200] if message else done.returncode
        raise RegistryError(f"credential helper {program} failed: {reason}")
    try:
        answer = json.loads(done.stdout)
        user, secret = answer["Username"], answer["Secret"]
    except (ValueError, UnicodeDecodeError, KeyError, TypeError):
        raise RegistryError(f"credential helper {program} gave no JSON with Username and Secret") from None
    if not isinstance(user, str) or not isinstance(secret, str):
        raise RegistryError(f"credential helper {program} gave a non-string Username or Secret")
    return Credentials(user, secret) if secret else None
