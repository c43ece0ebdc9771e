"""Drives Keystone's own code for fernetd's interop tests.

    helper.py load DIR            -> JSON list: SHA-256 of each key, in Keystone's load order
    helper.py pack DIR            -> a token packed by Keystone's TokenFormatter
    helper.py unpack DIR TOKEN    -> exit 0 if Keystone unpacks it, 1 if it cannot

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


def main():
    cmd, directory = sys.argv[1], sys.argv[2]
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
    elif cmd == "unpack":
        from keystone.token.token_formatters import TokenFormatter

        try:
            payload = TokenFormatter().unpack(sys.argv[3])
        except Exception as e:  # keystone raises ValidationError on InvalidToken
            print(type(e).__name__, file=sys.stderr)
            sys.exit(1)
        assert payload == b"fernetd interop payload", payload
    else:
        sys.exit("unknown command " + cmd)


if __name__ == "__main__":
    main()
