"""One Keystone API server for fernetd's end-to-end test, served by gunicorn:

    OS_KEYSTONE_CONFIG_FILES=node.conf gunicorn --chdir tests/keystone server:application

Keystone's own WSGI application (keystone.server.wsgi), reading the node's keystone.conf.
"""
import sys
import warnings

warnings.simplefilter("ignore")
# Keystone parses sys.argv as its own command line; gunicorn's arguments are not for it.
sys.argv = sys.argv[:1]

from keystone.server import wsgi  # noqa: E402

application = wsgi.initialize_public_application()
