//! `fernetd token`: reads the token, gathers the repository's keys and history, asks
//! [`crate::core::token`] and renders its answer (lines or JSON) with an exit code scripts can use.
//!
//! Reads only: no lock, nothing written (in cluster mode it reads the key set and the
//! acknowledgements from etcd). Never prints the token or key material.

use super::render::{rfc3339, say, Severity};
use super::settings::{cluster_settings, configured};
use super::{
    block_on, TokenArgs, TokenKindArg, EXIT_TOKEN_ALLOW_EXPIRED, EXIT_TOKEN_NOT_DECRYPTABLE,
    EXIT_TOKEN_PAST_WINDOW,
};
use crate::config::{self, Flags};
use crate::core::clock::Now;
use crate::core::duration;
use crate::core::history::History;
use crate::core::key::Fingerprint;
use crate::core::token::{self, Kind, Origin, Payload, Role, Verdict};
use crate::repository::Repository;
use chrono::{DateTime, SecondsFormat, Utc};
use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::Path;
use zeroize::Zeroizing;

/// The key that decrypts a token, as it is now.
struct Found {
    number: u64,
    fingerprint: Fingerprint,
    role: Role,
    promoted: Option<DateTime<Utc>>,
    demoted: Option<DateTime<Utc>>,
}

/// What a judgement reads: the repository's keys and history, the lifetimes, the cluster.
struct Look {
    kind: Kind,
    settings: config::Settings,
    envelope: token::Envelope,
    keys: BTreeMap<u64, crate::core::key::Key>,
    disk: BTreeMap<u64, Fingerprint>,
    history: History,
    methods: Vec<String>,
    cluster: Option<Result<ClusterLook, String>>,
    dir: String,
    now: DateTime<Utc>,
    window: std::time::Duration,
}

pub(super) fn run(mut a: TokenArgs, config: Option<&Path>, clock: &Now) -> anyhow::Result<i32> {
    let text = read_token(a.token.as_deref())?;
    if let Some(t) = a.token.as_mut() {
        zeroize::Zeroize::zeroize(t);
    }
    let look = look(&a, &text, config, clock)?;
    let keys: BTreeMap<u64, &crate::core::key::Key> =
        look.keys.iter().map(|(&n, k)| (n, k)).collect();
    match look.envelope.decrypt(&keys) {
        None => not_decryptable(&look, a.json),
        Some((number, plain)) => decrypted(&look, number, plain, a.json),
    }
}

/// Reads everything a judgement needs; refuses a repository with a key file Keystone cannot
/// use as fernetd does.
fn look(a: &TokenArgs, text: &str, config: Option<&Path>, clock: &Now) -> anyhow::Result<Look> {
    let flags = Flags {
        key_repository: a.repo.key_repository.clone(),
        keystone_config: a.repo.keystone_config.clone(),
        allow_expired_window: a.allow_expired_window,
        ..Flags::default()
    };
    let sources = config::Sources::load(&flags, config)?;
    let (kind, repo_kind) = match a.kind {
        TokenKindArg::Tokens => (Kind::Token, config::Kind::Tokens),
        TokenKindArg::Receipts => (Kind::Receipt, config::Kind::Receipts),
    };
    let s = configured(&sources, repo_kind, &flags, config)?;
    let envelope = token::envelope(text)?;
    let repo = Repository::new(&s.key_repository, None);
    let scan = repo.scan()?;
    // Keystone builds one Fernet per key file: a file it may not read as fernetd does fails
    // every token there, or is read leniently; either way no verdict here would be true.
    // (An empty file Keystone skips, as fernetd does.)
    if let Some(bad) = scan.key_entries().find(|e| match &e.kind {
        crate::repository::EntryKind::Key { content, .. } => !matches!(
            content,
            Ok(_)
                | Err(crate::repository::scan::ContentProblem::Format(
                    crate::core::key::KeyFormatError::Empty
                ))
        ),
        _ => false,
    }) {
        anyhow::bail!(
            "{}: not a usable key (`fernetd check` says why): Keystone fails every token of \
             this repository or reads the file otherwise; fix the repository before judging a \
             token",
            bad.path.display()
        );
    }
    let keys = scan
        .keys()
        .into_iter()
        .map(|(n, k)| (n, k.clone()))
        .collect();
    let disk = scan.fingerprints();
    let history = repo.history().unwrap_or_else(|e| {
        say(
            Severity::Warning,
            &format!("warning: {e}: judging without the history"),
        );
        History::new()
    });
    let methods: Vec<String> = sources.keystone.auth_methods.clone().unwrap_or_else(|| {
        token::DEFAULT_AUTH_METHODS
            .iter()
            .map(|m| m.to_string())
            .collect()
    });
    let cluster = cluster_look(&sources, config, repo_kind, &envelope);
    Ok(Look {
        kind,
        dir: s.key_repository.display().to_string(),
        window: s.lifetime.allow_expired_window,
        settings: s,
        envelope,
        keys,
        disk,
        history,
        methods,
        cluster,
        now: clock.wall,
    })
}

