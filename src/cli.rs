//! The command line: definitions (the contract scripts rely on) and one function per command.
//!
//! Exit codes: 0 success; `check` 1 = warnings only, 2 = invalid; `plan` 3 = the configured
//! max_active_keys is unsafe; `token` 1 = accepted only with allow_expired, 3 = past its
//! window, 4 = not decryptable here; `setup` and `rotate` 3 = done, but a key is lost inside
//! its retention, `rotate` 4 = rotated but not recorded; 2 for any error (one line on stderr
//! naming what is at fault).

use crate::check;
use crate::clock::Now;
use crate::config::{self, DaemonSettings, Flags, Settings};
use crate::duration;
use crate::planner;
use crate::repository::{Owner, Repository, RotateParams};
use crate::schedule::Schedule;
use crate::status;
use chrono::{DateTime, SecondsFormat, Utc};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

mod token;

/// Keeps OpenStack Keystone Fernet key repositories safe.
#[derive(Debug, Parser)]
#[command(name = "fernetd", version, about, propagate_version = true)]
pub struct Cli {
    /// fernetd's TOML config (sections mirror the flags; unknown fields are rejected).
    /// Default: /etc/fernetd/fernetd.toml when it exists.
    #[arg(long, global = true, value_name = "FILE", env = "FERNETD_CONFIG")]
    pub config: Option<PathBuf>,

    /// Log format: `text` (plain lines without timestamps under journald, coloured on a
    /// terminal) or `json` (one object per line, for log shippers).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run as a service: rotate every configured repository on its proven-safe schedule,
    /// watch the files, run hooks, talk to systemd (Type=notify). Without a config file it
    /// manages one token repository: daily, Keystone's lifetimes, max_active_keys derived.
    Daemon(DaemonArgs),
    /// Per repository: keys, primary and its age, last and next rotation, health, retention.
    /// Exit 0 OK, 1 warning, 2 critical.
    Status(StatusArgs),
    /// Create and initialize a key repository (like `keystone-manage fernet_setup`). On an
    /// initialized repository it changes no key, completes an interrupted rotation, exits 0.
    ///
    /// With repair = true it first restores lost keys from fernetd's copies. Exit 3 when a
    /// key is lost inside its retention (deleted or replaced outside fernetd while its tokens
    /// live): the error line names it and until when.
    Setup(SetupArgs),
    /// Rotate once: promote key 0, stage a new key 0, purge old keys that can no longer
    /// decrypt a live token.
    ///
    /// With repair = true it first restores lost keys from fernetd's copies. Exit 3 when it
    /// rotated but a key is lost inside its retention (deleted or replaced outside fernetd
    /// while its tokens live): the error line names it and until when, every run until then.
    Rotate(RotateArgs),
    /// Report every problem of a repository, by file. Exit 0 healthy, 1 warnings, 2 invalid.
    Check(CheckArgs),
    /// Prove a schedule safe: the max_active_keys it needs, the shortest retention window,
    /// the next rotations. Exit 3 when the configured max_active_keys is unsafe.
    Plan(PlanArgs),
    /// Validate the configuration exactly as the daemon would load it (fernetd.toml, the
    /// keystone.conf it reads, the schedules' safety, the key owner), starting nothing. Exit 0
    /// valid, 2 invalid with the one-line error. The units' ExecReload runs it first, so a
    /// reload with a broken file fails instead of being ignored.
    CheckConfig(CheckConfigArgs),
    /// What a Fernet token (or receipt) is, and why it does or does not validate here.
    ///
    /// The key that made it (number, fingerprint, role now, or what became of it), Keystone's
    /// payload and the verdict; in cluster mode, which nodes hold that key. Reads the token
    /// from stdin when TOKEN is `-` or absent (keeping it out of shell history). Exit 0 valid,
    /// 1 accepted only with allow_expired, 3 past its window, 4 no key here decrypts it, 2 an
    /// error (not a token, say).
    Token(TokenArgs),
    /// Cluster mode: the key sets in etcd ([cluster] in the config).
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Pull each configured repository's key set from the cluster once and apply it locally:
    /// new keys are written before anything is removed.
    Sync(SyncArgs),
    /// Write man pages and shell completions (for packaging).
    #[command(hide = true)]
    Generate(GenerateArgs),
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Start a cluster's key set: import an existing repository (keystone-made or not) without
    /// changing a key, or, without --from, fresh keys. Refused when the prefix already holds a
    /// key set, unless --force.
    Init(ClusterInitArgs),
    /// Make a new seal key (32 random bytes, url-safe base64) for [cluster] seal_key_file:
    /// into --out FILE (created mode 0600, never replaced; run as root, owned by the Keystone
    /// user), else printed.
    NewSealKey(NewSealKeyArgs),
    /// Seal the cluster's key sets that are still stored in the clear (the step between
    /// adding seal_key_file with insecure_unsealed = true on every node and removing
    /// insecure_unsealed): the same sets, written again sealed; no key changes.
    Seal(SealArgs),
    /// Remove a node from the cluster for good: the promotion gate stops waiting for it. A node
    /// that is only unreachable still serves tokens, so rotations wait for it until this.
    RemoveNode(RemoveNodeArgs),
}

#[derive(Debug, Args)]
pub struct NewSealKeyArgs {
    /// Write the key to this file (mode 0600; an existing file is never replaced) instead of
    /// printing it.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct SealArgs {
    /// Only this repository's key set (default: every configured repository).
    #[arg(long, value_enum)]
    pub kind: Option<KindArg>,
}

#[derive(Debug, Args)]
pub struct RemoveNodeArgs {
    /// The node's name ([cluster] node on it; default there: its hostname).
    #[arg(value_name = "NODE")]
    pub node: String,
    /// Only from this repository's members (default: every configured repository).
    #[arg(long, value_enum)]
    pub kind: Option<KindArg>,
}

#[derive(Debug, Args)]
pub struct ClusterInitArgs {
    /// The repository to import (default: none; a new cluster starts from fresh keys, which
    /// every node's daemon then applies).
    #[arg(long, value_name = "DIR")]
    pub from: Option<PathBuf>,
    /// Which repository it is.
    #[arg(long, value_enum, default_value_t = KindArg::Tokens)]
    pub kind: KindArg,
    /// Replace a key set already in the cluster (as its next generation, so nodes take it).
    #[arg(long)]
    pub force: bool,
    /// With --force: nodes take the new set even where it removes keys that may still
    /// decrypt live tokens (without it they keep those keys, or refuse the set).
    #[arg(long, requires = "force")]
    pub force_purge: bool,
    /// Every node's name (`[cluster] node`), comma-separated: no rotation promotes a key
    /// until each of them has applied the set, whenever its daemon starts.
    #[arg(long, value_name = "NODE,...", value_delimiter = ',')]
    pub members: Vec<String>,
    /// Make the seal key at [cluster] seal_key_file first (mode 0600, owned by the Keystone
    /// user when run as root; an existing file is never replaced), then seal the new key set
    /// with it. Copy the file to every node before their daemons start.
    #[arg(long)]
    pub new_seal_key: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KindArg {
    Tokens,
    Receipts,
    Credentials,
}

impl From<KindArg> for config::Kind {
    fn from(k: KindArg) -> config::Kind {
        match k {
            KindArg::Tokens => config::Kind::Tokens,
            KindArg::Receipts => config::Kind::Receipts,
            KindArg::Credentials => config::Kind::Credentials,
        }
    }
}

#[derive(Debug, Args)]
pub struct CheckConfigArgs {
    /// Once the configuration is valid, tell the daemon with this pid to load it (SIGHUP):
    /// the units' `ExecReload=` passes `$MAINPID`, so a reload needs no `kill` binary.
    #[arg(long, value_name = "PID")]
    pub reload: Option<i32>,
}

#[derive(Debug, Args)]
pub struct SyncArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    #[command(flatten)]
    pub owner: OwnerArgs,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Directory to write `man/` and `completions/` into.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct DaemonArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    #[command(flatten)]
    pub owner: OwnerArgs,
    #[command(flatten)]
    pub lifetime: LifetimeArgs,
    /// Token rotation schedule (see `plan --help`). Default: @daily.
    #[arg(long, value_name = "SPEC")]
    pub schedule: Option<String>,
    /// Token max_active_keys (default: the smallest the planner proves safe).
    #[arg(long, value_name = "N", value_parser = max_active_keys)]
    pub max_active_keys: Option<u64>,
    /// Serve Prometheus metrics on this address (127.0.0.1:9747; a bare port binds loopback).
    #[arg(long, value_name = "ADDR", value_parser = config::parse_listen)]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    /// Print JSON instead of lines.
    #[arg(long)]
    pub json: bool,
    /// Draw each key's life instead (recorded phases, the guard's holds, planned purges, now):
    /// `--chart` or `--chart=text` for a terminal, `--chart=svg` for an SVG on stdout.
    #[arg(
        long,
        value_enum,
        value_name = "FORMAT",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "text",
        conflicts_with = "json"
    )]
    pub chart: Option<ChartFormat>,
}

