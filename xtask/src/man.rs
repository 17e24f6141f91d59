//! `cargo xtask man`: the man pages and shell completions packages install, generated from
//! the programs' own definitions: `statecull.8` and `statecull-engine.8` from their clap
//! commands (clap_mangen), `statecull-broker.8` from the broker's flag table (the broker has
//! no clap), bash, zsh and fish completions for `statecull` and `statecull-engine`
//! (clap_complete).

use std::path::{Path, PathBuf};

use clap_complete::Shell;

use crate::util::{IoContext, Result};

/// Both clap programs, with their names and sections (8: system administration, as the
/// daemons and a tool that needs root to reach the broker are).
fn clap_programs() -> [clap::Command; 2] {
    [
        statecull_cli::cli::command().name("statecull"),
        statecull_engine::daemon::command().name("statecull-engine"),
    ]
}

fn man(cmd: clap::Command) -> clap_mangen::Man {
    clap_mangen::Man::new(cmd)
        .section("8")
        .manual("System Manager's Manual")
        .source(format!("statecull {}", env!("CARGO_PKG_VERSION")))
}

/// One section as roff, without the apostrophe preamble roff puts before every rendering
/// (the page has it once, at the top).
fn section(
    cmd: &clap::Command,
    render: impl Fn(&clap_mangen::Man, &mut dyn std::io::Write) -> std::io::Result<()>,
) -> Result<String> {
    let mut out = Vec::new();
    render(&man(cmd.clone()), &mut out).context("rendering a man page")?;
    let text = String::from_utf8_lossy(&out).into_owned();
    Ok(text
        .lines()
        .filter(|l| !l.starts_with(".ie \\n(.g .ds Aq") && !l.starts_with(".el .ds Aq"))
        .map(|l| format!("{l}\n"))
        .collect())
}

