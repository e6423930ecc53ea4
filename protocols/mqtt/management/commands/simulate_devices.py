"""`simulate_devices`: devices with realistic readings (or a burst of chat), one asyncio loop.

Each device is its own aiomqtt client with its own Last Will. By default it
finds the broker of the `runbridge` running on this machine (its run file),
else 127.0.0.1:1883.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
import uuid
from typing import Any
from urllib.parse import unquote, urlsplit

import aiomqtt
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from bridge.runfile import run_file_read
from protocols.mqtt.simulator import Broker, SimulatedDevice

FIRST_EXCURSION = 10.0  # seconds after the start: a new user sees an alert within a minute


class Command(BaseCommand):
    help = (
        "Play MQTT devices: realistic telemetry (drift, noise, an excursion now and then) "
        "and answers to commands; or, with --messages, a burst of chat messages."
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--url", default=None,
                            help="the broker (devices' side); default: runbridge's, else mqtt://127.0.0.1:1883")
        parser.add_argument("--devices", type=int, default=3)
        parser.add_argument("--room", default="lobby", help="where devices say hello and answer commands")
        parser.add_argument("--name", default="sim", help="device ids are NAME-0, NAME-1, ...")
        parser.add_argument("--password", default=None, help="every device's broker password")
        parser.add_argument("--rate", type=float, default=None,
                            help="per device and second: readings (default 1), or with --messages "
                                 "chat messages (default: as fast as the broker takes them)")
        parser.add_argument("--duration", type=float, default=0, help="seconds to run (0: until Ctrl-C)")
        parser.add_argument("--excursion-every", type=float, default=45,
                            help="seconds between temperature excursions to 35 °C, one device at a time (0: none)")
        parser.add_argument("--excursion-for", type=float, default=12, help="seconds an excursion lasts")
        parser.add_argument("--messages", type=int, default=0,
                            help="burst mode: this many chat messages per device, then stop")
        parser.add_argument("--telemetry-every", type=int, default=5,
                            help="burst mode: a reading every N messages (0: none)")
        parser.add_argument("--run-id", default=None, help="makes the ids unique per run")
        parser.add_argument("--seed", type=int, default=None, help="for repeatable readings")

    def handle(self, *args: Any, **options: Any) -> None:
        broker = self._broker(options["url"], options["password"])
        if options["devices"] < 1:
            raise CommandError("--devices must be at least 1")
        run_id = options["run_id"] or uuid.uuid4().hex[:8]
        try:
            if options["messages"] > 0:
                asyncio.run(self._burst(broker, options, run_id))
            else:
                asyncio.run(self._live(broker, options, run_id))
        except aiomqtt.MqttError as exc:
            raise CommandError(
                f"MQTT broker at {broker.host}:{broker.port}: {exc} "
                "(is runbridge running? else give --url mqtt://host:port, and --password)"
            ) from exc

    def _broker(self, url: str | None, password: str | None) -> Broker:
        prefix = settings.MQTT_TOPIC_PREFIX
        if url is None:
            found = run_file_read().get("mqtt")
            if isinstance(found, dict):
                self.stdout.write(f"using runbridge's broker at {found['host']}:{found['port']}")
                return Broker(host=found["host"], port=int(found["port"]), password=password, prefix=prefix)
            url = "mqtt://127.0.0.1:1883"
        parts = urlsplit(url)
        try:
            port = parts.port or 1883
        except ValueError as exc:
            raise CommandError(f"--url has a bad port: {exc}") from exc
        if parts.scheme != "mqtt" or not parts.hostname:
            raise CommandError("--url must be mqtt://host[:port]")
        password = password or (unquote(parts.password) if parts.password else None)
        return Broker(host=parts.hostname, port=port, password=password, prefix=prefix)

    def _say(self, line: str) -> None:
        self.stdout.write(f"{time.strftime('%H:%M:%S')} {line}")
        self.stdout.flush()

    async def _live(self, broker: Broker, options: dict[str, Any], run_id: str) -> None:
        seed = options["seed"] if options["seed"] is not None else int(time.time())
        devices = [
            SimulatedDevice(name=f"{options['name']}-{n}", broker=broker, room=options["room"],
                            seed=seed + n, say=self._say)
            for n in range(options["devices"])
        ]
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        rate = options["rate"] or 1.0
        self._say(f"{len(devices)} devices, {rate:g} reading(s)/s each, into room {options['room']!r}"
                  f" via {broker.host}:{broker.port}; Ctrl-C stops")
        runs = [asyncio.create_task(d.run(rate=rate, run_id=run_id, stop=stop)) for d in devices]
        extras = [asyncio.create_task(self._excursions(devices, options, stop), name="excursions")]
        if options["duration"]:
            extras.append(asyncio.create_task(_stop_after(options["duration"], stop), name="--duration"))
        for task in extras:
            task.add_done_callback(self._extra_ended)
        try:
            done, _ = await asyncio.wait(runs, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()  # a device that could not connect stops the run with its reason
        finally:
            stop.set()
            for task in extras:
                task.cancel()
            await asyncio.gather(*runs, *extras, return_exceptions=True)
        self._say(f"stopped; {sum(d.sent for d in devices)} readings sent")

    def _extra_ended(self, task: asyncio.Task[None]) -> None:
        """An excursion or the --duration timer that failed is said when it fails, not lost
        in the final gather (the devices go on)."""
        if not task.cancelled() and task.exception() is not None:
            self._say(f"{task.get_name()} failed: {task.exception()!r}")

    async def _excursions(self, devices: list[SimulatedDevice], options: dict[str, Any],
                          stop: asyncio.Event) -> None:
        every, lasting = options["excursion_every"], options["excursion_for"]
        if not every:
            return
        await asyncio.sleep(min(FIRST_EXCURSION, every))
        turn = 0
        while not stop.is_set():
            device = devices[turn % len(devices)]
            turn += 1
            self._say(f"{device.name}: temperature heads for 35 °C for {lasting:g} s")
            device.readings.excursion(True)
            await asyncio.sleep(lasting)
            device.readings.excursion(False)
            self._say(f"{device.name}: temperature back to normal")
            await asyncio.sleep(max(0.0, every - lasting))

    async def _burst(self, broker: Broker, options: dict[str, Any], run_id: str) -> None:
        """Chat messages as fast as the broker takes them (benchmarks), with a progress bar."""
        count, per_device, every = options["devices"], options["messages"], options["telemetry_every"]
        readings = (per_device // every) if every else 0
        total = count * (per_device + readings + 1)
        delay = 1 / options["rate"] if options["rate"] else 0
        progress = tqdm(total=total, unit="msg", desc="acknowledged by the broker")
        devices = [SimulatedDevice(name=f"{options['name']}-{n}", broker=broker, room=options["room"],
                                   seed=n, say=self._say) for n in range(count)]
        started = time.monotonic()

        async def play(device: SimulatedDevice) -> None:
            async with device.client() as client:
                inflight = asyncio.Semaphore(200)

                async def send(tail: str, payload: str, retain: bool = False) -> None:
                    async with inflight:  # QoS 1: returns on the broker's PUBACK
                        await client.publish(broker.topic(f"devices/{device.name}/{tail}"), payload,
                                             qos=1, retain=retain)
                    progress.update(1)

                sends = [asyncio.create_task(send("status", "online", True))]
                for i in range(per_device):
                    body = {"text": f"{device.name} says {i}", "id": f"{run_id}-{device.name}-{i}"}
                    sends.append(asyncio.create_task(send(f"rooms/{options['room']}", json.dumps(body))))
                    if every and (i + 1) % every == 0:
                        sends.append(asyncio.create_task(send("telemetry", json.dumps(device.readings.next()))))
                    await asyncio.sleep(delay)  # 0: yield, so sends start while we queue more
                await asyncio.gather(*sends)
                await client.publish(broker.topic(f"devices/{device.name}/status"), "offline",
                                     qos=1, retain=True)

        await asyncio.gather(*(play(d) for d in devices))
        elapsed = time.monotonic() - started
        progress.close()
        self.stdout.write(
            f"{count} devices published {total} messages in {elapsed:.2f} s "
            f"({total / elapsed:.0f}/s acknowledged by the broker)"
        )


async def _stop_after(seconds: float, stop: asyncio.Event) -> None:
    await asyncio.sleep(seconds)
    stop.set()
