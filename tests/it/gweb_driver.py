"""graphite-web 1.1.10 (PyPI, from .peers/graphite-web-venv) answering requests through
Django's test client, for tests/it/store_graphite_web.rs.

One JSON request on stdin:
  {"tmp": DIR, "whisper_dir": DIR or null (graphite-web reads these files itself),
   "cluster": ["host:port", ...] (CLUSTER_SERVERS), "carbonlink": ["host:port:instance"]
   (CARBONLINK_HOSTS), "settings": {NAME: value} (more overrides, optional), "requests": [{"path": "/render", "params": [[k, v], ...]}, ...]}
One JSON answer on stdout: per request {"status", "content_type", "body"}.
Nothing of graphite-web is changed: its own settings module, with these overrides.
"""

import json
import os
import sys


def main():
    req = json.load(sys.stdin)
    tmp = req["tmp"]
    os.makedirs(os.path.join(tmp, "log"), exist_ok=True)
    settings = os.path.join(tmp, "cadent_gweb_settings.py")
    with open(settings, "w") as f:
        f.write(
            "from graphite.settings import *  # noqa\n"
            "SECRET_KEY = 'cadent-test'\n"
            "ALLOWED_HOSTS = ['*']\n"
            "LOG_DIR = %r\n"
            "INDEX_FILE = %r\n"
            "DATABASES = {'default': {'ENGINE': 'django.db.backends.sqlite3', 'NAME': %r}}\n"
            "STANDARD_DIRS = %r\n"
            "WHISPER_DIR = %r\n"
            "CLUSTER_SERVERS = %r\n"
            "CARBONLINK_HOSTS = %r\n"
            "CARBONLINK_TIMEOUT = 5.0\n"
            "REMOTE_FIND_TIMEOUT = 10.0\n"
            "REMOTE_FETCH_TIMEOUT = 10.0\n"
            "FIND_CACHE_DURATION = 0\n"
            "DEFAULT_CACHE_DURATION = 0\n"
            "CACHES = {'default': {'BACKEND': 'django.core.cache.backends.dummy.DummyCache'}}\n"
            "TAGDB = ''\n"
            "USE_WORKER_POOL = False\n"
            % (
                os.path.join(tmp, "log"),
                os.path.join(tmp, "index"),
                os.path.join(tmp, "graphite.db"),
                [req["whisper_dir"]] if req.get("whisper_dir") else [],
                # StandardFinder.get_index (/metrics/index.json) walks WHISPER_DIR.
                req.get("whisper_dir") or os.path.join(tmp, "no-whisper"),
                req.get("cluster", []),
                req.get("carbonlink", []),
            )
        )
    with open(settings, "a") as f:
        for k, v in sorted(req.get("settings", {}).items()):
            f.write("%s = %r\n" % (k, v))
    sys.path.insert(0, tmp)
    os.environ["DJANGO_SETTINGS_MODULE"] = "cadent_gweb_settings"
    import django

    django.setup()
    from django.core.management import call_command
    from django.test import Client

    # graphite-web's own tables (a treejson find looks up the user's profile).
    call_command("migrate", verbosity=0, interactive=False)

    client = Client()
    answers = []
    for r in req["requests"]:
        params = {}
        for k, v in r["params"]:
            params.setdefault(k, []).append(v)
        resp = client.get(r["path"], params)
        body = resp.content
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            text = repr(body)
        answers.append(
            {
                "status": resp.status_code,
                "content_type": resp.get("Content-Type"),
                "body": text,
            }
        )
    json.dump(answers, sys.stdout)


if __name__ == "__main__":
    main()
