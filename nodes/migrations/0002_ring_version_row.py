"""The ring version row exists from the start, so that nodes registering at the same moment on
an empty registry only ever update it (two creates of pk=1 raced on PostgreSQL)."""

from django.db import migrations


def create_row(apps, schema_editor):
    RingVersion = apps.get_model("nodes", "RingVersion")
    RingVersion.objects.get_or_create(pk=1, defaults={"version": 0})


class Migration(migrations.Migration):
    dependencies = [("nodes", "0001_initial")]
    operations = [migrations.RunPython(create_row, migrations.RunPython.noop)]
