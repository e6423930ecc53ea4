"""The protocol router: one ASGI application for every edge."""

from __future__ import annotations

from typing import Any

from channels.routing import ChannelNameRouter, ProtocolTypeRouter
from django.conf import settings
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

from bridge.tasks.consumer import TaskConsumer
from bridge.tasks.telemetry import TelemetryConsumer
from protocols.mqtt.routing import mqtt_application
from protocols.websocket.entry import WebSocketEntry
from protocols.websocket.routing import websocket_urlpatterns
from protocols.websocket.security import OriginPolicy
from protocols.xmpp.routing import xmpp_application


def build_application(django_asgi_app: Any) -> ProtocolTypeRouter:
    return ProtocolTypeRouter(
        {
            "http": ASGIStaticFilesHandler(django_asgi_app),
            # The Origin check, sign-in (session, token) and routing, in one frame per socket.
            "websocket": WebSocketEntry(websocket_urlpatterns, OriginPolicy.from_settings()),
            # The MQTT protocol server (runmqtt) opens one instance per broker connection.
            "mqtt": mqtt_application,
            # The XMPP protocol server (runxmpp) opens one instance per component connection.
            "xmpp": xmpp_application,
            "channel": ChannelNameRouter(
                {
                    settings.BRIDGE_TASKS_CHANNEL: TaskConsumer.as_asgi(),
                    settings.BRIDGE_TELEMETRY_CHANNEL: TelemetryConsumer.as_asgi(),
                }
            ),
        }
    )
