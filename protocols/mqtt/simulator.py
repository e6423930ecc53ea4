"""Simulated devices for `simulate_devices`: realistic readings, one aiomqtt client each.

Device-side code, so it uses aiomqtt (asyncio, one loop for many devices); the
bridge itself stays on paho for its manual acknowledgements.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiomqtt

logger = logging.getLogger(__name__)

UNITS = {"temperature": "°C", "humidity": "%", "env.battery": "%"}
EXCURSION_TO = 35.0  # °C: over the demo rule's 30, then back under 29 (its hysteresis)


@dataclass
class Signal:
    """A value drifting around `base` with noise; an excursion pulls it towards a target."""

    base: float
    value: float
    drift: float
    noise: float
    rng: random.Random
    target: float | None = None

    def step(self) -> float:
        goal = self.target if self.target is not None else self.base
        pull = 0.35 if self.target is not None else 0.08
        self.value += (goal - self.value) * pull + self.rng.gauss(0, self.drift)
        return round(self.value + self.rng.gauss(0, self.noise), 2)


@dataclass
class Readings:
    """One device's sensors: temperature, humidity and a slowly draining battery."""

    rng: random.Random
    temperature: Signal = field(init=False)
    humidity: Signal = field(init=False)
    battery: float = 100.0

    def __post_init__(self) -> None:
        base = 19.0 + self.rng.uniform(0, 5)
        self.temperature = Signal(base, base, drift=0.05, noise=0.15, rng=self.rng)
        hum = 45.0 + self.rng.uniform(0, 20)
        self.humidity = Signal(hum, hum, drift=0.2, noise=0.5, rng=self.rng)

    def excursion(self, on: bool) -> None:
        self.temperature.target = EXCURSION_TO if on else None

    def next(self) -> dict[str, object]:
        self.battery = max(0.0, self.battery - self.rng.uniform(0, 0.02))
        return {
            "temperature": self.temperature.step(),
            "humidity": self.humidity.step(),
            "env": {"battery": round(self.battery, 2)},
            "units": UNITS,
        }


@dataclass(frozen=True, kw_only=True)
class Broker:
    host: str
    port: int
    password: str | None = None
    prefix: str = ""

    def topic(self, tail: str) -> str:
        return f"{self.prefix}/{tail}" if self.prefix else tail


class SimulatedDevice:
    """One device: its own aiomqtt client with its own Last Will (`status` = offline)."""

    def __init__(self, *, name: str, broker: Broker, room: str, seed: int,
                 say: Callable[[str], None]) -> None:
        self.name = name
        self.broker = broker
        self.room = room
        self.readings = Readings(random.Random(seed))
        self.say = say
        self.sent = 0

    def client(self) -> aiomqtt.Client:
        return aiomqtt.Client(
            self.broker.host, self.broker.port,
            identifier=f"{self.name}-{int(time.time() * 1000) % 10**8}",
            username=self.name if self.broker.password is not None else None,
            password=self.broker.password,
            will=aiomqtt.Will(self._topic("status"), "offline", qos=1, retain=True),
            protocol=aiomqtt.ProtocolVersion.V5, keepalive=30, timeout=10,
            max_queued_incoming_messages=100,  # commands: a bounded queue, extra ones wait
        )

    def _topic(self, tail: str) -> str:
        return self.broker.topic(f"devices/{self.name}/{tail}")

    async def run(self, *, rate: float, run_id: str, stop: asyncio.Event) -> None:
        """A hello into the room, online, readings at `rate` per second until `stop`, offline."""
        async with self.client() as client:
            await client.subscribe(self._topic("commands"), qos=1)
            # Hello first: a device new to a development bridge joins the room it first posts into,
            # so its status then shows there.
            hello = {"text": f"{self.name} is here", "id": f"{run_id}-{self.name}-hello"}
            await client.publish(self._topic(f"rooms/{self.room}"), json.dumps(hello), qos=1)
            await client.publish(self._topic("status"), "online", qos=1, retain=True)
            answers = asyncio.create_task(self._answer(client))
            answers.add_done_callback(self._answers_ended)
            try:
                while not stop.is_set():
                    reading = {"id": f"{run_id}-{self.name}-{self.sent}", **self.readings.next()}
                    await client.publish(self._topic("telemetry"), json.dumps(reading), qos=1)
                    self.sent += 1
                    try:
                        await asyncio.wait_for(stop.wait(), timeout=1 / rate)
                    except TimeoutError:
                        pass
            finally:
                answers.cancel()
                await asyncio.gather(answers, return_exceptions=True)
            await client.publish(self._topic("status"), "offline", qos=1, retain=True)

    def _answers_ended(self, task: asyncio.Task[None]) -> None:
        """Said once if answering commands failed while the device goes on sending readings."""
        if not task.cancelled() and task.exception() is not None:
            self.say(f"{self.name} no longer answers commands: {task.exception()!r}")

    async def _answer(self, client: aiomqtt.Client) -> None:
        """Answer each command in the room, so people see the device did something."""
        async for message in client.messages:
            try:
                command = json.loads(bytes(message.payload or b""))
                text = str(command.get("text", ""))[:200]
            except (ValueError, AttributeError):
                continue
            self.say(f"{self.name} got command {text!r}")
            answer = {"text": f"{self.name}: done: {text}", "data": {"command": command.get("id")}}
            await client.publish(self._topic(f"rooms/{self.room}"), json.dumps(answer), qos=1)
