"""WSGI entry point of a node: Django, split into the API's lean stack and the admin's full
one, the peer protocol's app in front, and the node's background tasks started."""

import os
from typing import Any

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cache_project.settings")

django_app = get_wsgi_application()

from cache_project.serving import node_application  # noqa: E402 - needs the app registry

application: Any = node_application(django_app)
