//! `fernetd token` through the real binary, on tokens and receipts made by Keystone's own
//! formatters (`tests/keystone/tokens.py` in `.venv`): every payload type Keystone issues is
//! read as Keystone itself reads it back, each verdict comes with its exit code, a token no key
//! here decrypts is traced to its key and that key's fate, and no key material is ever shown.

mod common;
use common::keystone::venv;
use common::*;
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Command, Stdio};

/// Tokens (or receipts) made by Keystone's formatters with the keys in `dir`: one object per
/// spec, `{token, version, keystone: what validate_token reads back}`.
fn keystone_make(kind: &str, dir: &Path, specs: &Value) -> Vec<Value> {
    use std::io::Write as _;
    let mut child = Command::new(venv().join("bin/python"))
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keystone/tokens.py"))
        .args([kind, dir.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(specs.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "keystone {kind}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap()
}

fn one_token(dir: &Path, expires_at: &str) -> String {
    let spec = json!([{
        "class": "ProjectScopedPayload",
        "user_id": "0123456789abcdef0123456789abcdef",
        "project_id": "fedcba9876543210fedcba9876543210",
        "methods": ["password"],
        "audit_ids": ["AAECAwQFBgcICQoLDA0ODw"],
        "expires_at": expires_at,
    }]);
    keystone_make("tokens", dir, &spec)[0]["token"]
        .as_str()
        .unwrap()
        .to_string()
}

/// An ISO time `secs` from now (negative: in the past), as Keystone's API writes them.
fn from_now(secs: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::seconds(secs))
        .format("%Y-%m-%dT%H:%M:%S.000000Z")
        .to_string()
}

fn token_json(args: &[&str]) -> (i32, Value, Run) {
    let mut all = vec!["token", "--json"];
    all.extend_from_slice(args);
    let r = fernetd(&all);
    let v: Value =
        serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}{}", r.stdout, r.stderr));
    assert_eq!(v["exit"], json!(r.code), "{}", r.stdout);
    (r.code, v, r)
}

/// `fernetd token` with the token on stdin.
fn token_stdin(args: &[&str], input: &str) -> Run {
    use std::io::Write as _;
    let mut child = Command::new(bin())
        .arg("token")
        .args(args)
        .env_remove("FERNETD_CONFIG")
        .env("FERNETD_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    Run::from(child.wait_with_output().unwrap())
}

fn parse_time(s: &Value) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(s.as_str().unwrap_or_else(|| panic!("not a time: {s}")))
        .unwrap()
        .with_timezone(&chrono::Utc)
}

fn fingerprints(dir: &Path) -> Value {
    let r = fernetd(&["check", "--json", "--key-repository", dir.to_str().unwrap()]);
    serde_json::from_str::<Value>(&r.stdout).unwrap()["fingerprints"].clone()
}

/// Every output of a run, checked for every key's text (and its first 20 characters) and for
/// the token itself: fernetd shows keys by number and fingerprint only.
fn assert_no_secrets(r: &Run, keys: &[String], token: &str) {
    for text in [&r.stdout, &r.stderr] {
        for k in keys {
            assert!(!text.contains(k.as_str()), "key material shown: {text}");
            assert!(!text.contains(&k[..20]), "key material shown: {text}");
        }
        if token.len() > 40 {
            assert!(!text.contains(&token[..40]), "the token is echoed: {text}");
        }
    }
}

#[test]
fn every_keystone_payload_type_reads_as_keystone_reads_it() {
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("keys");
    let r = repo.to_str().unwrap();
    fernetd_ok(&["setup", "--key-repository", r]);
    rotate_ok(r, &[]);
    // Key 2 is primary: Keystone makes every token with it.
    let uuid = |c: char| c.to_string().repeat(32);
    let exp = from_now(3600);
    let base = |class: &str, user: &str, methods: Value| {
        json!({"class": class, "user_id": user, "methods": methods,
               "audit_ids": ["AAECAwQFBgcICQoLDA0ODw", "_-_-_-_-_-_-_-_-_-_-_w"],
               "expires_at": exp})
    };
    let with = |mut v: Value, extra: Value| {
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        v
    };
    // (spec, payload type fernetd must name, version)
    let cases = [
        (
            base("UnscopedPayload", &uuid('a'), json!(["password"])),
            "unscoped",
            0,
        ),
        (
            with(
                base(
                    "DomainScopedPayload",
                    &uuid('b'),
                    json!(["password", "token"]),
                ),
                json!({"domain_id": uuid('c')}),
            ),
            "domain-scoped",
            1,
        ),
        (
            // The default domain's id is not a UUID; nor is an LDAP user's.
            with(
                base("DomainScopedPayload", "ldap-üser", json!(["external"])),
                json!({"domain_id": "default"}),
            ),
            "domain-scoped",
            1,
        ),
        (
            with(
                base("ProjectScopedPayload", "ldap-üser", json!(["password"])),
                json!({"project_id": uuid('d')}),
            ),
            "project-scoped",
            2,
        ),
        (
            with(
                base("TrustScopedPayload", &uuid('e'), json!(["token"])),
                json!({"project_id": "not-a-uuid-project", "trust_id": uuid('f')}),
            ),
            "trust-scoped",
            3,
        ),
        (
            with(
                base("FederatedUnscopedPayload", &uuid('1'), json!(["mapped"])),
                json!({"groups": [uuid('2'), "ldap-group"], "idp_id": "myidp", "protocol_id": "saml2"}),
            ),
            "federated-unscoped",
            4,
        ),
        (
            with(
                base(
                    "FederatedProjectScopedPayload",
                    &uuid('3'),
                    json!(["mapped", "token"]),
                ),
                json!({"project_id": uuid('4'), "groups": [], "idp_id": uuid('5'), "protocol_id": "openid"}),
            ),
            "federated-project-scoped",
            5,
        ),
        (
            with(
                base(
                    "FederatedDomainScopedPayload",
                    &uuid('6'),
                    json!(["mapped"]),
                ),
                json!({"domain_id": uuid('7'), "groups": [uuid('8')], "idp_id": "idp2", "protocol_id": "mapped"}),
            ),
            "federated-domain-scoped",
            6,
        ),
        (
            with(
                base("OauthScopedPayload", &uuid('9'), json!(["oauth1"])),
                json!({"project_id": uuid('a'), "access_token_id": uuid('b')}),
            ),
            "oauth1-scoped",
            7,
        ),
        (
            with(
                base("SystemScopedPayload", &uuid('c'), json!(["password"])),
                json!({"system": "all"}),
            ),
            "system-scoped",
            8,
        ),
        (
            with(
                base(
                    "ApplicationCredentialScopedPayload",
                    &uuid('d'),
                    json!(["application_credential"]),
                ),
                json!({"project_id": uuid('e'), "app_cred_id": uuid('f')}),
            ),
            "application-credential-scoped",
            9,
        ),
        (
            with(
                base(
                    "Oauth2CredentialsScopedPayload",
                    &uuid('0'),
                    json!(["application_credential", "ec2credential"]),
                ),
                json!({"project_id": uuid('1'), "domain_id": "default", "thumbprint": "5GVR9YMTNm0jWTcfQeGGWNMC8lV2ohNx9-Qv6FZ4Gnk"}),
            ),
            "oauth2-credential-scoped",
            10,
        ),
    ];
    let specs = Value::Array(cases.iter().map(|c| c.0.clone()).collect());
    let made = keystone_make("tokens", &repo, &specs);
    assert_eq!(made.len(), cases.len());
    let fps = fingerprints(&repo);
    let key_texts: Vec<String> = keys(&repo).into_values().collect();
    for ((spec, kind, version), m) in cases.iter().zip(&made) {
        let token = m["token"].as_str().unwrap();
        let ks = &m["keystone"];
        let (code, v, run) = token_json(&[token, "--key-repository", r]);
        assert_eq!(code, 0, "{spec}: {}{}", run.stdout, run.stderr);
        assert_no_secrets(&run, &key_texts, token);
        let p = &v["payload"];
        assert_eq!(p["type"], json!(kind), "{spec}");
        assert_eq!(p["version"], json!(version), "{spec}");
        assert_eq!(m["version"], json!(version), "{spec}");
        assert_eq!(v["key"]["number"], json!(2), "{spec}");
        assert_eq!(v["key"]["role"], json!("primary"), "{spec}");
        assert_eq!(v["key"]["fingerprint"], fps["2"], "{spec}");
        assert_eq!(v["verdict"], json!("valid"), "{spec}");
        // The spec's values, and exactly what Keystone's validate_token reads back.
        assert_eq!(p["user_id"], spec["user_id"], "{spec}");
        assert_eq!(p["user_id"], ks["user_id"], "{spec}");
        assert_eq!(p["methods"], ks["methods"], "{spec}");
        assert_eq!(p["audit_ids"], ks["audit_ids"], "{spec}");
        assert_eq!(p["audit_ids"], spec["audit_ids"], "{spec}");
        assert_eq!(parse_time(&p["expires_at"]), parse_time(&ks["expires_at"]));
        assert_eq!(parse_time(&p["expires_at"]), parse_time(&json!(exp)));
        assert_eq!(parse_time(&v["created"]), parse_time(&ks["issued_at"]));
        for field in [
            "system",
            "project_id",
            "domain_id",
            "trust_id",
            "federated_group_ids",
            "identity_provider_id",
            "protocol_id",
            "access_token_id",
            "app_cred_id",
            "thumbprint",
        ] {
            assert_eq!(p[field], ks[field], "{spec}: {field}");
        }
    }
    // Concrete values, not only agreement: Keystone's method order, ids as uuid.hex or text.
    let (_, v, _) = token_json(&[made[1]["token"].as_str().unwrap(), "--key-repository", r]);
    assert_eq!(v["payload"]["methods"], json!(["token", "password"]));
    assert_eq!(v["payload"]["domain_id"], json!(uuid('c')));
    let (_, v, _) = token_json(&[made[5]["token"].as_str().unwrap(), "--key-repository", r]);
    assert_eq!(
        v["payload"]["federated_group_ids"],
        json!([uuid('2'), "ldap-group"])
    );
    assert_eq!(v["payload"]["identity_provider_id"], json!("myidp"));
    assert_eq!(v["payload"]["protocol_id"], json!("saml2"));

    // The text form, with the token on stdin (kept out of shell history).
    let token = made[3]["token"].as_str().unwrap();
    let out = token_stdin(&["--key-repository", r], &format!("{token}\n"));
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_no_secrets(&out, &key_texts, token);
    let fp = fps["2"].as_str().unwrap();
    for line in [
        "token     project-scoped (payload version 2), made ".to_string(),
        format!("key       2 (fingerprint {fp}), primary now, since "),
        "user      ldap-üser".to_string(),
        "methods   password".to_string(),
        format!("project   {}", uuid('d')),
        "audit id  AAECAwQFBgcICQoLDA0ODw, _-_-_-_-_-_-_-_-_-_-_w".to_string(),
        format!("expires   {exp}"),
        format!("verdict   valid until {}", &exp[..19]),
    ] {
        assert!(out.stdout.contains(&line), "{line}\n{}", out.stdout);
    }
    // `-` reads stdin too.
    let dash = token_stdin(&["-", "--key-repository", r], token);
    assert_eq!(dash.code, 0, "{}", dash.stderr);
    assert_eq!(dash.stdout, out.stdout);
}

#[test]
fn keystone_conf_auth_methods_decide_the_method_names() {
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("keys");
    let r = repo.to_str().unwrap();
    fernetd_ok(&["setup", "--key-repository", r]);
    // Keystone (defaults) packs password + token as 2 + 4; a deployment listing
    // `[auth] methods = password,token,totp` reads 2 + 4 as token + totp.
    let token = one_token(&repo, &from_now(3600));
    let conf = t.path().join("keystone.conf");
    std::fs::write(&conf, "[auth]\nmethods = password, token, totp\n").unwrap();
    let c = conf.to_str().unwrap();
    let (_, v, _) = token_json(&[&token, "--key-repository", r, "--keystone-config", c]);
    // Keystone's default list has password at bit 2: here that bit is `token`.
    assert_eq!(v["payload"]["methods"], json!(["token"]));
    let (_, v, _) = token_json(&[&token, "--key-repository", r]);
    assert_eq!(v["payload"]["methods"], json!(["password"]));
}

#[test]
fn receipts_are_read_from_the_receipts_repository() {
    let t = tempfile::tempdir().unwrap();
    let tokens = t.path().join("keys");
    let receipts = t.path().join("receipt-keys");
    fernetd_ok(&["setup", "--key-repository", tokens.to_str().unwrap()]);
    fernetd_ok(&["setup", "--key-repository", receipts.to_str().unwrap()]);
    let config = t.path().join("fernetd.toml");
    std::fs::write(
        &config,
        format!(
            "[tokens]\nkey_repository = \"{}\"\n[receipts]\nkey_repository = \"{}\"\nexpiration = \"5m\"\n",
            tokens.display(),
            receipts.display()
        ),
    )
    .unwrap();
    let c = config.to_str().unwrap();
    let specs = json!([
        {"user_id": "0123456789abcdef0123456789abcdef", "methods": ["password"], "expires_at": from_now(300)},
        {"user_id": "ldap-user", "methods": ["password", "token"], "expires_at": from_now(-60)},
    ]);
    let made = keystone_make("receipts", &receipts, &specs);
    let fps = fingerprints(&receipts);
    let receipt = made[0]["token"].as_str().unwrap();
    let (code, v, run) = token_json(&["--config", c, "--kind", "receipts", receipt]);
    assert_eq!(code, 0, "{}{}", run.stdout, run.stderr);
    assert_eq!(v["kind"], json!("receipt"));
    assert_eq!(v["repository"], json!(receipts.display().to_string()));
    assert_eq!(v["payload"]["type"], json!("receipt"));
    assert_eq!(v["payload"]["version"], Value::Null);
    assert_eq!(
        v["payload"]["user_id"],
        json!("0123456789abcdef0123456789abcdef")
    );
    assert_eq!(v["payload"]["user_id"], made[0]["keystone"]["user_id"]);
    assert_eq!(v["payload"]["methods"], json!(["password"]));
    assert_eq!(
        parse_time(&v["payload"]["expires_at"]),
        parse_time(&made[0]["keystone"]["expires_at"])
    );
    assert_eq!(v["key"]["number"], json!(1));
    assert_eq!(v["key"]["fingerprint"], fps["1"]);

    // An expired receipt has no allow_expired window: refused, exit 3.
    let expired = made[1]["token"].as_str().unwrap();
    let out = fernetd(&["--config", c, "token", "--kind", "receipts", expired]);
    assert_eq!(out.code, 3, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("receipt   receipt, made "),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("methods   token, password"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("Keystone never accepts an expired receipt"),
        "{}",
        out.stdout
    );
    // Read as a token, against the token repository: no key there made it.
    let out = fernetd(&["--config", c, "token", receipt]);
    assert_eq!(out.code, 4, "{}{}", out.stdout, out.stderr);
}

#[test]
fn verdicts_are_keystones_with_the_configured_window() {
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("keys");
    let r = repo.to_str().unwrap();
    fernetd_ok(&["setup", "--key-repository", r]);
    let valid = one_token(&repo, &from_now(3600));
    let recent = one_token(&repo, &from_now(-600));
    let old = one_token(&repo, &from_now(-3 * 86400));

    let (code, v, _) = token_json(&[&valid, "--key-repository", r]);
    assert_eq!((code, v["verdict"].clone()), (0, json!("valid")));
    assert_eq!(
        parse_time(&v["until"]),
        parse_time(&v["payload"]["expires_at"])
    );

    // Keystone's default window is 2 days.
    let (code, v, _) = token_json(&[&recent, "--key-repository", r]);
    assert_eq!((code, v["verdict"].clone()), (1, json!("allow-expired")));
    let expired = parse_time(&v["payload"]["expires_at"]);
    assert_eq!(parse_time(&v["until"]), expired + chrono::Duration::days(2));
    assert_eq!(v["allow_expired_window_seconds"], json!(172800));
    let out = fernetd(&["token", &recent, "--key-repository", r]);
    assert_eq!(out.code, 1);
    assert!(
        out.stdout.contains(&format!(
            "verdict   expired at {}; accepted only where a service asks for allow_expired",
            expired.format("%Y-%m-%dT%H:%M:%SZ")
        )),
        "{}",
        out.stdout
    );

    let (code, v, _) = token_json(&[&old, "--key-repository", r]);
    assert_eq!((code, v["verdict"].clone()), (3, json!("past-window")));
    assert!(fernetd(&["token", &old, "--key-repository", r])
        .stdout
        .contains("verdict   past its window: expired, and allow_expired_window (2d) ended"));

    // The window comes from keystone.conf as for status and plan, and the flag over it.
    let conf = t.path().join("keystone.conf");
    std::fs::write(&conf, "[token]\nallow_expired_window = 300\n").unwrap();
    let c = conf.to_str().unwrap();
    let (code, v, _) = token_json(&[&recent, "--key-repository", r, "--keystone-config", c]);
    assert_eq!((code, v["verdict"].clone()), (3, json!("past-window")));
    assert_eq!(
        parse_time(&v["since"]),
        expired + chrono::Duration::seconds(300)
    );
    let (code, _, _) = token_json(&[
        &recent,
        "--key-repository",
        r,
        "--keystone-config",
        c,
        "--allow-expired-window",
        "1h",
    ]);
    assert_eq!(code, 1);
}

/// Keys whose retention is a second, so that rotations purge them at once.
const SHORT: [&str; 8] = [
    "--max-active-keys",
    "3",
    "--expiration",
    "1",
    "--allow-expired-window",
    "0",
    "--margin",
    "0",
];

#[test]
fn a_token_whose_key_fernetd_purged_names_the_key_and_when() {
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("keys");
    let r = repo.to_str().unwrap();
    fernetd_ok(&["setup", "--key-repository", r]);
    let token = one_token(&repo, &from_now(3600));
    let short_conf = t.path().join("keystone.conf");
    std::fs::write(&short_conf, "[token]\nexpiration = 1\n").unwrap();
    let key1_fp = fingerprints(&repo)["1"].clone();
    let mut all_keys: Vec<String> = keys(&repo).into_values().collect();
    for _ in 0..3 {
        std::thread::sleep(std::time::Duration::from_millis(1100));
        rotate_ok(r, &SHORT);
        all_keys.extend(keys(&repo).into_values());
    }
    // 3 rotations, 3 keys: 1 and 2 are gone, 3 and 4 remain.
    assert_eq!(
        keys(&repo).keys().copied().collect::<Vec<_>>(),
        vec![0, 3, 4]
    );
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(repo.join(".fernetd/state.json")).unwrap())
            .unwrap();
    let purged1 = state["purged"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["number"] == json!(1))
        .unwrap()
        .clone();
    assert_eq!(purged1["by_fernetd"], json!(true));

    let (code, v, run) = token_json(&[&token, "--key-repository", r]);
    assert_eq!(code, 4, "{}{}", run.stdout, run.stderr);
    assert_no_secrets(&run, &all_keys, &token);
    assert_eq!(v["decrypted"], json!(false));
    assert_eq!(v["verdict"], json!("not-decryptable"));
    assert_eq!(v["key"], Value::Null);
    assert_eq!(v["payload"], Value::Null);
    let o = &v["origin"];
    assert_eq!(o["origin"], json!("purged"), "{o}");
    assert_eq!(o["number"], json!(1), "{o}");
    assert_eq!(o["fingerprint"], key1_fp);
    assert_eq!(o["by_fernetd"], json!(true));
    assert_eq!(parse_time(&o["at"]), parse_time(&purged1["at"]));
    // The token's clear creation time is read without a key.
    let made = parse_time(&v["created"]);
    assert!((chrono::Utc::now() - made).num_seconds() < 60, "{made}");

    let out = fernetd(&["token", &token, "--key-repository", r]);
    assert_eq!(out.code, 4);
    assert_no_secrets(&out, &all_keys, &token);
    let at = parse_time(&purged1["at"]).format("%Y-%m-%dT%H:%M:%SZ");
    assert!(
        out.stdout.contains(&format!(
            "origin    most likely key 1 (fingerprint {}), primary when it was made: purged by fernetd at {at}",
            key1_fp.as_str().unwrap()
        )),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains(&format!(
            "verdict   refused here (Keystone answers 401): made with key 1, purged by fernetd at {at}"
        )),
        "{}",
        out.stdout
    );
    // Keystone's lifetimes (1h + 2d) outlast the 1 s the rotations were told: too early.
    assert!(
        out.stdout.contains(
            "note      with expiration 1h + allow_expired_window 2d, a token made then may be presented until "
        ) && out.stdout.contains("but its key left before that"),
        "{}",
        out.stdout
    );
    assert_eq!(v["key_left_early"], json!(true));
    assert_eq!(
        parse_time(&v["presentable_until"]),
        made + chrono::Duration::hours(49)
    );
    // With the lifetimes the rotations used, it is past its window anyway.
    let out = fernetd(&[
        "token",
        &token,
        "--key-repository",
        r,
        "--allow-expired-window",
        "0",
        "--keystone-config",
        short_conf.to_str().unwrap(),
    ]);
    assert_eq!(out.code, 4);
    assert!(
        out.stdout.contains("note      with expiration 1s + allow_expired_window 0s, a token made then is refused anyway since "),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("none of the 3 keys in"),
        "{}",
        out.stdout
    );
}

#[test]
fn a_token_whose_key_was_deleted_outside_fernetd_says_so() {
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("keys");
    let r = repo.to_str().unwrap();
    fernetd_ok(&["setup", "--key-repository", r]);
    let token = one_token(&repo, &from_now(3600));
    let key1_fp = fingerprints(&repo)["1"].clone();
    // In a later second than the token's: key 1 was its only primary.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    rotate_ok(r, &[]);
    // Key 1 (the token's, a secondary now) still decrypts it.
    let (code, v, _) = token_json(&[&token, "--key-repository", r]);
    assert_eq!(code, 0);
    assert_eq!(v["key"]["number"], json!(1));
    assert_eq!(v["key"]["role"], json!("secondary"));
    assert!(v["key"]["demoted"].is_string(), "{v}");
    let out = fernetd(&["token", &token, "--key-repository", r]);
    assert!(
        out.stdout.contains(&format!(
            "key       1 (fingerprint {}), secondary now, demoted ",
            key1_fp.as_str().unwrap()
        )),
        "{}",
        out.stdout
    );

    // Deleted by hand; no fernetd has looked since.
    std::fs::remove_file(repo.join("1")).unwrap();
    let (code, v, _) = token_json(&[&token, "--key-repository", r]);
    assert_eq!(code, 4);
    assert_eq!(v["origin"]["origin"], json!("removed-unrecorded"));
    assert_eq!(v["origin"]["number"], json!(1));
    assert_eq!(v["origin"]["fingerprint"], key1_fp);
    let out = fernetd(&["token", &token, "--key-repository", r]);
    assert!(
        out.stdout
            .contains("made with key 1, removed outside fernetd"),
        "{}",
        out.stdout
    );

    // Once fernetd has seen it gone (setup records what it finds), the record says when.
    // Its tokens still live: setup says the loss (exit 3).
    let setup = fernetd(&["setup", "--key-repository", r]);
    assert_eq!(setup.code, fernetd::cli::EXIT_KEY_LOST, "{}", setup.stderr);
    assert!(
        setup.stderr.contains("[key-lost-in-retention]"),
        "{}",
        setup.stderr
    );
    let (code, v, _) = token_json(&[&token, "--key-repository", r]);
    assert_eq!(code, 4);
    let o = &v["origin"];
    assert_eq!(o["origin"], json!("purged"), "{o}");
    assert_eq!(o["number"], json!(1));
    assert_eq!(o["by_fernetd"], json!(false));
    assert!(fernetd(&["token", &token, "--key-repository", r])
        .stdout
        .contains("removed outside fernetd (found gone at "));
}

#[test]
fn a_token_of_another_repository_was_never_held_here() {
    let t = tempfile::tempdir().unwrap();
    let here = t.path().join("here");
    let there = t.path().join("there");
    fernetd_ok(&["setup", "--key-repository", here.to_str().unwrap()]);
    fernetd_ok(&["setup", "--key-repository", there.to_str().unwrap()]);
    let token = one_token(&there, &from_now(3600));
    let (code, v, run) = token_json(&[&token, "--key-repository", here.to_str().unwrap()]);
    assert_eq!(code, 4, "{}{}", run.stdout, run.stderr);
    assert_eq!(v["origin"]["origin"], json!("not-this-repository"));
    assert_eq!(v["origin"]["primary_then"], json!(1));
    let out = fernetd(&["token", &token, "--key-repository", here.to_str().unwrap()]);
    assert!(
        out.stdout.contains("key 1 was primary here at ")
            && out
                .stdout
                .contains("never held here: made by another cluster or node"),
        "{}",
        out.stdout
    );
    let mut secrets: Vec<String> = keys(&here).into_values().collect();
    secrets.extend(keys(&there).into_values());
    assert_no_secrets(&out, &secrets, &token);
    // The repository that made it reads it.
    let (code, _, _) = token_json(&[&token, "--key-repository", there.to_str().unwrap()]);
    assert_eq!(code, 0);
}

#[test]
fn garbage_is_one_line_and_exit_2() {
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("keys");
    let r = repo.to_str().unwrap();
    fernetd_ok(&["setup", "--key-repository", r]);
    let secrets: Vec<String> = keys(&repo).into_values().collect();
    let token = one_token(&repo, &from_now(3600));
    let cases = [
        (
            "garbage!".to_string(),
            "not a Fernet token: not url-safe base64",
        ),
        (
            "Zm9vYmFy".to_string(),
            "not a Fernet token: 6 bytes, shorter",
        ),
        (
            // 89 bytes that do not start with Fernet's version byte.
            format!("AQ{}", "A".repeat(117)),
            "not a Fernet token: version byte 0x01",
        ),
        (token[..token.len() - 5].to_string(), "not a Fernet token"),
        ("A".repeat(20_000), "not a Fernet token: 20000 characters"),
    ];
    for (input, said) in &cases {
        let out = fernetd(&["token", input, "--key-repository", r]);
        assert_eq!(out.code, 2, "{input}: {}{}", out.stdout, out.stderr);
        assert_eq!(out.error_lines(), 1, "{}", out.stderr);
        assert!(out.stderr.contains(said), "{said}: {}", out.stderr);
        assert!(out.stdout.is_empty(), "{}", out.stdout);
        assert_no_secrets(&out, &secrets, input);
    }
    let out = token_stdin(&["--key-repository", r], "");
    assert_eq!(out.code, 2);
    assert_eq!(out.error_lines(), 1, "{}", out.stderr);
    assert!(out.stderr.contains("no token given"), "{}", out.stderr);
    // A token altered in one character fails its HMAC with every key: not decryptable.
    let mut altered = token.clone().into_bytes();
    let i = altered.len() / 2;
    altered[i] = if altered[i] == b'A' { b'B' } else { b'A' };
    let altered = String::from_utf8(altered).unwrap();
    let out = fernetd(&["token", &altered, "--key-repository", r]);
    assert_eq!(out.code, 4, "{}{}", out.stdout, out.stderr);
    // A missing repository is an error naming it.
    let out = fernetd(&["token", &token, "--key-repository", "/nonexistent/keys"]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("/nonexistent/keys"), "{}", out.stderr);
}

#[test]
fn the_readme_and_help_give_the_token_exit_statuses() {
    use fernetd::cli::*;
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let row = readme
        .lines()
        .find(|l| l.starts_with("| `token` |"))
        .expect("README: no exit status row for token");
    for expected in [
        "0 valid".to_string(),
        format!("{EXIT_TOKEN_ALLOW_EXPIRED} expired, accepted only with `allow_expired`"),
        format!("{EXIT_TOKEN_PAST_WINDOW} past its window"),
        format!("{EXIT_TOKEN_NOT_DECRYPTABLE} no key here decrypts it"),
        format!("{EXIT_ERROR} not a token"),
    ] {
        assert!(row.contains(&expected), "{expected}: {row}");
    }
    let help = fernetd_ok(&["token", "--help"]).stdout;
    for expected in [
        "Exit 0 valid".to_string(),
        format!("{EXIT_TOKEN_ALLOW_EXPIRED} accepted only with allow_expired"),
        format!("{EXIT_TOKEN_PAST_WINDOW} past its window"),
        format!("{EXIT_TOKEN_NOT_DECRYPTABLE} no key here decrypts it"),
    ] {
        assert!(help.contains(&expected), "{expected}: {help}");
    }
}

/// In cluster mode the answer adds whether the cluster's key set holds the token's key and
/// which nodes have acknowledged that set (they hold its keys) or are behind it.
#[test]
fn in_cluster_mode_it_says_which_nodes_hold_the_key() {
    use fernetd::cluster::{Ack, Cluster};
    let etcd = common::etcd::Etcd::start();
    let t = tempfile::tempdir().unwrap();
    let (cluster_keys, local) = (t.path().join("cluster"), t.path().join("local"));
    fernetd_ok(&["setup", "--key-repository", cluster_keys.to_str().unwrap()]);
    fernetd_ok(&["setup", "--key-repository", local.to_str().unwrap()]);
    let cfg = t.path().join("fernetd.toml");
    std::fs::write(
        &cfg,
        format!(
            "[keystone]\nconfig = \"/dev/null\"\n[tokens]\nkey_repository = \"{}\"\n[cluster]\ninsecure_unsealed = true\nendpoints = [\"{}\"]\nprefix = \"/test\"\ndial_timeout = \"10s\"\n",
            local.display(),
            etcd.endpoint
        ),
    )
    .unwrap();
    let c = cfg.to_str().unwrap();
    fernetd_ok(&[
        "--config",
        c,
        "cluster",
        "init",
        "--from",
        cluster_keys.to_str().unwrap(),
    ]);
    // Two members: one has applied the set, one is behind it.
    let sources =
        fernetd::config::Sources::load(&fernetd::config::Flags::default(), Some(&cfg)).unwrap();
    let settings = sources
        .file
        .cluster
        .unwrap()
        .settings(&sources.file.keystone);
    let revision = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let mut cl = Cluster::connect(&settings).await.unwrap();
            let kind = fernetd::config::Kind::Tokens;
            let (set, revision) = cl.fetch(kind).await.unwrap();
            let staged = set.fingerprints()[&0];
            for (node, rev) in [("node-a", revision), ("node-b", revision - 1)] {
                let ack = Ack {
                    node: node.into(),
                    revision: rev,
                    staged,
                    clock: Some(chrono::Utc::now()),
                    refused: None,
                };
                cl.acknowledge(kind, &ack).await.unwrap();
            }
            revision
        });

    // A token of the cluster's keys on a node that does not hold them.
    let token = one_token(&cluster_keys, &from_now(3600));
    let (code, v, run) = token_json(&["--config", c, &token]);
    assert_eq!(code, 4, "{}{}", run.stdout, run.stderr);
    let cl = &v["cluster"];
    assert_eq!(cl["revision"], json!(revision), "{cl}");
    assert_eq!(cl["key"], json!(1), "{cl}");
    assert_eq!(cl["nodes_current"], json!(["node-a"]), "{cl}");
    assert_eq!(
        cl["nodes_behind"],
        json!([{"node": "node-b", "revision": revision - 1}]),
        "{cl}"
    );
    let out = fernetd(&["--config", c, "token", &token]);
    assert!(
        out.stdout.contains(&format!(
            "cluster   the cluster's key set (revision {revision}) holds its key as key 1: held by node-a; behind: node-b (revision {}); this node does not hold the cluster's keys",
            revision - 1
        )),
        "{}",
        out.stdout
    );
    let mut secrets: Vec<String> = keys(&cluster_keys).into_values().collect();
    secrets.extend(keys(&local).into_values());
    assert_no_secrets(&out, &secrets, &token);

    // A token of this node's own keys: decrypted here, and not in the cluster's set.
    let token = one_token(&local, &from_now(3600));
    let (code, v, _) = token_json(&["--config", c, &token]);
    assert_eq!(code, 0);
    assert_eq!(v["cluster"]["key"], Value::Null);
    let out = fernetd(&["--config", c, "token", &token]);
    assert!(
        out.stdout.contains(&format!(
            "cluster   the cluster's key set (revision {revision}) does not hold its key; nodes behind it may still hold the key: node-b (revision {})",
            revision - 1
        )),
        "{}",
        out.stdout
    );

    // etcd gone: said, and the answer from the disk stands.
    drop(etcd);
    let out = fernetd(&["--config", c, "token", &token]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("cluster   not reached ("),
        "{}",
        out.stdout
    );
}

