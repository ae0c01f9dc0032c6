"""A downstream SCIM server for the outbound tests: django-scim2 (PyPI) on a small Django project
with users and groups in a fresh SQLite file. Usage: python serve.py PORT TOKEN (127.0.0.1 only).

Its capabilities are the lowest of the test targets: its ServiceProviderConfig says it cannot
filter; its PATCH removes members only by a value list and takes no group displayName; it keeps
userName, name, emails, active and externalId of a user, and the name and members of a group.
"""
import os
import sys
import tempfile

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, here)


def main():
    port, token = sys.argv[1], sys.argv[2]
    os.environ["PEER_TOKEN"] = token
    os.environ["PEER_DB"] = os.path.join(tempfile.mkdtemp(prefix="django-scim2-peer-"), "db.sqlite3")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "peer.settings")
    from django.core.management import call_command
    import django

    django.setup()
    call_command("migrate", run_syncdb=True, verbosity=0)
    call_command("runserver", f"127.0.0.1:{port}", use_reloader=False, verbosity=0)


if __name__ == "__main__":
    main()
