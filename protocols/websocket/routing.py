from django.urls import re_path

from protocols.websocket.consumers import RoomConsumer, UnknownPathConsumer

# Any name is routed, so a bad or unknown room gets an error frame, not a bare refusal.
websocket_urlpatterns = [
    re_path(r"^ws/rooms/(?P<room>[^/]{1,200})/$", RoomConsumer.as_asgi()),
    # Anything else (ws/rooms/secret/.., junk): a clean refusal, not "No route found" (a 500).
    re_path(r"", UnknownPathConsumer.as_asgi()),
]
