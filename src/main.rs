//! The `fernetd` binary: parse, set up logging, run, turn any error into one line and exit 2.

use clap::Parser;
use fernetd::cli::{self, Cli};

fn main() {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                std::process::exit(0);
            }
            // One line, as every other error: clap's first line names the flag at fault.
            let rendered = e.render().to_string();
            let first = rendered.lines().next().unwrap_or("invalid arguments");
            cli::say(
                cli::Severity::Error,
                &format!("fernetd: {}", first.trim_start_matches("error: ")),
            );
            std::process::exit(cli::EXIT_ERROR);
        }
    };
    init_logging(&cli);
    if !matches!(cli.command, cli::Command::Daemon(_)) {
        restore_default_sigpipe();
    }
    match cli::run(cli, fernetd::core::clock::Now::read()) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            // Our error variants already include their cause; print the top level only.
            let line = format!("{e}").replace('\n', " ");
            // Rotated, but not recorded: its own status, so a timer or an operator does not
            // take it for "nothing changed" and rotate again.
            let code = match e.downcast_ref::<fernetd::Error>() {
                Some(fernetd::Error::RotatedUnsaved { .. }) => cli::EXIT_ROTATED_UNSAVED,
                _ => cli::EXIT_ERROR,
            };
            cli::say(cli::Severity::Error, &format!("fernetd: error: {line}"));
            std::process::exit(code);
        }
    }
}

/// Plain lines without timestamps under journald (it adds its own), colour on a terminal,
/// JSON on request. The daemon logs at info by default, one-shot commands at warn
/// (FERNETD_LOG overrides, e.g. `FERNETD_LOG=debug`).
fn init_logging(cli: &Cli) {
    use std::io::IsTerminal;
    let default = match cli.command {
        cli::Command::Daemon(_) => "info",
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("FERNETD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    if cli.log_format == cli::LogFormat::Json {
        builder.json().init();
    } else if std::env::var_os("JOURNAL_STREAM").is_some() {
        let plain = tracing_subscriber::fmt::format()
            .without_time()
            .with_level(false)
            .with_target(false)
            .with_ansi(false);
        builder.event_format(Journald(plain)).init();
    } else {
        builder.with_ansi(std::io::stderr().is_terminal()).init();
    }
}

/// Under journald each line starts with its syslog priority (`<3>` error, `<4>` warning, `<6>`
/// info, `<7>` debug: sd-daemon(3)), which journald takes as the entry's priority and strips,
/// so `journalctl -p warning` shows exactly the warnings and errors. The level word is left
/// out: the priority carries it.
struct Journald<F>(F);

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for Journald<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let priority = match *event.metadata().level() {
            tracing::Level::ERROR => 3,
            tracing::Level::WARN => 4,
            tracing::Level::INFO => 6,
            _ => 7,
        };
        write!(writer, "<{priority}>")?;
        self.0.format_event(ctx, writer, event)
    }
}

/// One-shot commands end quietly when their reader goes away (`fernetd plan | head -3`), like
/// other Unix tools, instead of panicking on EPIPE. Not for the daemon: a metrics client that
/// hangs up must be a write error there, never a fatal signal.
fn restore_default_sigpipe() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: called once at start-up, before any other thread exists; SIG_DFL installs no
    // handler code.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
}
