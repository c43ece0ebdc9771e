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
            eprintln!("fernetd: {}", first.trim_start_matches("error: "));
            std::process::exit(cli::EXIT_ERROR);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FERNETD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli::run(cli, chrono::Utc::now()) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            // Our error variants already include their cause; print the top level only.
            let line = format!("{e}").replace('\n', " ");
            eprintln!("fernetd: error: {line}");
            std::process::exit(cli::EXIT_ERROR);
        }
    }
}
