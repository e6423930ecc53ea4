"""`simulate_devices`: several devices posting chat, telemetry and status, with a progress bar."""

from __future__ import annotations

import argparse
import json
import random
import threading
import time
import uuid
from typing import Any
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as paho
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from paho.mqtt.enums import CallbackAPIVersion
from tqdm import tqdm


class Acks:
    """PUBACKs counted across every device's network thread; `done` is set at `total`."""

    def __init__(self, total: int, progress: tqdm[Any]) -> None:
        self.total, self.count = total, 0
        self.done = threading.Event()
        self._progress = progress
        self._lock = threading.Lock()

    def add(self) -> None:
        with self._lock:
            self.count += 1
            if self.count >= self.total:
                self.done.set()
        self._progress.update(1)


class SimulatedDevice:
    """One paho client with the device's Last Will; counts the broker's acknowledgements."""

    def __init__(self, *, name: str, host: str, port: int, password: str | None, acks: Acks) -> None:
        self.name = name
        self._acks = acks
        self._connected = threading.Event()
        client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"sim-{name}-{uuid.uuid4().hex[:6]}", protocol=paho.MQTTv5
        )
        if password is not None:
            client.username_pw_set(name, password)
        client.will_set(f"{_prefix()}devices/{name}/status", "offline", qos=1, retain=True)
        client.max_inflight_messages_set(200)
        client.on_connect = lambda c, u, f, rc, p: self._connected.set() if not rc.is_failure else None
        client.on_publish = self._on_publish
        client.connect(host, port, keepalive=30)
        client.loop_start()
        if not self._connected.wait(10):
            client.loop_stop()
            raise CommandError(f"{name} could not connect to {host}:{port} (credentials? ACL?)")
        self.client = client

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        self._acks.add()

    def publish(self, tail: str, payload: str, *, retain: bool = False) -> None:
        self.client.publish(f"{_prefix()}devices/{self.name}/{tail}", payload, qos=1, retain=retain)

    def stop(self, *, will: bool) -> None:
        if not will:
            self.publish("status", "offline", retain=True)
        self.client.disconnect()
        self.client.loop_stop()


def _prefix() -> str:
    return f"{settings.MQTT_TOPIC_PREFIX}/" if settings.MQTT_TOPIC_PREFIX else ""


class Command(BaseCommand):
    help = "Play several MQTT devices posting chat, telemetry and status into a room."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--url", default="mqtt://127.0.0.1:1883", help="the broker (devices' side)")
        parser.add_argument("--devices", type=int, default=3)
        parser.add_argument("--messages", type=int, default=20, help="chat messages per device")
        parser.add_argument("--room", default="lobby")
        parser.add_argument("--name", default="sim", help="device ids are NAME-0, NAME-1, ...")
        parser.add_argument("--password", default=None, help="every device's broker password")
        parser.add_argument("--telemetry-every", type=int, default=5, help="a reading every N messages (0: none)")
        parser.add_argument("--rate", type=float, default=0, help="messages per second per device (0: as fast as possible)")
        parser.add_argument("--run-id", default=None, help="makes the messages' ids unique per run")

    def handle(self, *args: Any, **options: Any) -> None:
        parts = urlsplit(options["url"])
        if parts.scheme != "mqtt" or not parts.hostname:
            raise CommandError("--url must be mqtt://host[:port]")
        password = options["password"] or (unquote(parts.password) if parts.password else None)
        count, per_device = options["devices"], options["messages"]
        every = options["telemetry_every"]
        run_id = options["run_id"] or uuid.uuid4().hex[:8]
        readings = (per_device // every) if every else 0
        total = count * (per_device + readings + 1)
        progress = tqdm(total=total, unit="msg", desc="acknowledged by the broker")
        acks = Acks(total, progress)
        devices = [
            SimulatedDevice(
                name=f"{options['name']}-{n}", host=parts.hostname, port=parts.port or 1883,
                password=password, acks=acks,
            )
            for n in range(count)
        ]
        started = time.monotonic()
        delay = 1 / options["rate"] if options["rate"] else 0
        for device in devices:
            device.publish("status", "online", retain=True)
        for i in range(per_device):
            for device in devices:
                body = {"text": f"{device.name} says {i}", "id": f"{run_id}-{device.name}-{i}"}
                device.publish(f"rooms/{options['room']}", json.dumps(body))
                if every and (i + 1) % every == 0:
                    reading = {"temperature": round(random.uniform(18, 26), 2), "seq": i}
                    device.publish("telemetry", json.dumps(reading))
            if delay:
                time.sleep(delay)
        if not acks.done.wait(timeout=600):
            raise CommandError(f"the broker acknowledged {acks.count} of {total} messages")
        elapsed = time.monotonic() - started
        progress.close()
        for device in devices:
            device.stop(will=False)
        self.stdout.write(
            f"{count} devices published {total} messages in {elapsed:.2f} s "
            f"({total / elapsed:.0f}/s acknowledged by the broker)"
        )
