"""paho-mqtt and asyncio: network thread + call_soon_threadsafe vs socket callbacks on the loop.

Receives N QoS 1 messages with manual acknowledgement from the asyncio loop,
as runmqtt does, both ways, against a real mosquitto. Prints messages/s.
Run: python -m benchmarks.mqtt_paho_loop [--messages 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from tests.support.mosquitto import BRIDGE_PASSWORD, BRIDGE_USER, mosquitto_server


def _client(name: str) -> paho.Client:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=paho.MQTTv5, manual_ack=True)
    client.username_pw_set(BRIDGE_USER, BRIDGE_PASSWORD)
    return client


async def receive_threaded(port: int, count: int) -> float:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[paho.MQTTMessage] = asyncio.Queue()
    subscribed = threading.Event()
    client = _client("bench-thread")
    client.on_message = lambda c, u, m: loop.call_soon_threadsafe(queue.put_nowait, m)
    client.on_subscribe = lambda *a: subscribed.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    client.subscribe("devices/#", qos=1)
    await asyncio.to_thread(subscribed.wait, 10)
    return await _consume(client, queue, port, count, stop=lambda: client.loop_stop())


async def receive_on_loop(port: int, count: int) -> float:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[paho.MQTTMessage] = asyncio.Queue()
    client = _client("bench-loop")
    timers: list[asyncio.TimerHandle] = []

    def misc() -> None:
        # paho's keep-alive timer, once a second while connected.
        if client.loop_misc() == MQTTErrorCode.MQTT_ERR_SUCCESS:
            timers.append(loop.call_later(1, misc))

    def opened(c: Any, u: Any, sock: socket.socket) -> None:
        loop.add_reader(sock, c.loop_read)
        misc()

    client.on_socket_open = opened
    client.on_socket_close = lambda c, u, sock: loop.remove_reader(sock)
    client.on_socket_register_write = lambda c, u, sock: loop.add_writer(sock, c.loop_write)
    client.on_socket_unregister_write = lambda c, u, sock: loop.remove_writer(sock)
    client.on_message = lambda c, u, m: queue.put_nowait(m)
    subscribed = asyncio.Event()
    client.on_subscribe = lambda *a: subscribed.set()
    client.connect("127.0.0.1", port)
    client.subscribe("devices/#", qos=1)
    await asyncio.wait_for(subscribed.wait(), 10)

    def stop() -> None:
        client.disconnect()
        for timer in timers:
            timer.cancel()

    return await _consume(client, queue, port, count, stop=stop)


async def _consume(client: paho.Client, queue: asyncio.Queue[paho.MQTTMessage], port: int, count: int, stop: Any) -> float:
    publisher = threading.Thread(target=_publish, args=(port, count))
    publisher.start()
    first = await queue.get()
    started = time.monotonic()
    client.ack(first.mid, first.qos)
    for _ in range(count - 1):
        message = await queue.get()
        client.ack(message.mid, message.qos)
    elapsed = time.monotonic() - started
    await asyncio.to_thread(publisher.join)
    stop()
    return (count - 1) / elapsed


def _publish(port: int, count: int) -> None:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{time.monotonic()}", protocol=paho.MQTTv5)
    client.username_pw_set("dev", "dev")
    client.max_inflight_messages_set(1000)
    client.connect("127.0.0.1", port)
    client.loop_start()
    infos = [client.publish("devices/dev/rooms/lobby", b'{"text": "x"}', qos=1) for _ in range(count)]
    for info in infos:
        info.wait_for_publish(60)
    client.disconnect()
    client.loop_stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        broker = mosquitto_server(Path(tmp) / "mosquitto", {"dev": "dev"})
        try:
            for name, receive in (("network thread + call_soon_threadsafe", receive_threaded),
                                  ("socket callbacks on the asyncio loop", receive_on_loop)) * 2:
                rate = asyncio.run(receive(broker.port, args.messages))
                print(f"{name:40} {rate:8.0f} msg/s received and acknowledged")
        finally:
            broker.stop()


if __name__ == "__main__":
    main()
