"""WSGI entry point of a node: the Django app plus the node's background tasks."""

import os
from typing import Any

from django.core.wsgi import get_wsgi_application

from cache_project.bodies import RequestBodies
from cache_project.serving import PeerShortcut, YieldAfterResponse, gevent_sleep, peer_handler

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cache_project.settings")

django_app = get_wsgi_application()

from cacheapi import node  # noqa: E402 - needs the app registry that get_wsgi_application loads

application: Any = PeerShortcut(django_app, peer_handler(), node.internal_app())
application = RequestBodies(application)  # bodies whole or refused, chunked ones included
_sleep = gevent_sleep()
if _sleep is not None:
    application = YieldAfterResponse(application, _sleep)

node.start_background()
