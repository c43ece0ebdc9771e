"""Drives Keystone's own code for fernetd's interop tests.

    helper.py load DIR            -> JSON list: SHA-256 of each key, in Keystone's load order
    helper.py pack DIR            -> a token packed by Keystone's TokenFormatter
    helper.py pack-loop DIR SECS INTERVAL -> a token packed by Keystone's TokenFormatter every
                                     INTERVAL seconds for SECS seconds (keys re-read for each),
                                     one a line, flushed
    helper.py unpack DIR TOKEN    -> exit 0 if Keystone unpacks it, 1 if it cannot
    helper.py unpack-all DIR TOKEN... -> one line per token Keystone cannot unpack (its index);
                                     exit 0 when it unpacks every one
    helper.py key-files DIR       -> JSON: {file name: key number} as Keystone's loader reads
    helper.py ints -              -> JSON list on stdin of names; out: str(int(name)) or null
    helper.py fernet-keys -       -> JSON list on stdin of base64 file contents; out: per file the
                                     fingerprint of the key Keystone's loader + cryptography's
                                     Fernet read from it (sha256 of the 32 bytes, first 8, hex),
                                     "empty" for a file the loader skips, or null when refused
    helper.py lifetimes -         -> JSON list on stdin of cases {args, env}; out: per case the
                                     [token]/[receipt] lifetimes oslo.config reads, as Keystone's
                                     WSGI services configure it (files from OS_KEYSTONE_CONFIG_*
                                     when args is null), or the error
    helper.py creds-make CONF N   -> N EC2 credentials made through Keystone's credential
                                     manager (encrypted with the primary credential key) in
                                     the database keystone.conf CONF names (tables made first)
    helper.py creds-check CONF    -> `ok N` when Keystone decrypts every stored credential and
                                     lists them all through its credential API; else `lost M
                                     of N` (exit 1), and whether the API listing failed

Only hashes of keys are printed, never the keys.
"""
import hashlib
import json
import sys
import warnings

warnings.simplefilter("ignore")


def conf(directory):
    import keystone.conf

    CONF = keystone.conf.CONF
    keystone.conf.configure(CONF)
    CONF(args=[], project="keystone", default_config_files=[])
    CONF.set_override("key_repository", directory, group="fernet_tokens")
    CONF.set_override("max_active_keys", 100, group="fernet_tokens")
    return CONF


def fernet_key(content_b64):
    import base64

    from cryptography.fernet import Fernet

    raw = base64.b64decode(content_b64)
    try:
        # fernet_utils._get_key_files: open(path).read(), text mode (UTF-8, universal newlines)
        text = raw.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
    except UnicodeDecodeError:
        return None
    if len(text) == 0:
        return "empty"
    try:
        Fernet(text)
    except Exception:  # noqa: BLE001 - refused is the answer
        return None
    return hashlib.sha256(base64.urlsafe_b64decode(text)).hexdigest()[:16]


def lifetimes(case):
    import os

    import keystone.conf
    from keystone.server.flask import core

    for name in [n for n in os.environ if n.startswith("OS_")]:
        del os.environ[name]
    os.environ.update(case["env"])
    CONF = keystone.conf.CONF
    CONF.reset()
    CONF.clear()
    keystone.conf.configure(CONF)
    try:
        if case["args"] is None:
            # keystone/server/__init__.py: configure(config_files=_get_config_files() or None)
            CONF(args=[], project="keystone", default_config_files=core._get_config_files() or None)
        else:
            CONF(args=case["args"], project="keystone", default_config_files=[])
        return {
            "expiration": CONF.token.expiration,
            "allow_expired_window": CONF.token.allow_expired_window,
            "receipt_expiration": CONF.receipt.expiration,
        }
    except Exception as e:  # noqa: BLE001 - the error is the answer
        return {"error": type(e).__name__}


def keystone_from(conf_file):
    """Keystone's backends loaded as keystone-manage loads them, from keystone.conf."""
    import keystone.conf
    from keystone.common import sql
    from keystone.server import backends

    CONF = keystone.conf.CONF
    keystone.conf.configure()
    sql.initialize()
    keystone.conf.set_config_defaults()
    CONF(args=["--config-file", conf_file], project="keystone", default_config_files=[])
    return backends.load_backends()