/// How `--chart` draws.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ChartFormat {
    /// Plain text, one row per key (the default).
    Text,
    /// An SVG document.
    Svg,
}

#[derive(Debug, Args, Clone, Default)]
pub struct RepoArgs {
    /// The key repository (default: keystone.conf's [fernet_tokens] key_repository, else
    /// /etc/keystone/fernet-keys/).
    #[arg(long, value_name = "DIR")]
    pub key_repository: Option<PathBuf>,
    /// keystone.conf to read [token] and [fernet_tokens] from (default:
    /// /etc/keystone/keystone.conf when it exists).
    #[arg(long, value_name = "FILE")]
    pub keystone_config: Option<PathBuf>,
}

#[derive(Debug, Args, Clone, Default)]
pub struct OwnerArgs {
    /// Owner of the key files, a name or a numeric uid (with --keystone-group).
    #[arg(long, value_name = "USER")]
    pub keystone_user: Option<String>,
    /// Group of the key files, a name or a numeric gid (with --keystone-user).
    #[arg(long, value_name = "GROUP")]
    pub keystone_group: Option<String>,
}

#[derive(Debug, Args)]
pub struct SetupArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    #[command(flatten)]
    pub owner: OwnerArgs,
    /// [fernet_tokens] max_active_keys (validated; setup itself purges nothing).
    #[arg(long, value_name = "N", value_parser = max_active_keys)]
    pub max_active_keys: Option<u64>,
    /// How long to wait for another fernetd holding the repository lock.
    #[arg(long, value_name = "DURATION", value_parser = duration::parse, allow_hyphen_values = true)]
    pub lock_timeout: Option<Duration>,
}

#[derive(Debug, Args)]
pub struct RotateArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    #[command(flatten)]
    pub owner: OwnerArgs,
    #[command(flatten)]
    pub lifetime: LifetimeArgs,
    /// [fernet_tokens] max_active_keys (default: the smallest the planner proves safe for the
    /// configured schedule, the value the daemon and `status` use).
    #[arg(long, value_name = "N", value_parser = max_active_keys)]
    pub max_active_keys: Option<u64>,
    /// Purge by count only, as keystone-manage does, even keys that may still decrypt tokens.
    #[arg(long)]
    pub force_purge: bool,
    /// Rotate even while a daemon runs for the repository: an extra rotation an operator asks
    /// for (the daemon keeps its own schedule). Without it, a
    /// repository a running daemon manages is left to that daemon (exit 0, said on stdout),
    /// so the timer and the daemon never both rotate one slot.
    #[arg(long)]
    pub manual: bool,
    /// How long to wait for another fernetd holding the repository lock.
    #[arg(long, value_name = "DURATION", value_parser = duration::parse, allow_hyphen_values = true)]
    pub lock_timeout: Option<Duration>,
    /// Which repository to rotate (`all`: every configured one); flags apply to it. Credentials
    /// rotate only after their `pre_rotate` succeeded. Default: tokens.
    #[arg(long, value_enum)]
    pub kind: Option<KindsArg>,
}

/// A repository kind, or every configured one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KindsArg {
    Tokens,
    Receipts,
    Credentials,
    All,
}

#[derive(Debug, Args, Clone, Default)]
pub struct LifetimeArgs {
    /// [token] expiration (seconds, or 90s/30m/6h/2d/1w).
    #[arg(long, value_name = "DURATION", value_parser = duration::parse, allow_hyphen_values = true)]
    pub expiration: Option<Duration>,
    /// [token] allow_expired_window.
    #[arg(long, value_name = "DURATION", value_parser = duration::parse, allow_hyphen_values = true)]
    pub allow_expired_window: Option<Duration>,
    /// Extra retention for distribution delay, clock skew and late rotations (default 1h).
    #[arg(long, value_name = "DURATION", value_parser = duration::parse, allow_hyphen_values = true)]
    pub margin: Option<Duration>,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    #[command(flatten)]
    pub owner: OwnerArgs,
    /// Print a JSON report instead of lines.
    #[arg(long)]
    pub json: bool,
}

/// `Debug` leaves the token out: it is a bearer credential.
#[derive(Args)]
pub struct TokenArgs {
    /// The token (or receipt); `-` or nothing: read it from stdin.
    #[arg(value_name = "TOKEN")]
    pub token: Option<String>,
    #[command(flatten)]
    pub repo: RepoArgs,
    /// [token] allow_expired_window (default: the configuration's, as for `plan`).
    #[arg(long, value_name = "DURATION", value_parser = duration::parse, allow_hyphen_values = true)]
    pub allow_expired_window: Option<Duration>,
    /// A token (the tokens repository) or an MFA receipt (the receipts repository, which needs
    /// a [receipts] section). Default: tokens.
    #[arg(long, value_enum, default_value_t = TokenKindArg::Tokens)]
    pub kind: TokenKindArg,
    /// Print JSON instead of lines.
    #[arg(long)]
    pub json: bool,
}

impl std::fmt::Debug for TokenArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenArgs")
            .field("token", &self.token.as_ref().map(|_| "(given)"))
            .field("repo", &self.repo)
            .field("allow_expired_window", &self.allow_expired_window)
            .field("kind", &self.kind)
            .field("json", &self.json)
            .finish()
    }
}

/// What `fernetd token` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TokenKindArg {
    Tokens,
    Receipts,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub repo: RepoArgs,
    #[command(flatten)]
    pub lifetime: LifetimeArgs,
    /// Rotation schedule: crontab (`0 3 * * *`), 6 fields with seconds, @daily/@hourly/...,
    /// or an interval (`6h`, `2d`). Evaluated in UTC. Default: @daily.
    #[arg(long, value_name = "SPEC")]
    pub schedule: Option<String>,
    /// The max_active_keys to judge (default: from the config or keystone.conf, if set).
    #[arg(long, value_name = "N", value_parser = max_active_keys)]
    pub max_active_keys: Option<u64>,
    /// Which repository to plan (its section's lifetime; flags apply to it). Default: tokens.
    #[arg(long, value_enum)]
    pub kind: Option<KindArg>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Draw the planned rotations instead: each key's phases against the window of its tokens,
    /// and what a manual rotation now would do. `--chart` or `--chart=text` for a terminal,
    /// `--chart=svg` for an SVG on stdout.
    #[arg(
        long,
        value_enum,
        value_name = "FORMAT",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "text",
        conflicts_with = "json"
    )]
    pub chart: Option<ChartFormat>,
}

/// Exit code for an error.
pub const EXIT_ERROR: i32 = 2;
/// Exit code of `plan` for an unsafe max_active_keys.
pub const EXIT_UNSAFE: i32 = 3;
/// Exit code of `rotate` when the keys rotated but the history could not be saved.
pub const EXIT_ROTATED_UNSAVED: i32 = 4;
/// Exit code of `setup` and `rotate` when they did their work but a key is lost inside its
/// retention window (found now, or recorded earlier and still open): tokens made with it
/// fail until the time the `error:` line says. A timer's unit fails on it.
pub const EXIT_KEY_LOST: i32 = 3;

