"""`python -m topology`: the compose file's topology on this machine (see README, "make stack")."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

from topology.compose import ComposeError
from topology.plan import REPO, Plan, make_plan
from topology.procfile import init_state, procfile
from topology.runner import reset_markers, signal_service, start


def _scale(values: list[str]) -> dict[str, int]:
    scale: dict[str, int] = {}
    for value in values:
        name, _, count = value.partition("=")
        if not count.isdigit() or int(count) < 1:
            raise ComposeError(f"--scale wants SERVICE=N (N >= 1), got {value!r}")
        scale[name] = int(count)
    return scale


def _command(plan: Plan, service: str, argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """`argv` as `docker compose exec SERVICE argv` would run it, made local."""
    process = plan.replicas(service)[0] if plan.replicas(service) else plan.by_name(service)
    env = dict(process.env)
    argv = [process.localize(part) for part in argv]
    if process.kind == "bridge":
        if argv and argv[0] == "python":
            argv = [sys.executable, *argv[1:]]
    elif process.kind == "prosody":
        if argv and argv[0] == "prosodyctl":
            argv = [argv[0], "--config", process.argv[process.argv.index("--config") + 1], *argv[1:]]
        if os.geteuid() == 0:
            env["PROSODY_RUN_AS_ROOT"] = "1"
    return argv, env


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m topology", description=__doc__)
    parser.add_argument("--state", default=".stack", help="the stack's folder (default .stack)")
    parser.add_argument("--scale", action="append", default=[], metavar="SERVICE=N")
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("procfile", help="write STATE/Procfile for honcho (and STATE/stack.env once)")
    one = sub.add_parser("start", help="start one process once its dependencies are ready")
    one.add_argument("name")
    run = sub.add_parser("run", help="like `docker compose run --rm SERVICE ARGS` (profile services too)")
    run.add_argument("service")
    run.add_argument("args", nargs=argparse.REMAINDER)
    exe = sub.add_parser("exec", help="like `docker compose exec SERVICE CMD`")
    exe.add_argument("service")
    exe.add_argument("cmd", nargs=argparse.REMAINDER)
    kill = sub.add_parser("kill", help="like `docker compose kill -s SIGNAL SERVICE`")
    kill.add_argument("-s", "--signal", default="SIGKILL")
    kill.add_argument("service")
    options = parser.parse_args()

    state = Path(options.state).resolve()
    try:
        init_state(state)
        profiles = ("tools",) if options.what in ("run", "exec") else ()
        plan = make_plan(state, scale=_scale(options.scale), profiles=profiles)
        if options.what == "procfile":
            reset_markers(plan)
            (state / "Procfile").write_text(procfile(plan, state_arg=options.state))
            sys.stdout.write(f"{state / 'Procfile'}:\n")
            for process in plan.processes.values():
                sys.stdout.write(f"  {process.name:<18} {process.address}\n")
            return 0
        if options.what == "start":
            start(plan, options.name)
        if options.what == "kill":
            name = options.signal.upper()
            try:
                sig = signal.Signals[name if name.startswith("SIG") else f"SIG{name}"]
            except KeyError:
                raise ComposeError(f"no signal {options.signal!r} (HUP, TERM, KILL, ...)") from None
            for signalled in signal_service(plan, options.service, sig):
                sys.stdout.write(f"{signalled}: {sig.name}\n")
            return 0
        if options.what == "run":
            process = plan.by_name(options.service)
            argv = [*process.entrypoint, *options.args] if options.args else process.argv
            return subprocess.call(argv, env=process.env, cwd=REPO)
        argv, env = _command(plan, options.service, options.cmd)
        return subprocess.call(argv, env=env, cwd=REPO)
    except ComposeError as exc:
        sys.stderr.write(f"topology: {exc}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
