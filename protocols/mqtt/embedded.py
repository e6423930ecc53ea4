"""The MQTT edge inside `runbridge`: the protocol server, and an embedded broker without MQTT_URL."""

from __future__ import annotations

from django.conf import settings

from bridge.embedded import EmbeddedContext
from bridge.runfile import run_file_entry
from protocols.mqtt.broker import EmbeddedBroker, embedded_broker, plan_broker
from protocols.mqtt.config import PRIVATE_ROOMS_OFF, MqttConfig, default_client_id
from protocols.mqtt.credentials import edge_topics
from protocols.mqtt.permission_sync import broker_permissions
from protocols.mqtt.server import MqttServer


async def serve(ctx: EmbeddedContext) -> None:
    from project.asgi import application

    if settings.MQTT_URL:
        config = MqttConfig.from_url(settings.MQTT_URL)
        ctx.banner.append(f"mqtt: bridging {config.broker} (MQTT_URL) as {config.client_id}")
        if not config.dynsec:
            ctx.banner.append(PRIVATE_ROOMS_OFF)
        ctx.started()  # it connects (and reconnects) by itself from here
        with run_file_entry("mqtt", {"host": config.host, "port": config.port}):
            async with broker_permissions(config, edge_topics()):
                await MqttServer(application, config).run()
        return
    # Decided before the first await, so the banner is complete when the web server is ready.
    planned, binary = plan_broker("127.0.0.1", ctx.mqtt_port)
    ctx.banner.append(_banner(planned))
    async with embedded_broker(planned, binary) as broker:
        ctx.started()
        config = MqttConfig(
            host=broker.host,
            port=broker.port,
            client_id=settings.MQTT_CLIENT_ID or default_client_id(),
            # amqtt hangs on an MQTT 5 CONNECT with properties instead of refusing it.
            protocol="3.1.1" if broker.kind == "amqtt" else settings.MQTT_PROTOCOL,
            keepalive=settings.MQTT_KEEPALIVE,
            session_expiry=settings.MQTT_SESSION_EXPIRY,
            reconnect_max=settings.MQTT_RECONNECT_MAX,
        )
        with run_file_entry("mqtt", {"host": broker.host, "port": broker.port}):
            await MqttServer(application, config).run()


def _banner(broker: EmbeddedBroker) -> str:
    prefix = f"{settings.MQTT_TOPIC_PREFIX}/" if settings.MQTT_TOPIC_PREFIX else ""
    return (
        f"mqtt: embedded {broker.kind} broker on {broker.url} (development: anonymous, no "
        "per-device permissions, so any client may publish as any device and read every "
        "public room; private rooms are not published on it. Per-device permissions: "
        "MQTT_URL to a mosquitto with dynamic security and MQTT_DYNSEC=1); try\n"
        f"      mosquitto_sub -p {broker.port} -t '{prefix}rooms/lobby/messages' &\n"
        f"      mosquitto_pub -p {broker.port} -t '{prefix}devices/my-device/rooms/lobby' -m 'hello'"
    )
