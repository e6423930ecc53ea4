"""The peer's ASGI application: the tutorial chat under `ws/chat/<room>/`, MQTT under mqttasgi."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.peers.settings")

import django

django.setup()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402

from benchmarks.peers.consumers import ChatConsumer  # noqa: E402

urlpatterns: list = []
routes = {"websocket": URLRouter([path("ws/chat/<str:room_name>/", ChatConsumer.as_asgi())])}
if os.environ.get("PEER_MQTT"):
    from benchmarks.peers.mqtt import DeviceChatConsumer

    routes["mqtt"] = DeviceChatConsumer.as_asgi()
application = ProtocolTypeRouter(routes)