/// No key here decrypts the token: where its key went, and whether it left early.
fn not_decryptable(l: &Look, json: bool) -> anyhow::Result<i32> {
    let (kind, created) = (l.kind, l.envelope.created);
    let origin = token::origin(created, &l.history, &l.disk);
    let code = EXIT_TOKEN_NOT_DECRYPTABLE;
    // Its payload is unreadable, but no token outlives the configured lifetime: made
    // then, it could be presented until created + expiration (+ allow_expired_window).
    let presentable =
        crate::core::history::later(created, l.settings.lifetime.expiration + l.window);
    let early = match &origin {
        Origin::Purged { at, .. } => *at < presentable,
        _ => false,
    };
    if json {
        let v = serde_json::json!({
            "kind": kind,
            "repository": l.dir,
            "created": rfc3339(created),
            "decrypted": false,
            "keys_tried": l.disk.keys().collect::<Vec<_>>(),
            "key": null,
            "origin": origin,
            "payload": null,
            "verdict": "not-decryptable",
            "presentable_until": rfc3339(presentable),
            "key_left_early": early,
            "cluster": cluster_json(&l.cluster),
            "exit": code,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(code);
    }
    // Payload ids and paths may hold control characters: escaped, so no line is forged.
    let row = |k: &str, v: String| println!("{k:<9} {}", crate::hooks::printable(&v));
    row(
        name(kind),
        format!(
            "made {} (read in clear; the rest is encrypted)",
            rfc3339(created)
        ),
    );
    future_note(created, l.now);
    row(
        "key",
        format!(
            "none of the {} keys in {} decrypts it ({})",
            l.disk.len(),
            l.dir,
            numbers(&l.disk)
        ),
    );
    row("origin", describe_origin(&origin, created, &l.disk));
    if let Some(note) = lifetime_note(l, presentable, early) {
        row("note", note);
    }
    if let Some(c) = &l.cluster {
        row("cluster", describe_cluster(c, false));
    }
    row(
        "verdict",
        format!(
            "refused here (Keystone answers 401): {}",
            short_origin(&origin)
        ),
    );
    Ok(code)
}

/// For a token no key decrypts: refused anyway (past its lifetime), or its key left before
/// its lifetime ended.
fn lifetime_note(l: &Look, presentable: DateTime<Utc>, early: bool) -> Option<String> {
    let kind = l.kind;
    let lifetime = match kind {
        Kind::Token => format!(
            "expiration {} + allow_expired_window {}",
            duration::format(l.settings.lifetime.expiration),
            duration::format(l.window)
        ),
        Kind::Receipt => format!(
            "expiration {}",
            duration::format(l.settings.lifetime.expiration)
        ),
    };
    if l.now >= presentable {
        Some(format!(
            "with {lifetime}, a {} made then is refused anyway since {}: a new one is the answer",
            name(kind),
            rfc3339(presentable)
        ))
    } else if early {
        Some(format!(
            "with {lifetime}, a {} made then may be presented until {}, but its key \
             left before that: the rotation schedule is too fast for these lifetimes \
             (fernetd plan), or keys were purged by force (--force-purge, \
             keystone-manage)",
            name(kind),
            rfc3339(presentable)
        ))
    } else {
        None
    }
}

/// Key `number` decrypts the token: its payload, the key's life, the verdict.
fn decrypted(l: &Look, number: u64, plain: Zeroizing<Vec<u8>>, json: bool) -> anyhow::Result<i32> {
    let (kind, dir) = (l.kind, &l.dir);
    let fingerprint = l.disk.get(&number).copied().unwrap_or(Fingerprint::NONE);
    let record = l
        .history
        .keys
        .get(&number)
        .filter(|r| r.fingerprint == fingerprint);
    let found = Found {
        number,
        fingerprint,
        role: token::role(number, &l.disk),
        promoted: record.and_then(|r| r.promoted),
        demoted: record.and_then(|r| r.demoted),
    };
    let payload = match kind {
        Kind::Token => token::token_payload(&plain, &l.methods),
        Kind::Receipt => token::receipt_payload(&plain, &l.methods),
    }
    .map_err(|e| {
        anyhow::anyhow!(
            "{dir}: key {number} (fingerprint {fingerprint}) decrypts it, but it holds no Keystone {} payload: {e}",
            name(kind)
        )
    })?;
    drop(plain);
    let verdict = token::judge(kind, payload.expires_at, l.window, l.now);
    let code = match verdict {
        Verdict::Valid { .. } => 0,
        Verdict::AllowExpired { .. } => EXIT_TOKEN_ALLOW_EXPIRED,
        Verdict::PastWindow { .. } => EXIT_TOKEN_PAST_WINDOW,
    };
    if json {
        let mut v = serde_json::json!({
            "kind": kind,
            "repository": dir,
            "created": rfc3339(l.envelope.created),
            "decrypted": true,
            "key": {
                "number": found.number,
                "fingerprint": found.fingerprint,
                "role": found.role,
                "promoted": found.promoted.map(rfc3339),
                "demoted": found.demoted.map(rfc3339),
            },
            "origin": null,
            "payload": payload,
            "allow_expired_window_seconds": l.window.as_secs(),
            "cluster": cluster_json(&l.cluster),
            "exit": code,
        });
        if let (Some(obj), Ok(serde_json::Value::Object(verdict))) =
            (v.as_object_mut(), serde_json::to_value(verdict))
        {
            obj.extend(verdict);
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(code);
    }
    // Payload ids and paths may hold control characters: escaped, so no line is forged.
    let row = |k: &str, v: String| println!("{k:<9} {}", crate::hooks::printable(&v));
    let version = payload
        .version
        .map_or(String::new(), |v| format!(" (payload version {v})"));
    row(
        name(kind),
        format!(
            "{}{version}, made {}",
            payload.kind,
            rfc3339(l.envelope.created)
        ),
    );
    future_note(l.envelope.created, l.now);
    row("key", describe_key(&found));
    print_payload(&payload, &row);
    if let Some(c) = &l.cluster {
        row("cluster", describe_cluster(c, true));
    }
    row("verdict", describe_verdict(kind, &verdict, l.window));
    Ok(code)
}

/// The token from the argument, or from stdin (`-` or none), bounded and zeroized.
fn read_token(arg: Option<&str>) -> anyhow::Result<Zeroizing<String>> {
    if let Some(t) = arg.filter(|t| *t != "-") {
        return Ok(Zeroizing::new(t.to_string()));
    }
    let mut buf = Zeroizing::new(Vec::new());
    let limit = u64::try_from(token::MAX_TOKEN_LEN + 2).unwrap_or(u64::MAX);
    std::io::stdin()
        .lock()
        .take(limit)
        .read_to_end(&mut buf)
        .map_err(|e| anyhow::anyhow!("stdin: {e}"))?;
    let text = std::str::from_utf8(&buf)
        .map_err(|_| anyhow::anyhow!("stdin: not a Fernet token: not text"))?;
    Ok(Zeroizing::new(text.to_string()))
}

fn name(kind: Kind) -> &'static str {
    match kind {
        Kind::Token => "token",
        Kind::Receipt => "receipt",
    }
}

fn numbers(disk: &BTreeMap<u64, Fingerprint>) -> String {
    let n: Vec<String> = disk.keys().map(u64::to_string).collect();
    format!("keys {}", n.join(" "))
}

fn future_note(created: DateTime<Utc>, now: DateTime<Utc>) {
    if created > now + chrono::Duration::seconds(60) {
        println!(
            "{:<9} made {} ahead of this node's clock: a node with a clock ahead made it",
            "note",
            duration::format((created - now).to_std().unwrap_or_default())
        );
    }
}

fn describe_key(f: &Found) -> String {
    let since = |what: &str, t: Option<DateTime<Utc>>| {
        t.map_or(String::new(), |t| format!(", {what} {}", rfc3339(t)))
    };
    let role = match f.role {
        Role::Primary => format!("primary now{}", since("since", f.promoted)),
        Role::Secondary => format!("secondary now{}", since("demoted", f.demoted)),
        Role::Staged => "staged now (key 0): whoever made it had already promoted this key \
                         (a node ahead of this one, or a rotation elsewhere)"
            .to_string(),
    };
    format!("{} (fingerprint {}), {role}", f.number, f.fingerprint)
}

fn print_payload(p: &Payload, row: &dyn Fn(&str, String)) {
    row("user", p.user_id.clone());
    row(
        "methods",
        if p.methods.is_empty() {
            "none".into()
        } else {
            p.methods.join(", ")
        },
    );
    let opt = |k: &str, v: &Option<String>| {
        if let Some(v) = v {
            row(k, v.clone());
        }
    };
    opt("system", &p.system);
    opt("project", &p.project_id);
    opt("domain", &p.domain_id);
    opt("trust", &p.trust_id);
    if let Some(g) = &p.federated_group_ids {
        row(
            "groups",
            if g.is_empty() {
                "none".into()
            } else {
                g.join(", ")
            },
        );
    }
    opt("idp", &p.identity_provider_id);
    opt("protocol", &p.protocol_id);
    opt("oauth1", &p.access_token_id);
    opt("app cred", &p.app_cred_id);
    opt("thumbprint", &p.thumbprint);
    if !p.audit_ids.is_empty() {
        row("audit id", p.audit_ids.join(", "));
    }
    row(
        "expires",
        p.expires_at.to_rfc3339_opts(SecondsFormat::Micros, true), // Keystone's own form
    );
}

fn describe_verdict(kind: Kind, v: &Verdict, window: std::time::Duration) -> String {
    match (kind, v) {
        (_, Verdict::Valid { until }) => format!("valid until {}", rfc3339(*until)),
        (_, Verdict::AllowExpired { expired, until }) => format!(
            "expired at {}; accepted only where a service asks for allow_expired (service \
             tokens), until {} (allow_expired_window {})",
            rfc3339(*expired),
            rfc3339(*until),
            duration::format(window)
        ),
        (Kind::Token, Verdict::PastWindow { since }) => format!(
            "past its window: expired, and allow_expired_window ({}) ended {}; Keystone \
             refuses it (401)",
            duration::format(window),
            rfc3339(*since)
        ),
        (Kind::Receipt, Verdict::PastWindow { since }) => format!(
            "expired at {}: Keystone never accepts an expired receipt",
            rfc3339(*since)
        ),
    }
}

fn describe_origin(
    o: &Origin,
    created: DateTime<Utc>,
    disk: &std::collections::BTreeMap<u64, crate::core::key::Fingerprint>,
) -> String {
    match o {
        Origin::Purged {
            number,
            fingerprint,
            at,
            by_fernetd,
            earlier,
        } => {
            let how = if *by_fernetd {
                format!("purged by fernetd at {}", rfc3339(*at))
            } else {
                format!("removed outside fernetd (found gone at {})", rfc3339(*at))
            };
            let also = if earlier.is_empty() {
                String::new()
            } else {
                let e: Vec<String> = earlier.iter().map(u64::to_string).collect();
                format!(
                    "; or an earlier key also gone since (key {}): the history keeps no \
                     promotion times of purged keys",
                    e.join(", ")
                )
            };
            format!(
                "most likely key {number} (fingerprint {fingerprint}), primary when it was made: {how}{also}"
            )
        }
        Origin::RemovedUnrecorded {
            number,
            fingerprint,
        } => match disk.get(number) {
            Some(now) => format!(
                "key {number} (fingerprint {fingerprint}), primary when it was made: replaced \
                 outside fernetd by other material (fingerprint {now} now)"
            ),
            None => format!(
                "key {number} (fingerprint {fingerprint}), primary when it was made: not on \
                 disk, and no fernetd saw it go: removed outside fernetd"
            ),
        },
        Origin::NotThisRepository { primary_then } => format!(
            "key {primary_then} was primary here at {} and is still here, and it does not \
             decrypt it: never held here: made by another cluster or node",
            rfc3339(created)
        ),
        Origin::BeforeHistory { history_begins } => match history_begins {
            Some(b) => format!(
                "made before this repository's history begins ({}): by a key removed before \
                 fernetd first saw it, or by another cluster or node",
                rfc3339(*b)
            ),
            None => "no history of this repository (fernetd setup records it): which key made \
                     it cannot be told"
                .to_string(),
        },
    }
}

fn short_origin(o: &Origin) -> String {
    match o {
        Origin::Purged {
            number,
            at,
            by_fernetd: true,
            ..
        } => format!(
            "made with key {number}, purged by fernetd at {}",
            rfc3339(*at)
        ),
        Origin::Purged {
            number,
            at,
            by_fernetd: false,
            ..
        } => format!(
            "made with key {number}, removed outside fernetd (found gone at {})",
            rfc3339(*at)
        ),
        Origin::RemovedUnrecorded { number, .. } => {
            format!("made with key {number}, removed outside fernetd")
        }
        Origin::NotThisRepository { .. } => {
            "made with a key this repository never held (another cluster or node)".to_string()
        }
        Origin::BeforeHistory { .. } => {
            "made with a key this repository does not hold, before its recorded history".to_string()
        }
    }
}

/// Cluster mode: whether the cluster's key set holds the token's key, and which nodes have
/// acknowledged that set (they hold its keys) or an older one.
#[derive(serde::Serialize)]
struct ClusterLook {
    revision: i64,
    /// The number of the key in the cluster's set that decrypts the token.
    key: Option<u64>,
    /// Nodes whose acknowledgement is of this revision (or later).
    nodes_current: Vec<String>,
    /// Nodes behind it, with the revision they applied (0: nothing yet).
    nodes_behind: Vec<NodeAt>,
}

#[derive(serde::Serialize)]
struct NodeAt {
    node: String,
    revision: i64,
}

fn cluster_look(
    sources: &config::Sources,
    config: Option<&Path>,
    kind: config::Kind,
    envelope: &token::Envelope,
) -> Option<Result<ClusterLook, String>> {
    sources.file.cluster.as_ref()?;
    let look = (|| {
        let settings = cluster_settings(sources, config)?;
        let (set, revision, acks) = block_on(async {
            let mut c = crate::cluster::Cluster::connect(&settings).await?;
            let (set, revision) = c.fetch(kind).await?;
            let acks = c.acks(kind).await?;
            Ok::<_, crate::cluster::ClusterError>((set, revision, acks))
        })??;
        let keys = set.keys.iter().map(|(n, k)| (*n, k)).collect();
        let key = envelope.decrypt(&keys).map(|(n, _)| n);
        let (current, behind): (Vec<_>, Vec<_>) =
            acks.into_iter().partition(|a| a.revision >= revision);
        Ok::<_, anyhow::Error>(ClusterLook {
            revision,
            key,
            nodes_current: current.into_iter().map(|a| a.node).collect(),
            nodes_behind: behind
                .into_iter()
                .map(|a| NodeAt {
                    node: a.node,
                    revision: a.revision,
                })
                .collect(),
        })
    })();
    Some(look.map_err(|e| format!("{e:#}")))
}

fn cluster_json(look: &Option<Result<ClusterLook, String>>) -> serde_json::Value {
    match look {
        None => serde_json::Value::Null,
        Some(Ok(l)) => serde_json::to_value(l).unwrap_or_default(),
        Some(Err(e)) => serde_json::json!({ "error": e }),
    }
}

fn describe_cluster(look: &Result<ClusterLook, String>, decrypted_here: bool) -> String {
    let l = match look {
        Ok(l) => l,
        Err(e) => return format!("not reached ({e}): which nodes hold its key is not known"),
    };
    let list: Vec<String> = l
        .nodes_behind
        .iter()
        .map(|n| format!("{} (revision {})", n.node, n.revision))
        .collect();
    let list = list.join(", ");
    let behind = if list.is_empty() {
        String::new()
    } else {
        format!("; behind: {list}")
    };
    match l.key {
        Some(n) => {
            let held = if l.nodes_current.is_empty() {
                "no node has acknowledged it yet".to_string()
            } else {
                format!("held by {}", l.nodes_current.join(", "))
            };
            let here = if decrypted_here {
                String::new()
            } else {
                "; this node does not hold the cluster's keys (the daemon applies them, or \
                 fernetd sync)"
                    .to_string()
            };
            format!(
                "the cluster's key set (revision {}) holds its key as key {n}: {held}{behind}{here}",
                l.revision
            )
        }
        None => {
            let either = if decrypted_here { "" } else { " either" };
            let may = if list.is_empty() {
                String::new()
            } else {
                format!("; nodes behind it may still hold the key: {list}")
            };
            format!(
                "the cluster's key set (revision {}) does not hold its key{either}{may}",
                l.revision
            )
        }
    }
}
