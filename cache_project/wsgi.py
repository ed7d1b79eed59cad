"""WSGI entry point of a node: the Django app plus the node's background tasks."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cache_project.settings")

application = get_wsgi_application()

from cacheapi import node  # noqa: E402 - needs the app registry that the line above loads

node.start_background()
