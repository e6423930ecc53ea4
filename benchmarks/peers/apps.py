from django.apps import AppConfig


class PeersConfig(AppConfig):
    name = "benchmarks.peers"
    label = "peers"
