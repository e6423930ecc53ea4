"""A real mosquitto for tests: the repo's configuration (deploy/mosquitto/mosquitto.conf, with
the dynamic security plugin) on a free port, its state and persistence in a temp dir.

Only paths and the port differ from what production runs. The bridge's admin
account is created as `init-dynsec.sh` does. Two ways to give devices access:
- `bridge_managed=True`: `users` get credentials only, bound to their own client
  id; the bridge (MQTT_DYNSEC=1, `bridge_env`) grants their topics from the
  database, as in production;
- otherwise (tests about something else, run without MQTT_DYNSEC): the bridge
  account gets its data role here, and each user a role with what the old
  static ACL allowed (its own topics, every room's messages) and any client id.
`acl=` runs the static-ACL configuration instead (for `devices acl`).
Restarting keeps the persistent sessions and the dynamic security state.
"""

from __future__ import annotations

import getpass
import glob
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.processes import REPO, Proc, free_port, require_binary, start, wait_for_port

BRIDGE_USER = "bridge"
BRIDGE_PASSWORD = "bridge-test-secret"
PLUGIN_CANDIDATES = (
    "/usr/lib/mosquitto_dynamic_security.so",
    "/usr/lib/*/mosquitto_dynamic_security.so",
    "/usr/local/lib/mosquitto_dynamic_security.so",
)
# What the bridge's own role allows when no bridge manages the broker (see
# protocols/mqtt/permissions.py for the real one).
LEGACY_BRIDGE_ACLS = [
    ("publishClientSend", "rooms/#"), ("publishClientSend", "devices/+/commands"),
    ("publishClientSend", "devices/+/errors"),
]


@dataclass
class Mosquitto:
    directory: Path
    port: int
    users: dict[str, str] = field(default_factory=dict)
    proc: Proc | None = None
    static_acl: bool = False
    bridge_managed: bool = False

    @property
    def bridge_url(self) -> str:
        return f"mqtt://{BRIDGE_USER}:{BRIDGE_PASSWORD}@127.0.0.1:{self.port}"

    def bridge_env(self) -> dict[str, str]:
        """What a bridge process needs to use this broker (and manage it, if it should)."""
        env = {"MQTT_URL": self.bridge_url}
        if self.bridge_managed:
            env["MQTT_DYNSEC"] = "1"
        return env

    def ctrl(self, *args: str, check: bool = True) -> str:
        """mosquitto_ctrl dynsec ARGS as the bridge's admin account."""
        tool = require_binary("mosquitto_ctrl", "/usr/bin/mosquitto_ctrl")
        done = subprocess.run(
            [tool, "-h", "127.0.0.1", "-p", str(self.port), "-u", BRIDGE_USER, "-P", BRIDGE_PASSWORD,
             "dynsec", *args],
            capture_output=True, text=True, check=False, timeout=20,
        )
        if check and (done.returncode != 0 or "Error" in done.stdout):
            raise RuntimeError(f"mosquitto_ctrl dynsec {' '.join(args)}: {done.stdout}{done.stderr}")
        return done.stdout

    def add_user(self, name: str, password: str) -> None:
        self.users[name] = password
        if self.static_acl:
            passwd = require_binary("mosquitto_passwd", "/usr/bin/mosquitto_passwd")
            subprocess.run([passwd, "-b", str(self.directory / "passwd"), name, password], check=True)
            if self.proc is not None and self.proc.popen.poll() is None:
                self.proc.popen.send_signal(1)  # SIGHUP: reload the password file
            return
        if self.bridge_managed:
            # Bound to its own client id, like the clients the bridge creates.
            self.ctrl("createClient", name, "-p", password, "-c", name)
            return
        self.ctrl("createClient", name, "-p", password)
        role = f"test-device-{name}"
        self.ctrl("createRole", role)
        for acltype, topic in [
            ("publishClientSend", f"devices/{name}/#"), ("subscribeLiteral", f"devices/{name}/commands"),
            ("subscribeLiteral", f"devices/{name}/errors"), ("subscribePattern", "rooms/+/messages"),
        ]:
            self.ctrl("addRoleACL", role, acltype, topic, "allow")
        self.ctrl("addClientRole", name, role)

    def start(self) -> None:
        binary = require_binary("mosquitto", "/usr/sbin/mosquitto")
        self.proc = start(
            f"mosquitto-{self.port}", [binary, "-c", str(self.directory / "mosquitto.conf")],
            log_dir=self.directory,
        )
        wait_for_port(self.port, proc=self.proc)

    def log(self) -> str:
        return self.proc.output() if self.proc is not None else ""

    def stop(self) -> None:
        """SIGTERM: mosquitto writes its persistence file and exits."""
        if self.proc is not None:
            self.proc.stop()
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


def dynsec_plugin() -> str:
    for pattern in PLUGIN_CANDIDATES:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    raise RuntimeError("mosquitto's dynamic security plugin is not installed (Debian: mosquitto)")


def mosquitto_config(directory: Path, port: int, *, static_acl: bool = False) -> str:
    template = (REPO / "deploy" / "mosquitto" / "mosquitto.conf").read_text()
    replaced = re.sub(r"(?m)^listener 1883$", f"listener {port} 127.0.0.1", template)
    if static_acl:
        replaced = re.sub(r"(?m)^plugin.*$", "", replaced)
        replaced += f"\npassword_file {directory}/passwd\nacl_file {directory}/acl\n"
    else:
        replaced = replaced.replace("/usr/lib/mosquitto_dynamic_security.so", dynsec_plugin())
    replaced = replaced.replace("/mosquitto/data/", f"{directory}/data/")
    replaced = re.sub(r"(?m)^log_dest stdout$", "log_dest stderr", replaced)
    # Run as root, mosquitto would switch to its own user, who cannot write our temp dir.
    return replaced + f"\nuser {getpass.getuser()}\n"


def mosquitto_server(
    directory: Path, users: dict[str, str] | None = None, *, acl: str | None = None,
    bridge_managed: bool = False,
) -> Mosquitto:
    """Started, with the bridge's account and `users` (name: password); see the module doc."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "data").mkdir(exist_ok=True)
    port = free_port()
    static = acl is not None
    (directory / "mosquitto.conf").write_text(mosquitto_config(directory, port, static_acl=static))
    broker = Mosquitto(directory=directory, port=port, static_acl=static, bridge_managed=bridge_managed)
    if static:
        (directory / "acl").write_text(acl or "")
        (directory / "passwd").write_text("")
        broker.add_user(BRIDGE_USER, BRIDGE_PASSWORD)
    else:
        subprocess.run(
            ["sh", str(REPO / "deploy" / "mosquitto" / "init-dynsec.sh"),
             str(directory / "data" / "dynamic-security.json"), BRIDGE_USER, BRIDGE_PASSWORD],
            check=True, capture_output=True,
        )
    broker.start()
    if not static and not bridge_managed:
        broker.ctrl("createRole", "test-bridge")
        for acltype, topic in LEGACY_BRIDGE_ACLS:
            broker.ctrl("addRoleACL", "test-bridge", acltype, topic, "allow")
        broker.ctrl("addClientRole", BRIDGE_USER, "test-bridge")
    for name, password in (users or {}).items():
        broker.add_user(name, password)
    return broker
