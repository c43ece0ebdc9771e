"""Keystone's credentials in tests/chaos.rs: one long-lived process on the run's one shared
database, one JSON request a line on stdin, one JSON answer a line on stdout.

    python chaos_creds.py KEYSTONE_CONF   (its [database] connection: the shared database)

    {"make": DIR, "n": N, "user": U}   -> {"made": [ids]}: N EC2 credentials made through
                                          Keystone's credential manager, encrypted with DIR's
                                          primary (Keystone's own provider), or {"error": NAME}
    {"check": DIR}                      -> {"total": N, "failed": [ids]}: every stored
                                          credential Keystone cannot decrypt with DIR's keys,
                                          or {"error": NAME} (the database busy, say)
    {"delete": [ids]}                   -> {"deleted": N}: through the credential manager

Keystone reads the repository again at every encryption and decryption (the provider loads the
keys each time), as its API servers do. Only credential ids and counts are printed, never a key
or a secret.
"""
import json
import sys
import uuid
import warnings

warnings.simplefilter("ignore")


def main(conf_file):
    import keystone.conf
    from keystone.common import driver_hints
    from keystone.common import sql
    from keystone.server import backends

    CONF = keystone.conf.CONF
    keystone.conf.configure()
    sql.initialize()
    keystone.conf.set_config_defaults()
    CONF(args=["--config-file", conf_file], project="keystone", default_config_files=[])
    drivers = backends.load_backends()
    with sql.session_for_write() as session:
        # Every table Keystone's backends know (what db_sync makes, without its migrations).
        sql.ModelBase.metadata.create_all(session.get_bind())
    api = drivers["credential_api"]
    sys.stdout.write(json.dumps({"ready": True}) + "\n")
    sys.stdout.flush()
    for line in sys.stdin:
        req = json.loads(line)
        try:
            if "make" in req:
                CONF.set_override("key_repository", req["make"], group="credential")
                made = []
                for _ in range(req["n"]):
                    cid = uuid.uuid4().hex
                    blob = json.dumps({"access": cid, "secret": uuid.uuid4().hex})
                    api.create_credential(
                        cid,
                        {
                            "id": cid,
                            "user_id": req["user"],
                            "project_id": "p",
                            "type": "ec2",
                            "blob": blob,
                        },
                    )
                    made.append(cid)
                out = {"made": made}
            elif "check" in req:
                CONF.set_override("key_repository", req["check"], group="credential")
                stored = api.driver.list_credentials(driver_hints.Hints())
                failed = []
                for ref in stored:
                    try:
                        api._decrypt_credential(ref)
                    except Exception:  # noqa: BLE001 - a credential Keystone cannot decrypt
                        failed.append(ref["id"])
                out = {"total": len(stored), "ids": [r["id"] for r in stored], "failed": failed}
            else:
                for cid in req["delete"]:
                    api.delete_credential(cid)
                out = {"deleted": len(req["delete"])}
        except Exception as e:  # noqa: BLE001 - the database busy, a repository mid-write
            out = {"error": type(e).__name__}
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1])
