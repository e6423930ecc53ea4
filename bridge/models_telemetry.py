"""What the worker derives from telemetry: rollups per window, last readings, alert rules."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q

from bridge.models import Device, Room


class TelemetryRollup(models.Model):
    """count/min/max/sum/last of one device's metric over one fixed window.

    Rows are added to by `telemetry_roll_up` only, in the transaction that marks
    the readings rolled up, so each reading is in each of its windows exactly once.
    """

    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="rollups")
    metric = models.CharField(max_length=200)
    # "1m" or "1h": the short and the long window (TELEMETRY_WINDOW_SHORT/LONG seconds).
    period = models.CharField(max_length=8)
    start = models.DateTimeField()
    count = models.PositiveIntegerField()
    min = models.FloatField()
    max = models.FloatField()
    sum = models.FloatField()
    last = models.FloatField()
    last_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["device", "metric", "period", "start"], name="rollup_device_metric_window"
            )
        ]
        indexes = [models.Index(fields=["period", "start"], name="rollup_period_start")]

    def __str__(self) -> str:
        return f"{self.device_id} {self.metric} {self.period}@{self.start:%Y-%m-%d %H:%M:%S}"

    @property
    def mean(self) -> float:
        return self.sum / self.count if self.count else 0.0


class DeviceMetric(models.Model):
    """The latest value of one metric of one device (the devices panel, silence rules)."""

    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="metrics")
    metric = models.CharField(max_length=200)
    value = models.FloatField()
    at = models.DateTimeField()
    unit = models.CharField(max_length=16, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["device", "metric"], name="devicemetric_device_metric")
        ]

    def __str__(self) -> str:
        return f"{self.device_id} {self.metric}={self.value}{self.unit}"


class AlertRule(models.Model):
    """When a device's metric crosses a line (or the device goes quiet), tell rooms."""

    class Condition(models.TextChoices):
        ABOVE = "above"
        BELOW = "below"
        OUTSIDE = "outside", "outside a range"
        SILENT = "silent", "silent (or offline) for N seconds"

    name = models.CharField(max_length=100)
    device = models.ForeignKey(
        Device, null=True, blank=True, on_delete=models.CASCADE, related_name="alert_rules",
        help_text="One device; or leave empty and choose a room.",
    )
    room = models.ForeignKey(
        Room, null=True, blank=True, on_delete=models.CASCADE, related_name="device_alert_rules",
        help_text="Every device of this room (posting into or listening to it).",
    )
    metric = models.CharField(
        max_length=200, blank=True, help_text="Flattened path, e.g. temperature or env.temp."
    )
    condition = models.CharField(max_length=16, choices=Condition.choices)
    threshold = models.FloatField(null=True, blank=True, help_text="For above and below.")
    low = models.FloatField(null=True, blank=True, help_text="For outside a range.")
    high = models.FloatField(null=True, blank=True, help_text="For outside a range.")
    silent_seconds = models.PositiveIntegerField(null=True, blank=True, help_text="For silent.")
    hysteresis = models.FloatField(
        default=0.0, help_text="A firing alert clears only this far back inside the line."
    )
    hold_seconds = models.PositiveIntegerField(
        default=0, help_text="The condition (and its clearing) must last this long."
    )
    notify_rooms = models.ManyToManyField(Room, related_name="+", help_text="Rooms to tell.")
    enabled = models.BooleanField(default=True)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        if (self.device_id is None) == (self.room_id is None):
            raise ValidationError("Choose a device or a room (every device of it), not both.")
        if self.condition in (self.Condition.ABOVE, self.Condition.BELOW) and self.threshold is None:
            raise ValidationError("'above' and 'below' need a threshold.")
        if self.condition == self.Condition.OUTSIDE and (
            self.low is None or self.high is None or self.low >= self.high
        ):
            raise ValidationError("'outside' needs low < high.")
        if self.condition == self.Condition.SILENT and not self.silent_seconds:
            raise ValidationError("'silent' needs silent_seconds.")
        if self.condition != self.Condition.SILENT and not self.metric:
            raise ValidationError("This condition needs a metric.")
        if self.hysteresis < 0:
            raise ValidationError("Hysteresis cannot be negative.")


class AlertState(models.Model):
    """Where one rule stands for one device: a named state machine (see bridge/services/alerts)."""

    class State(models.TextChoices):
        OK = "ok"
        PENDING = "pending", "breached, waiting for the hold time"
        FIRING = "firing"
        CLEARING = "clearing", "back inside, waiting for the hold time"

    rule = models.ForeignKey(AlertRule, on_delete=models.CASCADE, related_name="states")
    device = models.ForeignKey(Device, on_delete=models.CASCADE, related_name="alert_states")
    state = models.CharField(max_length=16, choices=State.choices, default=State.OK)
    since = models.DateTimeField(help_text="When the current state began.")
    value = models.FloatField(null=True, blank=True)
    updated = models.DateTimeField(help_text="Time of the reading last evaluated.")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["rule", "device"], name="alertstate_rule_device")
        ]
        indexes = [models.Index(fields=["state"], condition=~Q(state="ok"), name="alertstate_active")]

    def __str__(self) -> str:
        return f"{self.rule_id}/{self.device_id}: {self.state}"
