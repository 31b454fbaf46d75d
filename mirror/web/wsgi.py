"""WSGI entry point for running gunicorn directly (deploy/gunicorn.conf.py, mirror-web.service):
`gunicorn -c deploy/gunicorn.conf.py mirror.web.wsgi:app`. The config comes from $MIRROR_CONFIG."""

from mirror.config import config_path_from_env, load_config
from mirror.web import create_app

app = create_app(load_config(config_path_from_env(None)))