def creds_make(conf_file, n):
    import uuid

    from keystone.common import sql

    drivers = keystone_from(conf_file)
    with sql.session_for_write() as session:
        # Every table Keystone's backends know (what db_sync makes, without its migrations).
        sql.ModelBase.metadata.create_all(session.get_bind())
    api = drivers["credential_api"]
    for i in range(n):
        # [credential] user_limit (500 by default) counts credentials per user.
        user = "user%d" % (i // 100)
        cid = uuid.uuid4().hex
        blob = json.dumps({"access": cid, "secret": uuid.uuid4().hex})
        api.create_credential(
            cid,
            {"id": cid, "user_id": user, "project_id": "p", "type": "ec2", "blob": blob},
        )
    print("made", n)


def creds_check(conf_file):
    from keystone.common import driver_hints

    drivers = keystone_from(conf_file)
    api = drivers["credential_api"]
    stored = api.driver.list_credentials(driver_hints.Hints())
    lost = 0
    for ref in stored:
        try:
            api._decrypt_credential(ref)
        except Exception:  # noqa: BLE001 - a credential Keystone cannot decrypt is lost
            lost += 1
    try:
        listed = len(api.list_credentials())
    except Exception as e:  # noqa: BLE001 - GET /v3/credentials fails the same way
        listed = "failed (%s)" % type(e).__name__
    if lost:
        print("lost %d of %d; listing through Keystone: %s" % (lost, len(stored), listed))
        sys.exit(1)
    assert listed == len(stored), listed
    print("ok", len(stored))


def main():
    cmd, directory = sys.argv[1], sys.argv[2]
    if cmd == "creds-make":
        creds_make(directory, int(sys.argv[3]))
        return
    if cmd == "creds-check":
        creds_check(directory)
        return
    if cmd == "ints":
        out = []
        for name in json.load(sys.stdin):
            try:
                out.append(str(int(name)))
            except ValueError:
                out.append(None)
        print(json.dumps(out))
        return
    if cmd == "fernet-keys":
        print(json.dumps([fernet_key(c) for c in json.load(sys.stdin)]))
        return
    if cmd == "lifetimes":
        print(json.dumps([lifetimes(c) for c in json.load(sys.stdin)]))
        return
    CONF = conf(directory)
    if cmd == "load":
        from keystone.common import fernet_utils

        utils = fernet_utils.FernetUtils(
            directory, CONF.fernet_tokens.max_active_keys, "fernet_tokens"
        )
        keys = utils.load_keys()
        print(json.dumps([hashlib.sha256(k.encode()).hexdigest() for k in keys]))
    elif cmd == "pack":
        from keystone.token.token_formatters import TokenFormatter

        print(TokenFormatter().pack(b"fernetd interop payload"))
    elif cmd == "pack-loop":
        import select
        import time

        from keystone.token.token_formatters import TokenFormatter

        end = time.monotonic() + float(sys.argv[3])
        formatter = TokenFormatter()
        while time.monotonic() < end:
            try:
                print(formatter.pack(b"fernetd interop payload"), flush=True)
            except Exception as e:  # a repository caught mid-write: the next one
                print("pack:", type(e).__name__, file=sys.stderr, flush=True)
            # time.sleep fails under libfaketime (EINVAL): a timeout on select instead.
            select.select([], [], [], float(sys.argv[4]))
    elif cmd == "unpack":
        from keystone.token.token_formatters import TokenFormatter

        try:
            payload = TokenFormatter().unpack(sys.argv[3])
        except Exception as e:  # keystone raises ValidationError on InvalidToken
            print(type(e).__name__, file=sys.stderr)
            sys.exit(1)
        assert payload == b"fernetd interop payload", payload
    elif cmd == "unpack-all":
        from keystone.token.token_formatters import TokenFormatter

        formatter = TokenFormatter()
        failed = 0
        for i, token in enumerate(sys.argv[3:]):
            try:
                assert formatter.unpack(token) == b"fernetd interop payload"
            except Exception as e:
                print(i, type(e).__name__)
                failed += 1
        sys.exit(1 if failed else 0)
    elif cmd == "key-files":
        import os
        from keystone.common import fernet_utils

        utils = fernet_utils.FernetUtils(directory, 100, "fernet_tokens")
        key_files, _ = utils._get_key_files(directory)
        names = {os.path.basename(p): str(n) for n, p in key_files.items()}
        print(json.dumps(names))
    else:
        sys.exit("unknown command " + cmd)


if __name__ == "__main__":
    main()
