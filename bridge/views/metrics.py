"""GET /metrics on the web process: Prometheus metrics, for the networks allowed to scrape."""

from __future__ import annotations

import ipaddress
import logging

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse

from bridge.instruments import render

logger = logging.getLogger(__name__)


def _allowed(address: str) -> bool:
    try:
        client = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(client in network for network in settings.METRICS_NETWORKS)


async def metrics(request: HttpRequest) -> HttpResponse:
    """Only from METRICS_ALLOWED_NETWORKS (behind a proxy, the client's address as it passed on)."""
    address = request.META.get("REMOTE_ADDR") or ""
    if not _allowed(address):
        logger.warning("/metrics refused to %s (not in METRICS_ALLOWED_NETWORKS)", address or "?")
        return JsonResponse(
            {"error": {"code": "forbidden", "detail": "Metrics are for the operators' networks only."}},
            status=403,
        )
    if request.method not in ("GET", "HEAD"):
        return JsonResponse({"error": {"code": "method_not_allowed", "detail": "Use GET."}}, status=405)
    body, content_type = await sync_to_async(render)()
    return HttpResponse(body, content_type=content_type)
