"""WSGI entry point of a node: the Django app plus the node's background tasks."""

import os
from typing import Any

from django.core.wsgi import get_wsgi_application

from cache_project.serving import PeerShortcut, YieldAfterResponse, gevent_sleep, peer_handler

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cache_project.settings")

application: Any = PeerShortcut(get_wsgi_application(), peer_handler())
_sleep = gevent_sleep()
if _sleep is not None:
    application = YieldAfterResponse(application, _sleep)

from cacheapi import node  # noqa: E402 - needs the app registry that get_wsgi_application loads

node.start_background()
