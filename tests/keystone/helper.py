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
    helper.py lifetimes -         -> JSON list on stdin of cases {args, env}; out: per case the
                                     [token]/[receipt] lifetimes oslo.config reads, as Keystone's
                                     WSGI services configure it (files from OS_KEYSTONE_CONFIG_*
                                     when args is null), or the error

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


def main():
    cmd, directory = sys.argv[1], sys.argv[2]
    if cmd == "ints":
        out = []
        for name in json.load(sys.stdin):
            try:
                out.append(str(int(name)))
            except ValueError:
                out.append(None)
        print(json.dumps(out))
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