/// Exit code of `token`: expired, accepted only where a service asks for allow_expired.
pub const EXIT_TOKEN_ALLOW_EXPIRED: i32 = 1;
/// Exit code of `token`: expired and past its allow_expired_window (receipts: expired).
pub const EXIT_TOKEN_PAST_WINDOW: i32 = 3;
/// Exit code of `token`: no key of this repository decrypts it.
pub const EXIT_TOKEN_NOT_DECRYPTABLE: i32 = 4;

/// Runs a parsed command; returns the exit code.
pub fn run(cli: Cli, clock: Now) -> anyhow::Result<i32> {
    let config = cli.config.as_deref();
    let now = clock.wall;
    match cli.command {
        Command::Generate(a) => {
            generate(&a.out)?;
            Ok(0)
        }
        Command::Cluster(ClusterCommand::NewSealKey(a)) => {
            match &a.out {
                Some(out) => {
                    // The configuration only names the Keystone user here, and may be the
                    // one waiting for this key (refused without it).
                    let keystone = config::Sources::load(&Flags::default(), config)
                        .map(|s| s.file.keystone)
                        .unwrap_or_default();
                    make_seal_key(out, &keystone)?;
                }
                None => {
                    let k =
                        crate::key::Key::generate().map_err(|e| anyhow::anyhow!("random: {e}"))?;
                    println!("{}", &*k.to_text());
                }
            }
            Ok(0)
        }
        Command::Cluster(ClusterCommand::Seal(a)) => {
            let sources = config::Sources::load(&Flags::default(), config)?;
            let cluster = cluster_settings(&sources, config)?;
            if cluster.seal_key_file.is_none() {
                anyhow::bail!(
                    "{}: [cluster] has no seal_key_file: nothing to seal with (make one with \
                     `fernetd cluster new-seal-key --out {}` and copy it to every node first)",
                    config_name(config),
                    config::DEFAULT_SEAL_KEY_FILE
                );
            }
            if !cluster.insecure_unsealed {
                anyhow::bail!(
                    "{}: [cluster] insecure_unsealed is not set, so this node refuses the key sets \
                     stored in the clear that `cluster seal` would seal; run it where \
                     insecure_unsealed = true (see the README: moving a cluster to sealed key \
                     sets)",
                    config_name(config)
                );
            }
            let kinds = configured_kinds(&sources, a.kind);
            let sealed = block_on(async {
                let mut c = crate::cluster::Cluster::connect(&cluster).await?;
                let mut out = Vec::new();
                for kind in kinds {
                    out.push((kind, c.seal_in_place(kind).await?));
                }
                Ok::<_, crate::cluster::ClusterError>(out)
            })??;
            let mut compact_to = None;
            for (kind, revision) in sealed {
                match revision {
                    Some(r) => {
                        println!(
                            "{}/{kind}/keyset: sealed at revision {r}; no key changed",
                            cluster.prefix
                        );
                        compact_to = compact_to.max(Some(r));
                    }
                    None => println!("{}/{kind}/keyset: already sealed", cluster.prefix),
                }
            }
            if let Some(r) = compact_to {
                say(
                    Severity::Warning,
                    &format!(
                        "warning: the values stored in the clear stay in etcd's history (below \
                         revision {r}) and in every etcd backup taken before: remove them from \
                         etcd with `etcdctl compact {r}` and `etcdctl defrag --cluster` (as \
                         etcd's root), destroy such backups, and count the keys they held as \
                         known until rotations have purged them"
                    ),
                );
            }
            Ok(0)
        }
        Command::Cluster(ClusterCommand::RemoveNode(a)) => {
            let sources = config::Sources::load(&Flags::default(), config)?;
            let cluster = cluster_settings(&sources, config)?;
            let kinds = configured_kinds(&sources, a.kind);
            let removed = block_on(async {
                let mut c = crate::cluster::Cluster::connect(&cluster).await?;
                let mut out = Vec::new();
                for kind in kinds {
                    out.push((kind, c.remove_member(kind, &a.node).await?));
                }
                Ok::<_, crate::cluster::ClusterError>(out)
            })??;
            if removed.iter().all(|(_, r)| r.is_none()) {
                anyhow::bail!(
                    "{}: no member named '{}' (fernetd status lists the members)",
                    cluster.prefix,
                    a.node
                );
            }
            for (kind, r) in removed {
                if let Some(ack) = r {
                    println!(
                        "{kind}: removed node {} (it had applied revision {}); promotions no longer wait for it",
                        ack.node, ack.revision
                    );
                }
            }
            Ok(0)
        }
        Command::Cluster(ClusterCommand::Init(a)) => {
            let sources = config::Sources::load(&Flags::default(), config)?;
            let cluster = cluster_settings(&sources, config)?;
            let kind = config::Kind::from(a.kind);
            // A seal key this command made, removed again if the cluster does not start with
            // it (no node may be left holding a key the cluster's sets are not sealed with).
            let mut made_seal_key = None;
            match (&cluster.seal_key_file, a.new_seal_key) {
                (None, true) => anyhow::bail!(
                    "{}: --new-seal-key: set [cluster] seal_key_file (e.g. \"{}\") first",
                    config_name(config),
                    config::DEFAULT_SEAL_KEY_FILE
                ),
                (Some(p), true) => {
                    make_seal_key(p, &sources.file.keystone)?;
                    made_seal_key = Some(p.clone());
                }
                (Some(p), false) if !p.exists() => anyhow::bail!(
                    "{}: [cluster] seal_key_file {} does not exist: `fernetd cluster init \
                     --new-seal-key` makes it, or copy it here from a node of the cluster",
                    config_name(config),
                    p.display()
                ),
                _ => {}
            }
            let s = sources.selected(kind, &Flags::default())?;
            let owner = match &s {
                Some(s) => Owner::resolve(s.keystone_user.as_deref(), s.keystone_group.as_deref())?,
                None => None,
            };
            let (set, what) = match &a.from {
                Some(from) => (
                    Repository::new(from, owner).read_set(&clock)?,
                    format!("imported {}", from.display()),
                ),
                None => (
                    crate::keyset::KeySet::fresh(&clock)
                        .map_err(|e| anyhow::anyhow!("random: {e}"))?,
                    "fresh keys".to_string(),
                ),
            };
            if let Some(bad) = a.members.iter().find(|m| m.is_empty() || m.contains('/')) {
                anyhow::bail!(
                    "--members: '{bad}' is not a node name ([cluster] node on that node)"
                );
            }
            let imported = block_on(async {
                let mut c = crate::cluster::Cluster::connect(&cluster).await?;
                let (revision, lineage) = c.import(kind, &set, a.force, a.force_purge).await?;
                let added = c.expect_members(kind, &a.members, now).await?;
                Ok::<_, crate::cluster::ClusterError>((revision, lineage, added))
            })
            .and_then(|r| r.map_err(anyhow::Error::from));
            let (revision, lineage, added) = match imported {
                Ok(done) => done,
                Err(e) => {
                    if let Some(p) = &made_seal_key {
                        let _ = std::fs::remove_file(p);
                        say(
                            Severity::Warning,
                            &format!(
                                "warning: removed the seal key made at {}: the cluster did not \
                                 start with it",
                                p.display()
                            ),
                        );
                    }
                    return Err(e);
                }
            };
            println!(
                "{what} into {}/{kind}/keyset at revision {revision}, {lineage}; no key changed",
                cluster.prefix
            );
            if !a.members.is_empty() {
                println!(
                    "members: {} (added {}): no promotion until each has applied this set; \
                     `fernetd cluster remove-node NAME` releases one that will not come",
                    a.members.join(", "),
                    if added.is_empty() {
                        "none".into()
                    } else {
                        added.join(", ")
                    }
                );
            }
            let managed = s.map(|s| config::manage(s, now)).transpose()?;
            print_import(kind, &set, managed.as_ref(), &clock);
            Ok(0)
        }
        Command::Token(a) => token::run(a, config, &clock),
        Command::CheckConfig(a) => {
            let d = DaemonSettings::resolve(&Flags::default(), config, now)?;
            let shown = config.map_or_else(
                || {
                    let default = std::path::Path::new(config::DEFAULT_CONFIG);
                    match default.exists() {
                        true => config::DEFAULT_CONFIG.to_string(),
                        false => "no configuration file (the embedded defaults)".to_string(),
                    }
                },
                |p| p.display().to_string(),
            );
            let parts: Vec<String> = d
                .repositories
                .iter()
                .map(|m| {
                    format!(
                        "{} {} '{}' max_active_keys {}",
                        m.settings.kind,
                        m.settings.key_repository.display(),
                        m.schedule,
                        m.max_active_keys
                    )
                })
                .collect();
            let cluster = d.cluster.as_ref().map_or(String::new(), |c| {
                format!("; cluster node {} under {}", c.node, c.prefix)
            });
            println!("{shown}: valid: {}{cluster}", parts.join("; "));
            for p in d.cluster.iter().flat_map(crate::exposure::exposures) {
                say(
                    Severity::Warning,
                    &format!("warning: [{}] {}", p.code, p.message),
                );
            }
            if let Some(pid) = a.reload {
                use nix::sys::signal::{kill, Signal};
                kill(nix::unistd::Pid::from_raw(pid), Signal::SIGHUP).map_err(|e| {
                    anyhow::anyhow!("--reload {pid}: cannot signal the daemon: {e}")
                })?;
                println!("asked the daemon (pid {pid}) to reload");
            }
            Ok(0)
        }
        Command::Sync(a) => {
            let flags = flags(&a.repo, &a.owner);
            let sources = config::Sources::load(&flags, config)?;
            let cluster = cluster_settings(&sources, config)?;
            let repos: Vec<Settings> = config::Kind::ALL
                .into_iter()
                .map(|k| sources.repository(k, &flags))
                .collect::<Result<Vec<_>, _>>()?
                .into_iter()
                .flatten()
                .collect();
            block_on(async {
                let mut c = crate::cluster::Cluster::connect(&cluster).await?;
                for s in &repos {
                    let (set, revision) = c.fetch(s.kind).await?;
                    let source = format!("{} at revision {revision}", c.keyset_key(s.kind));
                    let out =
                        repository(s)?.apply(&set, &source, s.lifetime.decryptable(), &clock)?;
                    println!("{}: cluster revision {revision}", s.kind);
                    print_outcome(&out);
                }
                Ok::<_, anyhow::Error>(())
            })??;
            Ok(0)
        }
        Command::Daemon(a) => {
            let flags = Flags {
                schedule: a.schedule.clone(),
                max_active_keys: a.max_active_keys,
                metrics_listen: a.metrics_listen,
                ..with_lifetime(flags(&a.repo, &a.owner), &a.lifetime)
            };
            let config = cli.config.clone();
            let settings = DaemonSettings::resolve(&flags, config.as_deref(), now)?;
            block_on(crate::daemon::run(settings, move || {
                DaemonSettings::resolve(&flags, config.as_deref(), chrono::Utc::now())
            }))??;
            Ok(0)
        }
        Command::Status(a) => {
            let flags = Flags {
                key_repository: a.repo.key_repository.clone(),
                keystone_config: a.repo.keystone_config.clone(),
                ..Flags::default()
            };
            let d = DaemonSettings::inspect(&flags, config, now)?;
            let mut sums: Vec<_> = d
                .repositories
                .iter()
                .map(|m| {
                    let repo = Repository::new(&m.settings.key_repository, None);
                    let mut sum = status::summarize(m, &repo, &clock);
                    // A running daemon knows what the disk cannot show (a failing rotation,
                    // a refused input, a lost etcd): the same words and levels as its STATUS=.
                    // A daemon is found by its lock, so one in another pid namespace (a
                    // container) counts too; one whose view cannot be read is a problem.
                    match status::Live::read(&repo, now) {
                        status::Seen::Nothing => {}
                        status::Seen::Live { live, visible } => {
                            for p in &live.problems {
                                sum.add(p);
                            }
                            sum.view = match visible {
                                true => format!("disk and daemon (pid {})", live.pid),
                                false => format!(
                                    "disk and daemon (pid {} in its own pid namespace: not \
                                     visible here; found by its lock)",
                                    live.pid
                                ),
                            };
                        }
                        status::Seen::Unseen(p) => {
                            sum.add(&p);
                            sum.view = "disk only: a daemon runs (it holds the repository's \
                                        daemon lock) but its live view cannot be read"
                                .into();
                        }
                    }
                    sum
                })
                .collect();
            let mut views = Vec::new();
            if let Some(cluster) = &d.cluster {
                views = block_on(cluster_views(cluster, &d))??;
                for (s, v) in sums.iter_mut().zip(&views) {
                    s.add_cluster(v);
                }
                let exposed = crate::exposure::exposures(cluster);
                for s in &mut sums {
                    for p in &exposed {
                        s.add(p);
                    }
                }
            }
            let level = sums
                .iter()
                .map(|s| s.level)
                .max()
                .unwrap_or(status::Level::Ok);
            if a.json {
                let cluster: Vec<serde_json::Value> = views
                    .iter()
                    .map(|v| match v {
                        Ok(v) => serde_json::to_value(v).unwrap_or_default(),
                        Err(e) => serde_json::json!({ "error": e.to_string() }),
                    })
                    .collect();
                let v = serde_json::json!({ "status": level, "repositories": sums, "cluster": cluster });
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else if let Some(format) = a.chart {
                let pictures: Vec<crate::chart::Picture> = d
                    .repositories
                    .iter()
                    .zip(&sums)
                    .map(|(m, s)| status_picture(m, s, &clock))
                    .collect();
                print_chart(format, &pictures);
            } else {
                print_status(&sums, now);
                for (s, v) in sums.iter().zip(&views) {
                    if let Ok(v) = v {
                        let nodes: Vec<String> = v
                            .nodes
                            .iter()
                            .map(|n| {
                                let heard = n.last_ack.map_or(String::new(), |t| {
                                    let ago = (now - t).to_std().unwrap_or_default();
                                    format!(", acknowledged {} ago", crate::duration::format(ago))
                                });
                                format!(
                                    "{} (revision {}{}{heard})",
                                    n.node,
                                    n.revision,
                                    if n.holds_staged { "" } else { ", behind" }
                                )
                            })
                            .collect();
                        println!(
                            "  cluster: {} revision {}, primary {}, leader {}, {}; nodes: {}",
                            s.kind,
                            v.revision,
                            v.primary.map_or("none".into(), |p| p.to_string()),
                            v.leader.as_deref().unwrap_or("none"),
                            if v.in_sync {
                                "this node in sync"
                            } else {
                                "this node differs"
                            },
                            if nodes.is_empty() {
                                "none acknowledged".into()
                            } else {
                                nodes.join(", ")
                            }
                        );
                    }
                }
            }
            Ok(level.exit_code())
        }
        Command::Setup(a) => {
            let flags = Flags {
                max_active_keys: a.max_active_keys,
                lock_timeout: a.lock_timeout,
                ..flags(&a.repo, &a.owner)
            };
            let s = Settings::resolve(&flags, config)?;
            let out = repository(&s)?.setup(s.lifetime.retention(), &clock)?;
            print_outcome(&out);
            Ok(if out.lost.is_empty() {
                0
            } else {
                EXIT_KEY_LOST
            })
        }
        Command::Rotate(a) => {
            let flags = Flags {
                max_active_keys: a.max_active_keys,
                lock_timeout: a.lock_timeout,
                ..with_lifetime(flags(&a.repo, &a.owner), &a.lifetime)
            };
            let sources = config::Sources::load(&flags, config)?;
            let kinds: Vec<config::Kind> = match a.kind {
                None | Some(KindsArg::Tokens) => vec![config::Kind::Tokens],
                Some(KindsArg::Receipts) => vec![config::Kind::Receipts],
                Some(KindsArg::Credentials) => vec![config::Kind::Credentials],
                Some(KindsArg::All) => config::Kind::ALL
                    .into_iter()
                    .filter(|k| sources.file.section(*k).is_some())
                    .collect(),
            };
            let named = a.kind.is_some();
            let mut failed = Vec::new();
            let mut lost = false;
            for kind in kinds {
                let s = configured(&sources, kind, &flags, config)?;
                if named {
                    println!("{kind}: {}", s.key_repository.display());
                }
                match rotate_kind(&sources, &s, (a.force_purge, a.manual), config, now, &clock) {
                    Ok(l) => lost |= l,
                    Err(e) => {
                        if a.kind != Some(KindsArg::All) {
                            return Err(e);
                        }
                        say(Severity::Error, &format!("error: {kind}: {e:#}"));
                        failed.push(kind.name());
                    }
                }
            }
            if !failed.is_empty() {
                anyhow::bail!("not rotated: {}", failed.join(", "));
            }
            Ok(if lost { EXIT_KEY_LOST } else { 0 })
        }
        Command::Check(a) => {
            let s = Settings::resolve(&flags(&a.repo, &a.owner), config)?;
            let owner = Owner::resolve(s.keystone_user.as_deref(), s.keystone_group.as_deref())?;
            let repo = Repository::new(&s.key_repository, owner);
            let scan = repo.scan()?;
            let mut report = check::check(&scan, owner);
            let (history, lost) = match repo.history() {
                Ok(h) => {
                    let judged = repo.judging_clock(&clock);
                    let lost = repo.lost_keys(&scan, &h, s.lifetime.retention(), &judged);
                    (Ok(()), lost)
                }
                Err(e) => (Err(e.to_string()), Vec::new()),
            };
            check::judge_history(&mut report, &repo.state_path(), history, &lost);
            if a.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                for f in &report.findings {
                    let sev = match f.severity {
                        check::Severity::Error => "error",
                        check::Severity::Warning => "warning",
                    };
                    println!("{sev}: {}: {} [{}]", f.path, f.message, f.code);
                }
                println!(
                    "{}: {} ({} keys, primary {}, digest {})",
                    report.repository,
                    report.status,
                    report.keys.len(),
                    report.primary.map_or("none".into(), |p| p.to_string()),
                    report.digest
                );
            }
            Ok(report.exit_code())
        }
        Command::Plan(a) => {
            let flags = Flags {
                schedule: a.schedule.clone(),
                max_active_keys: a.max_active_keys,
                ..with_lifetime(
                    Flags {
                        key_repository: a.repo.key_repository.clone(),
                        keystone_config: a.repo.keystone_config.clone(),
                        ..Flags::default()
                    },
                    &a.lifetime,
                )
            };
            let sources = config::Sources::load(&flags, config)?;
            let kind = a.kind.map_or(config::Kind::Tokens, config::Kind::from);
            let s = configured(&sources, kind, &flags, config)?;
            let schedule = match &s.schedule {
                Some(sch) => sch.clone(),
                None => "@daily".parse::<Schedule>().map_err(anyhow::Error::msg)?,
            };
            // An interval schedule runs from the last rotation, when the repository knows it.
            let last = Repository::new(&s.key_repository, None)
                .history()
                .ok()
                .and_then(|h| h.schedule_basis());
            let plan = planner::plan(&schedule, &s.lifetime, s.max_active_keys, now, last)?;
            if a.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&plan_json(&schedule, &s, &plan))?
                );
            } else if let Some(format) = a.chart {
                print_chart(format, &[plan_picture(&schedule, &s, &plan, &clock)]);
            } else {
                print_plan(&schedule, &s, &plan);
                let others: Vec<&str> = config::Kind::ALL
                    .into_iter()
                    .filter(|k| *k != kind && sources.file.section(*k).is_some())
                    .map(config::Kind::name)
                    .collect();
                if !others.is_empty() {
                    println!(
                        "{:<26} also configured: {} (fernetd plan --kind {})",
                        "note",
                        others.join(", "),
                        others[0]
                    );
                }
            }
            Ok(if plan.safe == Some(false) {
                EXIT_UNSAFE
            } else {
                0
            })
        }
    }
}

