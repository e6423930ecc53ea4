"""A real Prosody for integration tests: the repo's config, free loopback ports, a temp data dir.

The repo's `deploy/prosody/prosody.cfg.lua` reads everything from the
environment, so the tests run the same file docker compose would.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.processes import REPO, Proc, free_port, require_binary, start, wait_for_port

CONFIG = REPO / "deploy" / "prosody" / "prosody.cfg.lua"
MAKE_CERT = REPO / "deploy" / "prosody" / "make-cert.sh"


def make_cert(cert_dir: Path, domain: str, *others: str) -> Path:
    """The README's command: a self-signed certificate for `domain`; the path of its .crt."""
    done = subprocess.run([str(MAKE_CERT), str(cert_dir), domain, *others], capture_output=True,
                          text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"make-cert.sh failed:\n{done.stdout}\n{done.stderr}")
    return cert_dir / f"{domain}.crt"


@dataclass
class Prosody:
    """One Prosody instance; `restart` brings it back on the same ports and data."""

    base: Path
    domain: str = "localhost"
    secret: str = "component-secret-for-tests"
    c2s_port: int = field(default_factory=free_port)
    component_port: int = field(default_factory=free_port)
    proc: Proc | None = None
    starts: int = 0
    name: str = "prosody"
    # More of the config's environment variables (PROSODY_C2S_RATE, PROSODY_LOG_LEVEL).
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def muc(self) -> str:
        return f"conference.{self.domain}"

    @property
    def component(self) -> str:
        return f"bridge.{self.domain}"

    @property
    def data_dir(self) -> Path:
        return self.base / "prosody-data"

    @property
    def ca_file(self) -> Path:
        """The domain's certificate, which clients verify the server against (pinned)."""
        return self.data_dir / "certs" / f"{self.domain}.crt"

    def env(self) -> dict[str, str]:
        return {
            "PATH": "/usr/bin:/bin:/usr/sbin:/sbin",
            "PROSODY_DATA_DIR": str(self.data_dir),
            "PROSODY_C2S_PORT": str(self.c2s_port),
            "PROSODY_COMPONENT_PORT": str(self.component_port),
            "PROSODY_RUN_AS_ROOT": "1",
            "XMPP_DOMAIN": self.domain,
            "XMPP_MUC_SERVICE": self.muc,
            "XMPP_COMPONENT_JID": self.component,
            "XMPP_COMPONENT_SECRET": self.secret,
            **self.extra_env,
        }

    def bridge_settings(self) -> dict[str, str]:
        """The `XMPP_*` variables a bridge process needs to reach this server."""
        return {
            "XMPP_DOMAIN": self.domain,
            "XMPP_COMPONENT_JID": self.component,
            "XMPP_COMPONENT_SECRET": self.secret,
            "XMPP_SERVER_HOST": "127.0.0.1",
            "XMPP_SERVER_PORT": str(self.component_port),
            "XMPP_MUC_SERVICE": self.muc,
        }

    def register(self, user: str, password: str) -> str:
        """A local account, made with prosodyctl against this instance's config; its JID."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            [require_binary("prosodyctl"), "--config", str(CONFIG), "register", user,
             self.domain, password],
            env=self.env(), capture_output=True, text=True, timeout=30, check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"prosodyctl register failed:\n{done.stdout}\n{done.stderr}")
        return f"{user}@{self.domain}"

    def start(self) -> Proc:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.ca_file.exists():
            make_cert(self.data_dir / "certs", self.domain, self.muc)
        self.starts += 1
        self.proc = start(
            f"prosody-{self.starts}",
            [require_binary("prosody"), "--config", str(CONFIG), "-F"],
            log_dir=self.base, env=self.env(),
        )
        wait_for_port(self.c2s_port, proc=self.proc)
        wait_for_port(self.component_port, proc=self.proc)
        return self.proc

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()

    def output(self) -> str:
        return self.proc.output() if self.proc is not None else ""
