//! The command line: [`args`] defines it (the contract scripts rely on); `run` parses nothing,
//! it hands each parsed command to the one function that runs it, in a module per command or
//! command group. Shared wording of outcomes lives in `render`, shared wiring from flags to
//! settings in `settings`.
//!
//! Exit codes: 0 success; `check` 1 = warnings only, 2 = invalid; `plan` 3 = the configured
//! max_active_keys is unsafe; `token` 1 = accepted only with allow_expired, 3 = past its
//! window, 4 = not decryptable here; `setup` and `rotate` 3 = done, but a key is lost inside
//! its retention, `rotate` 4 = rotated but not recorded; 2 for any error (one line on stderr
//! naming what is at fault).

use crate::core::clock::Now;

mod args;
mod chart;
mod check;
mod check_config;
mod cluster;
mod daemon;
mod generate;
mod plan;
mod render;
mod rotate;
mod settings;
mod setup;
mod status;
mod sync;
mod token;

pub use args::*;
pub use render::{say, Severity};

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
    match cli.command {
        Command::Daemon(a) => daemon::run(a, config, &clock),
        Command::Status(a) => status::run(a, config, &clock),
        Command::Setup(a) => setup::run(a, config, &clock),
        Command::Rotate(a) => rotate::run(a, config, &clock),
        Command::Check(a) => check::run(a, config, &clock),
        Command::Plan(a) => plan::run(a, config, &clock),
        Command::CheckConfig(a) => check_config::run(a, config, &clock),
        Command::Token(a) => token::run(a, config, &clock),
        Command::Cluster(ClusterCommand::Init(a)) => cluster::init(a, config, &clock),
        Command::Cluster(ClusterCommand::NewSealKey(a)) => cluster::new_seal_key(a, config),
        Command::Cluster(ClusterCommand::Seal(a)) => cluster::seal(a, config),
        Command::Cluster(ClusterCommand::RemoveNode(a)) => cluster::remove_node(a, config),
        Command::Cluster(ClusterCommand::RenameNode(a)) => cluster::rename_node(a, config),
        Command::Sync(a) => sync::run(a, config, &clock),
        Command::Generate(a) => generate::run(a),
    }
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
