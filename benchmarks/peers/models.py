"""What the mqttasgi peer stores: one row per message, no sequence, no idempotency key."""

from django.db import models


class ChatMessage(models.Model):
    room = models.CharField(max_length=100)
    sender = models.CharField(max_length=100)
    text = models.TextField()
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        app_label = "peers"