/// Text for roff: backslashes escaped, a leading dot or quote neutralised.
fn roff_text(text: &str) -> String {
    text.lines()
        .map(|l| {
            let l = l.replace('\\', "\\e");
            if l.starts_with('.') || l.starts_with('\'') {
                format!("\\&{l}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect()
}

/// Each subcommand (and theirs) as a subsection of COMMANDS: what it does, its options and
/// its examples. One page for the whole tool: `statecull-broker(8)` is the daemon's page, so
/// clap_mangen's page-per-subcommand names cannot be used.
fn commands(cmd: &clap::Command, path: &str, out: &mut String) -> Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help") {
        let full = format!("{path} {}", sub.get_name());
        out.push_str(&format!(".SS \"{full}\"\n"));
        if let Some(about) = sub.get_long_about().or_else(|| sub.get_about()) {
            out.push_str(&roff_text(&about.to_string()));
        }
        // A subcommand's --help is said once, at the top; its parent's global options are
        // shown with the parent (`statecull broker`), not again under each verb.
        let nested = path.contains(' ');
        let sub = sub.clone().mut_args(|a| {
            let hide = a.get_id() == "help" || (nested && a.is_global_set());
            if hide { a.hide(true) } else { a }
        });
        if sub.get_arguments().any(|a| !a.is_hide_set()) {
            let options = section(&sub, clap_mangen::Man::render_options_section)?;
            // Its own headings would end the COMMANDS section: they become paragraphs.
            for line in options.lines() {
                if line.starts_with(".SH") {
                    out.push_str(".PP\nOptions:\n");
                } else {
                    out.push_str(line);
                    out.push('\n');
                }
            }
        }
        if let Some(after) = sub.get_after_long_help().or_else(|| sub.get_after_help()) {
            out.push_str(".PP\n.nf\n");
            out.push_str(&roff_text(&after.to_string()));
            out.push_str(".fi\n");
        }
        commands(&sub, &full, out)?;
    }
    Ok(())
}

/// A program's page: clap_mangen's sections, and for a program with subcommands a COMMANDS
/// section with all of them instead of references to pages of their own.
fn man_page(cmd: clap::Command) -> Result<Vec<u8>> {
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    if !cmd.has_subcommands() {
        let mut out = Vec::new();
        man(cmd).render(&mut out).context("rendering a man page")?;
        return Ok(out);
    }
    let mut page = String::new();
    let mut title = Vec::new();
    man(cmd.clone()).render_title(&mut title).context("rendering a man page")?;
    page.push_str(&String::from_utf8_lossy(&title));
    page.push_str(&section(&cmd, clap_mangen::Man::render_name_section)?);
    page.push_str(&section(&cmd, clap_mangen::Man::render_synopsis_section)?);
    page.push_str(&section(&cmd, clap_mangen::Man::render_description_section)?);
    page.push_str(&section(&cmd, clap_mangen::Man::render_options_section)?);
    page.push_str(".SH COMMANDS\n");
    commands(&cmd, cmd.get_name(), &mut page)?;
    if let Some(after) = cmd.get_after_long_help().or_else(|| cmd.get_after_help()) {
        page.push_str(".SH \"EXAMPLES AND EXIT STATUS\"\n.nf\n");
        page.push_str(&roff_text(&after.to_string()));
        page.push_str(".fi\n");
    }
    page.push_str(".SH \"SEE ALSO\"\n.BR statecull\\-engine (8),\n.BR statecull\\-broker (8)\n");
    Ok(page.into_bytes())
}

fn completion(shell: Shell, mut cmd: clap::Command) -> Vec<u8> {
    let name = cmd.get_name().to_owned();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, name, &mut out);
    out
}

/// Every page and completion script, as (path relative to the output, contents).
pub fn render() -> Result<Vec<(PathBuf, Vec<u8>)>> {
    let mut files = Vec::new();
    for cmd in clap_programs() {
        let name = cmd.get_name().to_owned();
        files.push((PathBuf::from(format!("man8/{name}.8")), man_page(cmd.clone())?));
        for (shell, file) in [
            (Shell::Bash, format!("{name}.bash")),
            (Shell::Zsh, format!("_{name}")),
            (Shell::Fish, format!("{name}.fish")),
        ] {
            files.push((PathBuf::from("completions").join(file), completion(shell, cmd.clone())));
        }
    }
    files.push((
        PathBuf::from("man8/statecull-broker.8"),
        statecull_broker::flags::man_page().into_bytes(),
    ));
    Ok(files)
}

/// Write them all under `out` (default: `target/man`), and say where.
pub fn generate(out: Option<&Path>) -> Result<()> {
    let out = out.map_or_else(|| crate::util::target_dir().join("man"), Path::to_path_buf);
    for (rel, contents) in render()? {
        let path = out.join(&rel);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).context(format!("creating {}", dir.display()))?;
        }
        std::fs::write(&path, contents).context(format!("writing {}", path.display()))?;
        println!("{}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file `generate` writes, relative to its directory.
    const FILES: &[&str] = &[
        "man8/statecull.8",
        "man8/statecull-engine.8",
        "man8/statecull-broker.8",
        "completions/statecull.bash",
        "completions/_statecull",
        "completions/statecull.fish",
        "completions/statecull-engine.bash",
        "completions/_statecull-engine",
        "completions/statecull-engine.fish",
    ];

    #[test]
    fn every_file_is_rendered_once_and_says_something() {
        let files = render().unwrap();
        let names: Vec<String> = files.iter().map(|(p, _)| p.display().to_string()).collect();
        let mut want: Vec<&str> = FILES.to_vec();
        want.sort_unstable();
        let mut got: Vec<&str> = names.iter().map(String::as_str).collect();
        got.sort_unstable();
        assert_eq!(got, want);
        for (path, contents) in &files {
            assert!(contents.len() > 200, "{} is nearly empty", path.display());
        }
    }

    #[test]
    fn pages_name_their_program_and_its_options() {
        let files = render().unwrap();
        let text = |name: &str| {
            let (_, c) = files.iter().find(|(p, _)| p.ends_with(name)).unwrap();
            String::from_utf8(c.clone()).unwrap()
        };
        let cli = text("statecull.8");
        assert!(cli.contains("\n.TH statecull 8 "), "{cli}");
        assert!(cli.contains(".SH COMMANDS\n.SS \"statecull broker\"\n"), "{cli}");
        for sub in ["statecull broker list", "statecull status", "statecull check-policy"] {
            assert!(cli.contains(&format!(".SS \"{sub}\"\n")), "{sub} missing");
        }
        assert!(cli.contains("\\-\\-format"), "a verb's options are on the page");
        // No reference to a page of a subcommand: statecull-broker(8) is the daemon's.
        assert!(!cli.contains("statecull\\-status"), "{cli}");
        let engine = text("statecull-engine.8");
        assert!(engine.contains("\n.TH statecull-engine 8 "), "{engine}");
        assert!(engine.contains("\\-\\-policy"), "{engine}");
        let broker = text("statecull-broker.8");
        assert!(broker.contains("\\-\\-model\\-states"), "{broker}");
        let bash = text("completions/statecull.bash");
        assert!(bash.contains("check-policy") && bash.contains("--format"), "{bash}");
    }

    #[test]
    fn pages_show_this_os_defaults() {
        use statecull_proto::paths;
        let files = render().unwrap();
        let text = |name: &str| {
            let (_, c) = files.iter().find(|(p, _)| p.ends_with(name)).unwrap();
            // roff's escaped hyphens as plain ones, words joined by one space.
            let t = String::from_utf8(c.clone()).unwrap().replace("\\-", "-");
            t.split_whitespace().collect::<Vec<_>>().join(" ")
        };
        let (cli, engine, broker) =
            (text("statecull.8"), text("statecull-engine.8"), text("statecull-broker.8"));
        for (page, want) in [
            (&cli, paths::BROKER_SOCKET),
            (&cli, paths::CONTROL_SOCKET),
            (&cli, paths::POLICY_FILE),
            (&engine, paths::BROKER_SOCKET),
            (&engine, paths::CONTROL_SOCKET),
            (&broker, paths::BROKER_SOCKET),
            (&broker, paths::BROKER_CONFIG),
        ] {
            assert!(page.contains(want), "{want} missing from {page}");
        }
        let backend = if cfg!(target_os = "freebsd") { "pf" } else { "conntrack" };
        assert!(broker.contains(&format!("backend = \"{backend}\"")), "{broker}");
        let other = if cfg!(target_os = "freebsd") { paths::LINUX } else { paths::FREEBSD };
        // After a space or a quote: FreeBSD's /var/run/statecull contains Linux's
        // /run/statecull. (The other OS's configuration directory may be named where it is
        // that system's own: `import opnsense ... -o /usr/local/etc/statecull/policy.toml`.)
        for page in [&cli, &engine, &broker] {
            for wrong in [
                format!("[default: {}", other.run_dir),
                format!("check-policy {}", other.policy_file),
                format!(" {}", other.broker_socket),
                format!(" {}", other.control_socket),
                format!(" {}", other.broker_config),
                format!("\"{}\"", other.broker_socket),
            ] {
                assert!(!page.contains(&wrong), "{wrong} in {page}");
            }
        }
    }
}
