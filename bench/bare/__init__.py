"""The bare Django baseline of the foundation benchmark (``bench/run.py``).

One ``JsonResponse`` view, no middleware, no installed apps, no database, its own settings
module: what Django itself costs per request, served by the same gunicorn (the nodes' own
``cache_project/gunicorn_conf.py``: gevent, one worker) so that a node's single GET can be held
against it. ``bench/servers.py`` (``BareDjango``) starts it as
``python -m gunicorn -c cache_project/gunicorn_conf.py bench.bare.wsgi:application``.
"""