/// `--max-active-keys`: an integer of at least 2.
fn max_active_keys(s: &str) -> Result<u64, String> {
    let n: u64 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a whole number"))?;
    config::check_max_keys(n)?;
    Ok(n)
}

/// Man pages (`fernetd.1`, one `fernetd-COMMAND.1` per command) and completions for bash, zsh
/// and fish, from the same definitions as `--help`.
fn generate(out: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use clap::CommandFactory;
    let man = out.join("man");
    let completions = out.join("completions");
    for d in [&man, &completions] {
        std::fs::create_dir_all(d).with_context(|| d.display().to_string())?;
    }
    let cmd = Cli::command();
    let write_page = |name: &str, c: clap::Command| -> anyhow::Result<()> {
        let path = man.join(format!("{name}.1"));
        let mut buf = Vec::new();
        clap_mangen::Man::new(c)
            .title(name.to_uppercase())
            .render(&mut buf)?;
        std::fs::write(&path, buf).with_context(|| path.display().to_string())
    };
    write_page("fernetd", cmd.clone())?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("fernetd-{}", sub.get_name());
        write_page(&name, sub.clone().name(name.clone()))?;
    }
    for shell in [
        clap_complete::Shell::Bash,
        clap_complete::Shell::Zsh,
        clap_complete::Shell::Fish,
    ] {
        clap_complete::generate_to(shell, &mut Cli::command(), "fernetd", &completions)
            .with_context(|| completions.display().to_string())?;
    }
    Ok(())
}

