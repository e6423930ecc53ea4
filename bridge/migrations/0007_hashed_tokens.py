"""API tokens: only a hash of the key is kept; last-used time; revocation."""

import hashlib

from django.db import migrations, models


def hash_keys(apps, schema_editor):  # type: ignore[no-untyped-def]
    ApiToken = apps.get_model("bridge", "ApiToken")
    for token in ApiToken.objects.all():
        token.key_hash = hashlib.sha256(token.key.encode()).hexdigest()
        token.prefix = token.key[:8]
        token.save(update_fields=["key_hash", "prefix"])


class Migration(migrations.Migration):

    dependencies = [
        ("bridge", "0006_telemetry_rollups_alerts"),
    ]

    operations = [
        migrations.AddField(
            model_name="apitoken",
            name="key_hash",
            field=models.CharField(editable=False, max_length=64, null=True),
        ),
        migrations.AddField(
            model_name="apitoken",
            name="prefix",
            field=models.CharField(
                default="", editable=False, help_text="The key's first characters.", max_length=8
            ),
            preserve_default=False,
        ),
        migrations.AddField(
            model_name="apitoken",
            name="last_used",
            field=models.DateTimeField(blank=True, editable=False, null=True),
        ),
        migrations.AddField(
            model_name="apitoken",
            name="revoked",
            field=models.DateTimeField(
                blank=True, help_text="Set: the token no longer works (and its sockets close).",
                null=True,
            ),
        ),
        # Existing tokens keep working: their keys are hashed, then forgotten.
        migrations.RunPython(hash_keys, migrations.RunPython.noop),
        migrations.RemoveField(model_name="apitoken", name="key"),
        migrations.AlterField(
            model_name="apitoken",
            name="key_hash",
            field=models.CharField(editable=False, max_length=64, unique=True),
        ),
    ]
