from django.apps import AppConfig


class BridgeConfig(AppConfig):
    name = "bridge"
    verbose_name = "Bridge"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from bridge import signals

        signals.connect()
