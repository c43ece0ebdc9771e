//! The command-line contract: every command, flag and help text, and nothing that runs them.
//!
//! Doc comments are the help text; `fernetd generate` makes the man pages and completions from
//! these same definitions. The code that runs a command lives in its own module beside this one.

use crate::config;
use crate::core::duration;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

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
    /// Rename a node: its membership (what it acknowledged) and its claim on the name move
    /// from OLD to NEW in one transaction, so promotions wait for NEW, not for OLD. Stop the
    /// node's daemon first; start it again with `[cluster] node = NEW`. Only this command
    /// moves a membership: a daemon started under a new name joins as a new node.
    RenameNode(RenameNodeArgs),
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
pub struct RenameNodeArgs {
    /// The node's former name.
    #[arg(value_name = "OLD")]
    pub old: String,
    /// Its new name ([cluster] node on it from now on).
    #[arg(value_name = "NEW")]
    pub new: String,
    /// Only this repository's members (default: every configured repository).
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
    /// With --from: DIR's keys follow a cluster bound to another etcd (another etcd cluster id
    /// or prefix), and this is meant: the cluster moves to the etcd `endpoints` names. Without
    /// it such an import is refused (a wrong endpoint would start a second cluster).
    #[arg(long, requires = "from")]
    pub move_etcd: bool,
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
    /// Which configured repository the directory is (its section's settings). Default: tokens;
    /// a directory configured as the credentials repository needs `--kind credentials`.
    #[arg(long, value_enum)]
    pub kind: Option<KindArg>,
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

/// `--max-active-keys`: an integer of at least 2.
fn max_active_keys(s: &str) -> Result<u64, String> {
    let n: u64 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a whole number"))?;
    config::check_max_keys(n)?;
    Ok(n)
}