/// How errors name the configuration file: the one given, else the default path.
fn config_name(config: Option<&std::path::Path>) -> String {
    config.map_or(config::DEFAULT_CONFIG.into(), |p| p.display().to_string())
}

/// The settings of the repository a one-shot command names with `--kind` (flags apply to it),
/// or the one-line error saying its section is missing.
fn configured(
    sources: &config::Sources,
    kind: config::Kind,
    flags: &Flags,
    config: Option<&std::path::Path>,
) -> anyhow::Result<Settings> {
    sources.selected(kind, flags)?.ok_or_else(|| {
        anyhow::anyhow!(
            "{}: no [{kind}] section; fernetd manages that repository only when it is configured",
            config_name(config)
        )
    })
}

/// The repositories a cluster command acts on: the one `--kind` names, else every configured
/// one.
fn configured_kinds(sources: &config::Sources, kind: Option<KindArg>) -> Vec<config::Kind> {
    match kind {
        Some(k) => vec![k.into()],
        None => config::Kind::ALL
            .into_iter()
            .filter(|k| sources.file.section(*k).is_some())
            .collect(),
    }
}

/// Makes a new seal key at `path` and says where it must go next. Run as root, the file is
/// given to the Keystone user (`[keystone] user`/`group`, else a user named `keystone`), whose
/// daemon reads it.
fn make_seal_key(path: &std::path::Path, k: &config::KeystoneSection) -> anyhow::Result<()> {
    let root = nix::unistd::geteuid().is_root();
    let owner = match (root, k.user.as_deref(), k.group.as_deref()) {
        (false, _, _) => None,
        (true, Some(u), g) => {
            Owner::resolve(Some(u), Some(g.unwrap_or(u)))?.map(|o| (o.uid, o.gid))
        }
        (true, None, _) => nix::unistd::User::from_name("keystone")
            .ok()
            .flatten()
            .map(|u| (u.uid.as_raw(), u.gid.as_raw())),
    };
    crate::seal::SealKey::create(path, owner)?;
    let (uid, gid) = owner.unwrap_or_else(|| {
        (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        )
    });
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map_or(uid.to_string(), |u| u.name);
    let group = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
        .ok()
        .flatten()
        .map_or(gid.to_string(), |g| g.name);
    println!(
        "made a new seal key at {} (owner {user}, mode 0600): copy it to every node, same \
         path, owner and mode (e.g. `install -m 600 -o {user} -g {group}`), before their \
         daemons start; keep a copy offline: key sets sealed with it open with nothing else",
        path.display()
    );
    Ok(())
}

