"""Settings of the bare Django app: only what Django needs to route a request to one view."""

SECRET_KEY = "bench-bare-django-not-a-secret"  # nothing is signed or stored
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS: list[str] = []
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "bench.bare.urls"
DATABASES: dict[str, dict[str, str]] = {}
USE_I18N = False  # as the nodes
USE_TZ = True