#[test]
fn spellings_keystone_reads_are_read_and_a_key_it_may_not_read_stops_the_verdict() {
    let t = tempfile::tempdir().unwrap();
    let repo = t.path().join("keys");
    let r = repo.to_str().unwrap();
    fernetd_ok(&["setup", "--key-repository", r]);
    let token = one_token(&repo, &from_now(3600));
    // Padding added back (more than needed) and the standard alphabet: Python's
    // urlsafe_b64decode, which Keystone's Fernet uses, reads both.
    let padded = format!("{token}====");
    let standard = token.replace('-', "+").replace('_', "/");
    for spelling in [&padded, &standard] {
        let (code, v, run) = token_json(&[spelling, "--key-repository", r]);
        assert_eq!(code, 0, "{}{}", run.stdout, run.stderr);
        assert_eq!(v["key"]["number"], json!(1));
    }
    // Key 1, the token's, replaced by other material: said as replaced, not as missing.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    rotate_ok(r, &[]);
    let other = fernetd_ok(&["cluster", "new-seal-key"]).stdout;
    std::fs::write(repo.join("1"), other.trim()).unwrap();
    let out = fernetd(&["token", &token, "--key-repository", r]);
    assert_eq!(out.code, 4, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .contains("replaced outside fernetd by other material"),
        "{}",
        out.stdout
    );
    // A key file Keystone may fail on, or read otherwise: no verdict, one line naming it.
    std::fs::write(repo.join("2"), "AAAA").unwrap();
    let out = fernetd(&["token", &token, "--key-repository", r]);
    assert_eq!(out.code, 2, "{}{}", out.stdout, out.stderr);
    assert_eq!(out.error_lines(), 1, "{}", out.stderr);
    assert!(
        out.stderr
            .contains(&format!("{}: not a usable key", repo.join("2").display())),
        "{}",
        out.stderr
    );
    assert!(out.stdout.is_empty(), "{}", out.stdout);
}