/// `[cluster]` from the configuration, or an error naming the file.
fn cluster_settings(
    sources: &config::Sources,
    config: Option<&std::path::Path>,
) -> anyhow::Result<config::ClusterSettings> {
    let c = sources.file.cluster.as_ref().ok_or_else(|| {
        anyhow::anyhow!(
            "{}: no [cluster] section (endpoints = [\"http://127.0.0.1:2379\"])",
            config_name(config)
        )
    })?;
    let s = c.settings(&sources.file.keystone);
    if s.seal_key_file.is_none() {
        say(
            Severity::Warning,
            "warning: [cluster] insecure_unsealed: key sets sit in etcd in the clear",
        );
    }
    Ok(s)
}

/// For each managed repository: the cluster's view of it, or why there is none. A seal key
/// fernetd refuses is a configuration error here as everywhere, not a view missing.
async fn cluster_views(
    cluster: &config::ClusterSettings,
    d: &DaemonSettings,
) -> Result<Vec<Result<status::ClusterView, status::ViewError>>, crate::cluster::ClusterError> {
    use crate::cluster::ClusterError;
    use status::ViewError;
    let unreachable = |e: ClusterError| match e {
        ClusterError::Seal { .. } | ClusterError::KeySet { .. } => {
            ViewError::Refused(e.to_string())
        }
        _ => ViewError::Unreachable(e.to_string()),
    };
    let mut c = match crate::cluster::Cluster::connect(cluster).await {
        Ok(c) => c,
        Err(e @ (ClusterError::SealKey(_) | ClusterError::Unsealed)) => return Err(e),
        Err(e) => {
            let e = unreachable(e);
            return Ok(d.repositories.iter().map(|_| Err(e.clone())).collect());
        }
    };
    let mut out = Vec::new();
    for m in &d.repositories {
        let kind = m.settings.kind;
        let view = async {
            let (set, revision) = c.fetch(kind).await.map_err(unreachable)?;
            let acks = c.acks(kind).await.map_err(unreachable)?;
            let leader = c.leader(kind).await.map_err(unreachable)?;
            let repo = Repository::new(&m.settings.key_repository, None);
            let local = repo
                .scan()
                .map_err(|e| ViewError::Unreachable(e.to_string()))?
                .fingerprints();
            let history = repo.history().unwrap_or_default();
            let clock = Now::read();
            let mut view = status::cluster_view(
                &local,
                &history,
                &set,
                revision,
                &acks,
                leader,
                m.settings.lifetime.decryptable(),
                &repo.judging_clock(&clock),
            );
            let due = m
                .schedule
                .next_rotation(set.history.schedule_basis(), &clock);
            view.judge_gate(
                due,
                cluster.gate_deadline,
                cluster.member_timeout,
                clock.wall,
            );
            let margin = m.settings.lifetime.margin;
            view.judge_clocks(&acks, set.history.last_rotation, margin, clock.wall);
            Ok(view)
        }
        .await;
        out.push(view);
    }
    Ok(out)
}

/// Runs `f` on a runtime of its own. While it runs, SIGPIPE is ignored: one-shot commands
/// restore its default action (see main.rs), and a write to a connection etcd has closed (a
/// refused TLS handshake, say) would otherwise kill the process without a word instead of
/// failing with an error.
fn block_on<F: std::future::Future>(f: F) -> anyhow::Result<F::Output> {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: SIG_IGN and the previous disposition (SIG_DFL or SIG_IGN) install no handler code.
    let before = unsafe { signal(Signal::SIGPIPE, SigHandler::SigIgn) };
    let out = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map(|rt| rt.block_on(f));
    // The runtime and its connections are gone: stdout may have the default action back.
    if let Ok(h) = before {
        // SAFETY: as above.
        let _ = unsafe { signal(Signal::SIGPIPE, h) };
    }
    Ok(out?)
}

fn flags(repo: &RepoArgs, owner: &OwnerArgs) -> Flags {
    Flags {
        key_repository: repo.key_repository.clone(),
        keystone_config: repo.keystone_config.clone(),
        keystone_user: owner.keystone_user.clone(),
        keystone_group: owner.keystone_group.clone(),
        ..Flags::default()
    }
}

fn with_lifetime(f: Flags, l: &LifetimeArgs) -> Flags {
    Flags {
        expiration: l.expiration,
        allow_expired_window: l.allow_expired_window,
        margin: l.margin,
        ..f
    }
}

fn repository(s: &Settings) -> anyhow::Result<Repository> {
    let owner = Owner::resolve(s.keystone_user.as_deref(), s.keystone_group.as_deref())?;
    let mut r = Repository::new(&s.key_repository, owner).with_repair(s.repair);
    if let Some(t) = s.lock_timeout {
        r = r.with_lock_timeout(t);
    }
    Ok(r)
}

/// `fernetd rotate` for one repository: its `pre_rotate` first (credentials), then the
/// cluster's key set in cluster mode, else the local repository. True when a key of the
/// repository is lost inside its retention window (said on stderr).
fn rotate_kind(
    sources: &config::Sources,
    s: &Settings,
    (force_purge, manual): (bool, bool),
    config: Option<&std::path::Path>,
    now: DateTime<Utc>,
    clock: &Now,
) -> anyhow::Result<bool> {
    let kind = s.kind;
    // One rotation per slot: a daemon running for the repository rotates it on its schedule,
    // and a timer's `rotate` next to it leaves it alone. Looked at first when a pre_rotate
    // hook would run for nothing; the rotation itself looks again under the write lock.
    let defer = sources.file.cluster.is_none() && !manual;
    let deferred = |repo: &Repository| {
        let pid = repo
            .daemon_pid()
            .map_or_else(String::new, |p| format!(" (pid {p})"));
        println!(
            "{kind}: not rotated: a fernetd daemon{pid} runs for {} and rotates it on its \
             schedule (`fernetd rotate --manual` for an extra rotation now)",
            s.key_repository.display()
        );
    };
    // One N everywhere: unset, it is the planner's, as for the daemon and `status`.
    let m = config::manage(s.clone(), now)?;
    let params = RotateParams {
        max_active_keys: m.max_active_keys,
        retention: s.lifetime.retention(),
        force_purge,
    };
    if defer && s.hooks.pre_rotate.is_some() {
        let repo = Repository::new(&s.key_repository, None);
        if repo.daemon_running().unwrap_or(false) {
            // The running daemon says any lost key (its status, STATUS=, metrics).
            deferred(&repo);
            return Ok(false);
        }
    }
    if let Some(argv) = &s.hooks.pre_rotate {
        let repo = Repository::new(&s.key_repository, None);
        let keys: Vec<u64> = repo
            .scan()
            .map(|sc| sc.keys().into_keys().collect())
            .unwrap_or_default();
        let ctx = crate::hooks::Context::of(kind.name(), &s.key_repository, &keys);
        let metrics = crate::metrics::Metrics::new();
        let event = crate::hooks::Event::PreRotate;
        if !block_on(crate::hooks::run(
            argv,
            event,
            &ctx,
            s.hooks.timeout,
            &metrics,
        ))? {
            anyhow::bail!(
                "{kind}: pre_rotate `{}` did not succeed (the line above says why); nothing rotated",
                argv.join(" ")
            );
        }
    }
    if sources.file.cluster.is_none() {
        let repo = repository(s)?.deferring_to_daemon(defer);
        let out = repo.rotate(params, clock)?;
        if out.deferred {
            for w in &out.warnings {
                say(Severity::Warning, &format!("warning: {w}"));
            }
            for n in &out.notes {
                println!("{n}");
            }
            deferred(&repo);
        } else {
            print_outcome(&out);
        }
        return Ok(!out.lost.is_empty());
    }
    // Cluster mode: rotate the cluster's key set; every node applies it.
    let cluster = cluster_settings(sources, config)?;
    // Never rotate on a set older than the one this node applied.
    let repo = Repository::new(&s.key_repository, None);
    let local = repo.history().unwrap_or_default();
    let clock = repo.judging_clock(clock);
    let margin = s.lifetime.margin;
    let request = crate::cluster::Rotation {
        params: &params,
        now: &clock,
        held: Some(&local),
        skew_tolerance: margin,
        fence: None,
        schedule: None,
        member_timeout: cluster.member_timeout,
    };
    let r = block_on(async {
        let mut c = crate::cluster::Cluster::connect(&cluster).await?;
        c.rotate(kind, &request).await
    })??;
    if !r.skewed.is_empty() {
        say(
            Severity::Warning,
            &format!(
                "warning: purged nothing: clocks off by more than the margin ({}): {}",
                crate::duration::format(margin),
                crate::cluster::describe_skew(&r.skewed)
            ),
        );
    }
    println!(
        "rotated the cluster's {kind} key set at revision {}: key 0 promoted to primary {}, new key 0 staged; nodes apply it (daemon, or fernetd sync)",
        r.revision, r.decision.new_primary
    );
    if !r.decision.purge.is_empty() {
        let p: Vec<String> = r
            .decision
            .purge
            .iter()
            .map(|n| format!("key {n}"))
            .collect();
        println!("purged {}", p.join(", "));
    }
    let keys: Vec<String> = r.set.keys.keys().map(u64::to_string).collect();
    println!(
        "keys: {} (primary {}, staged 0)",
        keys.join(" "),
        r.decision.new_primary
    );
    Ok(false)
}

