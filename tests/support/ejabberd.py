"""A real ejabberd for integration tests: the repo's example config, free loopback ports, a temp dir.

`deploy/ejabberd/ejabberd.yml` keeps its settings in `define_macro`; this copy
replaces the macros' values (ports, secret, certificate) and runs it with
Debian's ejabberd. ejabberd is an Erlang node: it runs here under its own
`epmd` on a free port (`ERL_EPMD_PORT`), a unique node name and a random
cookie, with `HOME` and the Mnesia spool in the temp dir, so nothing is shared
with another test or a system ejabberd. `ejabberdctl` itself insists on
running as the `ejabberd` user, so accounts are made the way it does,
through `ejabberd_ctl` on a hidden node.
"""

from __future__ import annotations

import re
import secrets
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.processes import REPO, Proc, free_port, require_binary, start, wait_for_port
from tests.support.prosody import make_cert

CONFIG = REPO / "deploy" / "ejabberd" / "ejabberd.yml"
ERL_LIBS = "/usr/lib/x86_64-linux-gnu"


def _macro(text: str, name: str, value: str | int) -> str:
    rendered = f'"{value}"' if isinstance(value, str) else str(value)
    replaced, count = re.subn(rf"^(\s+'{name}':) .*$", lambda m: f"{m.group(1)} {rendered}", text,
                              count=1, flags=re.M)
    if count != 1:
        raise RuntimeError(f"{CONFIG} has no macro {name}")
    return replaced


@dataclass
class Ejabberd:
    """One ejabberd node; `restart` (kill, then `start`) keeps its ports, spool and accounts."""

    base: Path
    domain: str = "localhost"
    secret: str = "component-secret-for-tests"
    c2s_port: int = field(default_factory=free_port)
    component_port: int = field(default_factory=free_port)
    epmd_port: int = field(default_factory=free_port)
    node: str = field(default_factory=lambda: f"bridgetest{secrets.token_hex(4)}@localhost")
    cookie: str = field(default_factory=lambda: secrets.token_hex(16))
    proc: Proc | None = None
    epmd: Proc | None = None
    starts: int = 0
    name: str = "ejabberd"

    @property
    def muc(self) -> str:
        return f"conference.{self.domain}"

    @property
    def component(self) -> str:
        return f"bridge.{self.domain}"

    @property
    def home(self) -> Path:
        return self.base / "ejabberd"

    @property
    def ca_file(self) -> Path:
        return self.home / "certs" / f"{self.domain}.crt"

    def env(self) -> dict[str, str]:
        return {
            "PATH": "/usr/bin:/bin:/usr/sbin:/sbin",
            "HOME": str(self.home),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_LIBS": ERL_LIBS,
            "EJABBERD_CONFIG_PATH": str(self.home / "ejabberd.yml"),
            "EJABBERD_LOG_PATH": str(self.home / "ejabberd.log"),
            "ERL_CRASH_DUMP": str(self.home / "erl_crash.dump"),
            "ERL_CRASH_DUMP_BYTES": "0",
        }

    def bridge_settings(self) -> dict[str, str]:
        return {
            "XMPP_DOMAIN": self.domain,
            "XMPP_COMPONENT_JID": self.component,
            "XMPP_COMPONENT_SECRET": self.secret,
            "XMPP_SERVER_HOST": "127.0.0.1",
            "XMPP_SERVER_PORT": str(self.component_port),
            "XMPP_MUC_SERVICE": self.muc,
        }

    def _write_config(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        pem = self.home / "certs" / "bridge.pem"
        if not pem.exists():
            crt = make_cert(self.home / "certs", self.domain, self.muc)
            key = crt.with_suffix(".key")
            pem.write_text(crt.read_text() + key.read_text())
            pem.chmod(0o600)
        text = CONFIG.read_text()
        for name, value in (
            ("DOMAIN", self.domain), ("MUC_SERVICE", self.muc), ("COMPONENT", self.component),
            ("COMPONENT_SECRET", self.secret), ("INTERFACE", "127.0.0.1"),
            ("C2S_PORT", self.c2s_port), ("COMPONENT_PORT", self.component_port),
            ("CERTFILE", str(pem)), ("SQLITE_FILE", str(self.home / "bridge.db")),
        ):
            text = _macro(text, name, value)
        (self.home / "ejabberd.yml").write_text(text)

    def start(self) -> Proc:
        self._write_config()
        if self.epmd is None or self.epmd.popen.poll() is not None:
            self.epmd = start("epmd", [require_binary("epmd"), "-port", str(self.epmd_port),
                                       "-address", "127.0.0.1"],
                              log_dir=self.base, env=self.env())
            wait_for_port(self.epmd_port, proc=self.epmd)
        self.starts += 1
        self.proc = start(
            f"ejabberd-{self.starts}",
            [require_binary("erl"), "-sname", self.node, "-setcookie", self.cookie, "-noinput",
             "-mnesia", "dir", f'"{self.home / "spool"}"', "-s", "ejabberd"],
            log_dir=self.base, env=self.env(), cwd=self.home,
        )
        wait_for_port(self.c2s_port, proc=self.proc, timeout=60)
        wait_for_port(self.component_port, proc=self.proc, timeout=60)
        return self.proc

    def register(self, user: str, password: str) -> str:
        """A local account, made through ejabberd_ctl as ejabberdctl would; its JID.

        The listeners open before every module has started: a refusal is asked again
        (ejabberd_ctl says nothing but its exit status then) for up to 30 s."""
        deadline = time.monotonic() + 30
        while True:
            done = subprocess.run(
                [require_binary("erl"), "-sname", f"ctl{secrets.token_hex(4)}@localhost",
                 "-setcookie", self.cookie, "-hidden", "-noinput", "-s", "ejabberd_ctl",
                 "-extra", self.node, "register", user, self.domain, password],
                env=self.env(), cwd=self.home, capture_output=True, text=True, timeout=60,
                check=False,
            )
            if done.returncode == 0:
                return f"{user}@{self.domain}"
            if time.monotonic() > deadline:
                raise RuntimeError(f"ejabberd register failed ({done.returncode}):\n"
                                   f"{done.stdout}\n{done.stderr}\n{self.output()}")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(timeout=20)
        if self.epmd is not None:
            self.epmd.stop()

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()

    def output(self) -> str:
        log = self.home / "ejabberd.log"
        return log.read_text(errors="replace")[-6000:] if log.exists() else ""
