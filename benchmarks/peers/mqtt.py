"""An mqttasgi consumer as its README shows one: subscribe, store with the ORM, `group_send`.

Runs only under mqttasgi (its own virtualenv: see benchmarks/peer_env.py).
Devices publish on the bridge's topics, `devices/<device>/rooms/<room>`.
"""

import json

from channels.db import database_sync_to_async
from mqttasgi.consumers import MqttConsumer

from benchmarks.peers.models import ChatMessage


class DeviceChatConsumer(MqttConsumer):
    async def connect(self):
        await self.subscribe("devices/+/rooms/+", 1)

    async def receive(self, mqtt_message):
        _, device, _, room = mqtt_message["topic"].split("/")
        body = json.loads(mqtt_message["payload"])
        await database_sync_to_async(ChatMessage.objects.create)(room=room, sender=device, text=body["text"])
        await self.channel_layer.group_send(f"chat_{room}", {"type": "chat.message", "message": body["text"]})

    async def disconnect(self):
        pass