/// What `cluster init` put into etcd: the keys, the history every node will assume, and the
/// first rotation (by the one scheduling rule, from the set's own history).
fn print_import(
    kind: config::Kind,
    set: &crate::keyset::KeySet,
    m: Option<&config::Managed>,
    clock: &Now,
) {
    let h = &set.history;
    let keys: Vec<String> = set.keys.keys().map(u64::to_string).collect();
    let primary = set.primary();
    println!(
        "keys: {} (primary {}, staged 0)",
        keys.join(" "),
        primary.map_or("none".into(), |p| p.to_string())
    );
    match h.last_rotation {
        Some(t) => println!(
            "history: last rotation {}, {} rotations and {} purges recorded",
            rfc3339(t),
            h.rotations,
            h.purged.len()
        ),
        None => println!(
            "history: no rotation recorded (keys fernetd did not make): each key counts as first seen now, \
             and the primary as in use since now"
        ),
    }
    let Some(m) = m else {
        println!(
            "first rotation: not known here: this configuration has no [{kind}] section (the nodes that have one schedule it)"
        );
        return;
    };
    let retention = m.settings.lifetime.retention();
    let secondaries: Vec<String> = h
        .keys
        .iter()
        .filter(|(n, _)| **n != 0 && Some(**n) != primary)
        .map(|(n, r)| {
            format!(
                "key {n} until {}",
                rfc3339(r.retained_until(retention, clock))
            )
        })
        .collect();
    if !secondaries.is_empty() {
        println!(
            "kept at least: {} (retention {})",
            secondaries.join(", "),
            duration::format(retention)
        );
    }
    match m.schedule.next_rotation(h.schedule_basis(), clock) {
        Some(t) => println!(
            "first rotation: {} (schedule '{}', max_active_keys {}), by the node that leads",
            rfc3339(t),
            m.schedule,
            m.max_active_keys
        ),
        None => println!(
            "first rotation: never (schedule '{}' does not fire again)",
            m.schedule
        ),
    }
}

fn print_outcome(out: &crate::repository::Outcome) {
    for w in &out.warnings {
        say(Severity::Warning, &format!("warning: {w}"));
    }
    for n in &out.notes {
        println!("{n}");
    }
    let keys: Vec<String> = out.keys.iter().map(u64::to_string).collect();
    println!(
        "keys: {} (primary {}, staged 0)",
        keys.join(" "),
        out.primary.map_or("none".into(), |p| p.to_string())
    );
    for v in &out.lost {
        say(
            Severity::Error,
            &format!("error: {v} [key-lost-in-retention]"),
        );
    }
}

fn print_status(sums: &[status::Summary], now: DateTime<Utc>) {
    for s in sums {
        let level = match s.level {
            status::Level::Ok => "OK",
            status::Level::Warning => "WARNING",
            status::Level::Critical => "CRITICAL",
        };
        println!("{} {} {level}", s.kind, s.path.display());
        let keys: Vec<String> = s.keys.iter().map(u64::to_string).collect();
        let age = s
            .primary_since
            .map(|t| {
                format!(
                    ", age {}",
                    duration::format((now - t).to_std().unwrap_or_default())
                )
            })
            .unwrap_or_default();
        println!(
            "  keys {} (primary {}{age}), max_active_keys {}",
            keys.join(" "),
            s.primary.map_or("none".into(), |p| p.to_string()),
            s.max_active_keys
        );
        let t = |t: Option<DateTime<Utc>>| t.map_or("never".into(), rfc3339);
        println!(
            "  last rotation {}, next {} ({})",
            t(s.last_rotation),
            t(s.next_rotation),
            s.schedule
        );
        println!("  judged from: {}", s.view);
        for r in &s.retained {
            println!(
                "  key {} kept beyond max_active_keys until {}",
                r.key,
                rfc3339(r.until)
            );
        }
        for p in &s.problems {
            println!("  {} [{}]", p.message, p.code);
        }
    }
}

/// Prints pictures: each as text, or all as one SVG.
fn print_chart(format: ChartFormat, pictures: &[crate::chart::Picture]) {
    match format {
        ChartFormat::Svg => print!("{}", crate::chart::svg(pictures)),
        ChartFormat::Text => {
            let texts: Vec<String> = pictures
                .iter()
                .map(|p| crate::chart::text(p, crate::chart::TEXT_COLUMNS))
                .collect();
            print!("{}", texts.join("\n"));
        }
    }
}

/// A repository's keys as they are, for a chart: its history matched with the disk (read, never
/// written), or, with no keys there, a `setup` now; and the clock retention is judged by.
fn charted_history(repo: &Repository, clock: &Now) -> (crate::history::History, bool, Now) {
    let judged = repo.judging_clock(clock);
    match repo.scan().map(|sc| sc.fingerprints()) {
        Ok(disk) if !disk.is_empty() => {
            let mut h = repo.history().unwrap_or_default();
            h.reconcile(&disk, &judged);
            (h, true, judged)
        }
        _ => {
            let mut h = crate::history::History::new();
            let none = crate::key::Fingerprint::NONE;
            h.record_created(1, none, judged.wall);
            h.record_created(0, none, judged.wall);
            (h, false, judged)
        }
    }
}

/// `token window 2d 2h = expiration 1h + allow_expired_window 2d + margin 1h`, as the kind has it.
fn window_note(s: &Settings) -> String {
    let l = &s.lifetime;
    let f = duration::format;
    match s.kind {
        config::Kind::Credentials => "no token window: pre_rotate re-encrypts every credential \
             with the primary before each rotation"
            .to_string(),
        config::Kind::Receipts => format!(
            "token window {} = expiration {} + margin {}",
            f(l.retention()),
            f(l.expiration),
            f(l.margin)
        ),
        _ => format!(
            "token window {} = expiration {} + allow_expired_window {} + margin {}",
            f(l.retention()),
            f(l.expiration),
            f(l.allow_expired_window),
            f(l.margin)
        ),
    }
}

