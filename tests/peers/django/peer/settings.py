import os

SECRET_KEY = "scimlog-tests-only"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
USE_TZ = True
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "django_scim", "peer"]
AUTH_USER_MODEL = "peer.User"
MIDDLEWARE = ["peer.auth.BearerToken", "django_scim.middleware.SCIMAuthCheckMiddleware"]
ROOT_URLCONF = "peer.urls"
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": os.environ["PEER_DB"]}}
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
SCIM_SERVICE_PROVIDER = {
    "NETLOC": "127.0.0.1",
    "SCHEME": "http",
    "GROUP_MODEL": "peer.models.Group",
    "AUTHENTICATION_SCHEMES": [
        {"type": "oauthbearertoken", "name": "Bearer", "description": "A bearer token"},
    ],
}
LOGGING = {"version": 1, "disable_existing_loggers": True}
