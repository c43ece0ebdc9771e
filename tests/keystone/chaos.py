"""Keystone's side of tests/chaos.rs: one long-lived process, one JSON request a line on stdin,
one JSON answer a line on stdout.

    {"pack": DIR, "n": N}             -> {"tokens": [N tokens packed by Keystone's TokenFormatter
                                          with DIR's keys]} or {"error": NAME}
    {"unpack": DIR, "tokens": [...]}  -> {"failed": [indices Keystone cannot unpack with DIR's
                                          keys], "races": R}

R counts loads retried because Keystone's loader (fernet_utils._get_key_files: listdir, then
isfile, then open) met a key file removed between listing and opening it: an OSError raised
before any key is tried, which any rotation's purge (keystone-manage's own included) can cause.
Such a token is asked again (at most twice more); a token its keys cannot decrypt fails as it is.

Keystone reads the repository again at every request (TokenFormatter.crypto loads the keys), as
its API servers do for every token. Only token texts and indices are printed, never keys.
"""
import json
import sys
import warnings

warnings.simplefilter("ignore")

PAYLOAD = b"fernetd chaos payload"


def main():
    import keystone.conf
    from keystone.token.token_formatters import TokenFormatter

    CONF = keystone.conf.CONF
    keystone.conf.configure(CONF)
    CONF(args=[], project="keystone", default_config_files=[])
    CONF.set_override("max_active_keys", 1000, group="fernet_tokens")
    formatter = TokenFormatter()
    for line in sys.stdin:
        req = json.loads(line)
        if "pack" in req:
            CONF.set_override("key_repository", req["pack"], group="fernet_tokens")
            try:
                out = {"tokens": [formatter.pack(PAYLOAD) for _ in range(req["n"])]}
            except Exception as e:  # noqa: BLE001 - no keys: Keystone cannot issue
                out = {"error": type(e).__name__}
        else:
            CONF.set_override("key_repository", req["unpack"], group="fernet_tokens")
            failed = []
            races = 0
            for i, token in enumerate(req["tokens"]):
                for attempt in range(3):
                    try:
                        if formatter.unpack(token) != PAYLOAD:
                            failed.append(i)
                    except OSError:  # the loader, not the keys: a file gone after listdir
                        races += 1
                        if attempt < 2:
                            continue
                        failed.append(i)
                    except Exception:  # noqa: BLE001 - Keystone raises ValidationError
                        failed.append(i)
                    break
            out = {"failed": failed, "races": races}
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