/// `status --chart`: the repository's keys, recorded and planned, and the guard's holds.
fn status_picture(
    m: &config::Managed,
    sum: &status::Summary,
    clock: &Now,
) -> crate::chart::Picture {
    let s = &m.settings;
    let repo = Repository::new(&s.key_repository, None);
    let (history, on_disk, judged) = charted_history(&repo, clock);
    // No keys: nothing to draw but now (`plan --chart` pictures a setup instead).
    let history = if on_disk {
        history
    } else {
        crate::history::History::new()
    };
    let p = crate::timeline::project(&crate::timeline::Input {
        history: &history,
        on_disk,
        now: &judged,
        schedule: &m.schedule,
        first: sum.next_rotation,
        max_active_keys: m.max_active_keys,
        retention: s.lifetime.retention(),
    });
    let level = match sum.level {
        status::Level::Ok => "OK",
        status::Level::Warning => "WARNING",
        status::Level::Critical => "CRITICAL",
    };
    let mut notes = vec![
        format!(
            "schedule '{}' (UTC), max_active_keys {}, {}",
            m.schedule,
            m.max_active_keys,
            window_note(s)
        ),
        format!(
            "now {}, last rotation {}, next {}",
            rfc3339(judged.wall),
            sum.last_rotation.map_or("never".into(), rfc3339),
            sum.next_rotation.map_or("never".into(), rfc3339)
        ),
    ];
    for r in &sum.retained {
        notes.push(format!(
            "key {} kept beyond max_active_keys until {}",
            r.key,
            rfc3339(r.until)
        ));
    }
    if !on_disk {
        notes.push("no keys on disk".into());
    }
    let codes: Vec<&str> = sum.problems.iter().map(|p| p.code.as_str()).collect();
    if !codes.is_empty() {
        notes.push(format!("problems: {} (fernetd status)", codes.join(", ")));
    }
    crate::chart::Picture {
        title: format!("{} {}: {level}", s.kind, s.key_repository.display()),
        notes,
        now: judged.wall,
        lives: p.lives,
        rotations: p.rotations,
        manual: None,
    }
}

/// `plan --chart`: the next rotations from the repository's keys as they are (or a setup now),
/// each key's window, and what a manual rotation now would do.
fn plan_picture(
    schedule: &Schedule,
    s: &Settings,
    plan: &planner::Plan,
    clock: &Now,
) -> crate::chart::Picture {
    let repo = Repository::new(&s.key_repository, None);
    let (history, on_disk, judged) = charted_history(&repo, clock);
    let n = s.max_active_keys.unwrap_or(plan.required_max_active_keys);
    let p = crate::timeline::project(&crate::timeline::Input {
        history: &history,
        on_disk,
        now: &judged,
        schedule,
        first: plan.next_rotations.first().copied(),
        max_active_keys: n,
        retention: s.lifetime.retention(),
    });
    let verdict = match (s.max_active_keys, plan.safe) {
        (Some(_), Some(false)) => format!(
            "UNSAFE, needs {}: the retention guard holds (!) what the count rule would purge",
            plan.required_max_active_keys
        ),
        (Some(_), _) => "safe".into(),
        (None, _) => "the smallest safe".into(),
    };
    let mut notes = vec![
        format!("schedule '{schedule}' (UTC), max_active_keys {n}: {verdict}"),
        match s.kind {
            config::Kind::Credentials => window_note(s),
            _ => format!(
                "{}; no key is purged before the tokens made with it expire (])",
                window_note(s)
            ),
        },
    ];
    if !on_disk {
        notes.push(format!(
            "no keys at {}: the picture starts from a setup now",
            s.key_repository.display()
        ));
    }
    crate::chart::Picture {
        title: format!("plan: {} {}", s.kind, s.key_repository.display()),
        notes,
        now: judged.wall,
        lives: p.lives,
        rotations: p.rotations,
        manual: p.manual,
    }
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn plan_json(schedule: &Schedule, s: &Settings, p: &planner::Plan) -> serde_json::Value {
    serde_json::json!({
        "kind": s.kind,
        "schedule": schedule.to_string(),
        "expiration_seconds": s.lifetime.expiration.as_secs(),
        "allow_expired_window_seconds": s.lifetime.allow_expired_window.as_secs(),
        "margin_seconds": s.lifetime.margin.as_secs(),
        "retention_seconds": p.retention.as_secs(),
        "required_max_active_keys": p.required_max_active_keys,
        "max_active_keys": p.max_active_keys,
        "safe": p.safe,
        "shortest_window_seconds": p.shortest_window.as_secs(),
        "shortest_window_between": p.shortest_window_between.map(|(a, b)| [rfc3339(a), rfc3339(b)]),
        "next_rotations": p.next_rotations.iter().map(|t| rfc3339(*t)).collect::<Vec<_>>(),
        "firings_analysed": p.firings_analysed,
        "horizon_truncated": p.horizon_truncated,
        "keystone_config": s.keystone_config.as_ref().map(|p| p.display().to_string()),
    })
}

fn print_plan(schedule: &Schedule, s: &Settings, p: &planner::Plan) {
    let l = &s.lifetime;
    let row = |k: &str, v: String| println!("{k:<26} {v}");
    if s.kind != config::Kind::Tokens {
        row(
            "repository",
            format!("{} {}", s.kind, s.key_repository.display()),
        );
    }
    row("schedule", format!("{schedule} (UTC)"));
    // What Keystone accepts decides the retention: tokens inside their allow_expired_window,
    // receipts never past their expiration (keystone/receipt/handlers.py), credentials until
    // pre_rotate re-encrypted them.
    let needed = match s.kind {
        config::Kind::Tokens => format!(
            "{} = expiration {} + allow_expired_window {} + margin {}",
            duration::format(p.retention),
            duration::format(l.expiration),
            duration::format(l.allow_expired_window),
            duration::format(l.margin)
        ),
        config::Kind::Receipts => format!(
            "{} = expiration {} + margin {} (Keystone never accepts an expired receipt)",
            duration::format(p.retention),
            duration::format(l.expiration),
            duration::format(l.margin)
        ),
        config::Kind::Credentials => "none: pre_rotate re-encrypts every credential with the \
             primary before each rotation; Keystone's fixed 3 keys"
            .to_string(),
    };
    row("retention needed", needed);
    row(
        "required max_active_keys",
        p.required_max_active_keys.to_string(),
    );
    let window = match p.shortest_window_between {
        Some((a, b)) => format!(
            "{} (between the rotations at {} and {})",
            duration::format(p.shortest_window),
            rfc3339(a),
            rfc3339(b)
        ),
        None => duration::format(p.shortest_window),
    };
    match (p.max_active_keys, p.safe) {
        (Some(n), Some(true)) => {
            row("max_active_keys", format!("{n}: safe"));
            row("shortest retention window", window);
        }
        (Some(n), _) => {
            row(
                "max_active_keys",
                format!(
                    "{n}: UNSAFE, needs {} (tokens become undecryptable before they expire)",
                    p.required_max_active_keys
                ),
            );
            row("shortest retention window", window);
        }
        (None, _) => {
            row("max_active_keys", "not configured".into());
            row(
                "shortest retention window",
                format!("{window} with the required N"),
            );
        }
    }
    let next: Vec<String> = p.next_rotations.iter().map(|t| rfc3339(*t)).collect();
    row("next rotations", next.join(", "));
    if p.horizon_truncated {
        row(
            "note",
            format!(
                "schedule analysed over its first {} firings only",
                p.firings_analysed
            ),
        );
    }
}

/// How bad a line on stderr is.
#[derive(Debug, Clone, Copy)]
pub enum Severity {
    Error,
    Warning,
}

/// A one-shot command's line on stderr; under journald (`JOURNAL_STREAM`, the timer's service)
/// it carries its syslog priority (sd-daemon(3)), as the daemon's log lines do.
pub fn say(severity: Severity, line: &str) {
    let priority = match (std::env::var_os("JOURNAL_STREAM").is_some(), severity) {
        (false, _) => "",
        (true, Severity::Error) => "<3>",
        (true, Severity::Warning) => "<4>",
    };
    eprintln!("{priority}{line}");
}
