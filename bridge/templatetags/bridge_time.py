"""How long ago, for people: "just now", "3 minutes ago", "2 days ago"."""

from __future__ import annotations

from datetime import datetime

from django import template
from django.utils import timezone
from django.utils.timesince import timesince

register = template.Library()


@register.filter
def ago(when: datetime | None, now: datetime | None = None) -> str:
    if when is None:
        return ""
    now = now or timezone.now()
    if (now - when).total_seconds() < 60:
        return "just now"
    # One unit only ("3 minutes", not "3 minutes, 2 seconds"); non-breaking spaces made plain.
    return timesince(when, now, depth=1).replace("\xa0", " ") + " ago"
