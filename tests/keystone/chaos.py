"""Keystone's side of tests/chaos.rs: one long-lived process, one JSON request a line on stdin,
one JSON answer a line on stdout.

    {"pack": DIR, "n": N}             -> {"tokens": [N tokens packed by Keystone's TokenFormatter
                                          with DIR's keys]} or {"error": NAME}
    {"unpack": DIR, "tokens": [...]}  -> {"failed": [indices Keystone cannot unpack with DIR's
                                          keys]}

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
            for i, token in enumerate(req["tokens"]):
                try:
                    if formatter.unpack(token) != PAYLOAD:
                        failed.append(i)
                except Exception:  # noqa: BLE001 - Keystone raises ValidationError
                    failed.append(i)
            out = {"failed": failed}
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
