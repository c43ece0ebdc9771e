"""Makes tokens and receipts with Keystone's own formatters, for tests/token.rs.

    tokens.py tokens DIR   (JSON list of specs on stdin)
    tokens.py receipts DIR (JSON list of specs on stdin)

Each spec names the payload class (tokens) and its fields. Out: a JSON list, one object per
spec: the token, and what Keystone's own validate_token/validate_receipt reads back from it.
Keys are never printed.
"""
import json
import sys
import warnings

warnings.simplefilter("ignore")


def main():
    kind, directory = sys.argv[1], sys.argv[2]
    import keystone.conf

    CONF = keystone.conf.CONF
    keystone.conf.configure(CONF)
    CONF(args=[], project="keystone", default_config_files=[])
    for group in ("fernet_tokens", "fernet_receipts"):
        CONF.set_override("key_repository", directory, group=group)
        CONF.set_override("max_active_keys", 100, group=group)
    specs = json.load(sys.stdin)
    out = []
    if kind == "tokens":
        from keystone.token import token_formatters as tf

        formatter = tf.TokenFormatter()
        for s in specs:
            cls = getattr(tf, s["class"])
            groups = s.get("groups")
            token = formatter.create_token(
                s["user_id"],
                s["expires_at"],
                s["audit_ids"],
                cls,
                methods=s["methods"],
                system=s.get("system"),
                domain_id=s.get("domain_id"),
                project_id=s.get("project_id"),
                trust_id=s.get("trust_id"),
                federated_group_ids=[{"id": g} for g in groups] if groups is not None else None,
                identity_provider_id=s.get("idp_id"),
                protocol_id=s.get("protocol_id"),
                access_token_id=s.get("access_token_id"),
                app_cred_id=s.get("app_cred_id"),
                thumbprint=s.get("thumbprint"),
            )
            (user_id, methods, audit_ids, system, domain_id, project_id, trust_id,
             groups, idp_id, protocol_id, access_token_id, app_cred_id, thumbprint,
             issued_at, expires_at) = formatter.validate_token(token)
            out.append({
                "token": token,
                "version": cls.version,
                "keystone": {
                    "user_id": user_id,
                    "methods": methods,
                    "audit_ids": audit_ids,
                    "system": system,
                    "domain_id": domain_id,
                    "project_id": project_id,
                    "trust_id": trust_id,
                    "federated_group_ids": [g["id"] for g in groups] if groups is not None else None,
                    "identity_provider_id": idp_id,
                    "protocol_id": protocol_id,
                    "access_token_id": access_token_id,
                    "app_cred_id": app_cred_id,
                    "thumbprint": thumbprint,
                    "issued_at": issued_at,
                    "expires_at": expires_at,
                },
            })
    elif kind == "receipts":
        from keystone.receipt.receipt_formatters import ReceiptFormatter

        formatter = ReceiptFormatter()
        for s in specs:
            receipt = formatter.create_receipt(s["user_id"], s["methods"], s["expires_at"])
            user_id, methods, issued_at, expires_at = formatter.validate_receipt(receipt)
            out.append({
                "token": receipt,
                "version": None,
                "keystone": {
                    "user_id": user_id,
                    "methods": methods,
                    "issued_at": issued_at,
                    "expires_at": expires_at,
                },
            })
    else:
        sys.exit("unknown kind " + kind)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
