//! `fernetd generate`: the man pages and completions, for packaging (a hidden command).

use super::{Cli, GenerateArgs};

/// Man pages (`fernetd.1`, one `fernetd-COMMAND.1` per command) and completions for bash, zsh
/// and fish, from the same definitions as `--help`.
pub(super) fn run(a: GenerateArgs) -> anyhow::Result<i32> {
    use anyhow::Context as _;
    use clap::CommandFactory;
    let out = &a.out;
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
    Ok(0)
}
