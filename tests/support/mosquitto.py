"""A real mosquitto for tests: a free port, password file and ACL, persistence in a temp dir.

The ACL is the repo's (deploy/mosquitto/acl); only paths and the port differ
from deploy/mosquitto/mosquitto.conf. Restarting keeps persistent sessions.
"""

from __future__ import annotations

import getpass
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.processes import REPO, Proc, free_port, require_binary, start, wait_for_port

BRIDGE_USER = "bridge"
BRIDGE_PASSWORD = "bridge-test-secret"


@dataclass
class Mosquitto:
    directory: Path
    port: int
    users: dict[str, str] = field(default_factory=dict)
    proc: Proc | None = None

    @property
    def bridge_url(self) -> str:
        return f"mqtt://{BRIDGE_USER}:{BRIDGE_PASSWORD}@127.0.0.1:{self.port}"

    def add_user(self, name: str, password: str) -> None:
        passwd = require_binary("mosquitto_passwd", "/usr/bin/mosquitto_passwd")
        subprocess.run([passwd, "-b", str(self.directory / "passwd"), name, password], check=True)
        self.users[name] = password
        if self.proc is not None and self.proc.popen.poll() is None:
            self.proc.popen.send_signal(1)  # SIGHUP: reload the password file

    def start(self) -> None:
        binary = require_binary("mosquitto", "/usr/sbin/mosquitto")
        self.proc = start(
            f"mosquitto-{self.port}", [binary, "-c", str(self.directory / "mosquitto.conf")],
            log_dir=self.directory,
        )
        wait_for_port(self.port, proc=self.proc)

    def stop(self) -> None:
        """SIGTERM: mosquitto writes its persistence file and exits."""
        if self.proc is not None:
            self.proc.stop()
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


def mosquitto_config(directory: Path, port: int) -> str:
    template = (REPO / "deploy" / "mosquitto" / "mosquitto.conf").read_text()
    replaced = re.sub(r"(?m)^listener 1883$", f"listener {port} 127.0.0.1", template)
    replaced = replaced.replace("/mosquitto/config/", f"{directory}/").replace(
        "/mosquitto/data/", f"{directory}/data/"
    )
    replaced = re.sub(r"(?m)^log_dest stdout$", "log_dest stderr", replaced)
    # Run as root, mosquitto would switch to its own user, who cannot write our temp dir.
    return replaced + f"\nuser {getpass.getuser()}\n"


def mosquitto_server(
    directory: Path, users: dict[str, str] | None = None, *, acl: str | None = None
) -> Mosquitto:
    """Started, with the bridge's account and `users` (name: password) in its password file.

    `acl` replaces the repo's ACL (e.g. the output of `devices acl`).
    """
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "data").mkdir(exist_ok=True)
    port = free_port()
    (directory / "mosquitto.conf").write_text(mosquitto_config(directory, port))
    (directory / "acl").write_text(acl or (REPO / "deploy" / "mosquitto" / "acl").read_text())
    (directory / "passwd").write_text("")
    broker = Mosquitto(directory=directory, port=port)
    broker.add_user(BRIDGE_USER, BRIDGE_PASSWORD)
    for name, password in (users or {}).items():
        broker.add_user(name, password)
    broker.start()
    return broker
