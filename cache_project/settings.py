"""Django settings for a cache node.

Everything a node operator tunes lives in ``CACHE_CLUSTER`` (see ``cacheapi.settings`` for the
documented defaults); each key can also be set from the environment (``CACHE_<KEY>``), so one
settings module serves every node of a cluster.
"""

import os
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent
(BASE_DIR / "var" / "static").mkdir(parents=True, exist_ok=True)


def _env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


SECRET_KEY = os.environ.get(
    "DJANGO_SECRET_KEY", "dev-insecure-change-me-0f4c1c1f5f0d4e5b9e1a7a3c2b8d6e4f"
)
DEBUG = _env_bool("DJANGO_DEBUG", False)

# A node started with TLS (runnode --certfile) serves only HTTPS: its admin cookies are sent over
# HTTPS only, and browsers are told to keep to HTTPS.
TLS = bool(os.environ.get("CACHE_TLS_CERTFILE"))
SESSION_COOKIE_SECURE = TLS
CSRF_COOKIE_SECURE = TLS
SECURE_HSTS_SECONDS = 3600 if TLS else 0
SESSION_COOKIE_HTTPONLY = True
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
ALLOWED_HOSTS = [
    h.strip() for h in os.environ.get("DJANGO_ALLOWED_HOSTS", "*").split(",") if h.strip()
]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "django_prometheus",
    "cacheapi",
    "nodes",
    "ratelimit",
]

# django-prometheus' request metrics (django_http_*) on the admin's stack. API calls are timed
# by the cache's own recorder instead (cache_operation_seconds, per operation), which costs a
# fraction of the ~25 us per request these middlewares take.
MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

# What the API's requests (everything but the admin and its static files) go through: an
# API-key client has no session, cookie or form to guard (cache_project.serving).
API_MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "cacheapi.api.limits.ApiRateLimitMiddleware",  # a no-op unless API_RATE_LIMIT is set
]

ROOT_URLCONF = "cache_project.urls"
APPEND_SLASH = False

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "cache_project.wsgi.application"

# The registry database: SQLite in the project unless DATABASE_URL names another (PostgreSQL
# for a registry shared by nodes on many machines).
DATABASES = {
    "default": dj_database_url.config(
        default=f"sqlite:///{BASE_DIR / 'var' / 'registry.sqlite3'}",
        conn_max_age=int(os.environ.get("DATABASE_CONN_MAX_AGE", "60")),
    )
}
# django-prometheus' database metrics (django_db_*): its wrappers of the same engines.
_MONITORED = {
    "django.db.backends.sqlite3": "django_prometheus.db.backends.sqlite3",
    "django.db.backends.postgresql": "django_prometheus.db.backends.postgresql",
}
_engine = DATABASES["default"]["ENGINE"]
DATABASES["default"]["ENGINE"] = _MONITORED.get(_engine, _engine)
if _engine == "django.db.backends.sqlite3":
    # Several node processes share one SQLite file: wait for locks instead of failing at once.
    DATABASES["default"].setdefault("OPTIONS", {})
    DATABASES["default"]["OPTIONS"].setdefault("timeout", 20)
    DATABASES["default"]["OPTIONS"].setdefault(
        "init_command", "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
    )
    DATABASES["default"]["OPTIONS"].setdefault("transaction_mode", "IMMEDIATE")

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "var" / "static"
# Nodes serve the admin's static files themselves (no collectstatic step, no web server).
WHITENOISE_USE_FINDERS = True

# The API limits request bodies itself (CACHE_CLUSTER MAX_REQUEST_BYTES, answered with 413).
DATA_UPLOAD_MAX_MEMORY_SIZE = None

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["cacheapi.api.auth.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["cacheapi.api.auth.HasScope"],
    "DEFAULT_RENDERER_CLASSES": ["cacheapi.api.renderers.ORJSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["cacheapi.api.parsers.StrictJSONParser"],
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "cacheapi.api.negotiation.FastNegotiation",
    "DEFAULT_THROTTLE_CLASSES": [],
    "EXCEPTION_HANDLER": "cacheapi.api.exceptions.exception_handler",
    "UNAUTHENTICATED_USER": None,
    "UNAUTHENTICATED_TOKEN": None,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_VERSIONING_CLASS": None,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Cache cluster API",
    "DESCRIPTION": "A distributed in-memory key-value cache served over HTTP/JSON.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    # Security schemes, the operations' bodies and the operation list: cacheapi.schema.
    "PREPROCESSING_HOOKS": ["cacheapi.api.schema.preprocess_endpoints"],
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "cacheapi.api.schema.add_not_acceptable",
        "cacheapi.api.schema.add_metrics",
    ],
    # PATCH /api/v1/keys/{key} needs its "ttl": no all-optional "Patched" body component.
    "COMPONENT_SPLIT_PATCH": False,
    "ENUM_NAME_OVERRIDES": {
        "NodeStatusEnum": "cacheapi.api.schema.NODE_STATUSES",
        "HealthStatusEnum": "cacheapi.api.schema.HEALTH_STATUSES",
    },
}

# Overrides of cacheapi.settings.DEFAULTS; every key can also come from CACHE_<KEY> in the
# environment (read by cacheapi.settings, so tests can override either way).
CACHE_CLUSTER: dict = {}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {"django.request": {"level": "ERROR"}},
}

# make bench's rate-limiter section (bench/ratelimiting.py): a Django cache on a Redis, for
# django-ratelimit and DRF's throttle beside ours. Only with CACHE_BENCH_ROUTES.
if os.environ.get("CACHE_BENCH_REDIS_URL"):
    CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
        "bench-redis": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": os.environ["CACHE_BENCH_REDIS_URL"],
        },
    }
    RATELIMIT_USE_CACHE = "bench-redis"  # django-ratelimit's own setting
    SILENCED_SYSTEM_CHECKS = ["django_ratelimit.E003", "django_ratelimit.W001"]
