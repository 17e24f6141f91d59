//! `cargo xtask man`: the man pages and shell completions packages install, generated from
//! the programs' own definitions: `statecull.8` and `statecull-engine.8` from their clap
//! commands (clap_mangen), `statecull-broker.8` from the broker's flag table (the broker has
//! no clap), bash, zsh and fish completions for `statecull` and `statecull-engine`
//! (clap_complete), and the two hand-written file-format pages of `docs/man/`,
//! `statecull-policy.5` and `statecull-broker.toml.5` (checked here with `groff -ww` and
//! against the keys the loaders accept).

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
    let mut page = String::new();
    let mut title = Vec::new();
    man(cmd.clone()).render_title(&mut title).context("rendering a man page")?;
    page.push_str(&String::from_utf8_lossy(&title));
    page.push_str(&section(&cmd, clap_mangen::Man::render_name_section)?);
    page.push_str(&section(&cmd, clap_mangen::Man::render_synopsis_section)?);
    page.push_str(&section(&cmd, clap_mangen::Man::render_description_section)?);
    page.push_str(&section(&cmd, clap_mangen::Man::render_options_section)?);
    if cmd.has_subcommands() {
        page.push_str(".SH COMMANDS\n");
        commands(&cmd, cmd.get_name(), &mut page)?;
    }
    // The text after --help, laid out as --help shows it (clap_mangen's EXTRA section
    // would fill it into one paragraph).
    if let Some(after) = cmd.get_after_long_help().or_else(|| cmd.get_after_help()) {
        let heading = if cmd.has_subcommands() {
            "EXAMPLES AND EXIT STATUS"
        } else {
            "SIGNALS AND EXIT STATUS"
        };
        page.push_str(&format!(".SH \"{heading}\"\n.nf\n"));
        page.push_str(&roff_text(&after.to_string()));
        page.push_str(".fi\n");
    }
    let see_also: Vec<String> = [
        ("statecull", "8"),
        ("statecull-engine", "8"),
        ("statecull-broker", "8"),
        ("statecull-policy", "5"),
        ("statecull-broker.toml", "5"),
    ]
    .into_iter()
    .filter(|(name, _)| *name != cmd.get_name())
    .map(|(name, section)| format!(".BR {} ({section})", name.replace('-', "\\-")))
    .collect();
    page.push_str(&format!(".SH \"SEE ALSO\"\n{}\n", see_also.join(",\n")));
    Ok(page.into_bytes())
}

fn completion(shell: Shell, mut cmd: clap::Command) -> Vec<u8> {
    let name = cmd.get_name().to_owned();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, name, &mut out);
    out
}

/// The hand-written pages of file formats (section 5), in `docs/man/`.
pub const FORMAT_PAGES: [&str; 2] = ["statecull-policy.5", "statecull-broker.toml.5"];

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
    for page in FORMAT_PAGES {
        let path = crate::util::root().join("docs/man").join(page);
        let text = std::fs::read(&path).context(format!("reading {}", path.display()))?;
        files.push((PathBuf::from("man5").join(page), text));
    }
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
        "man5/statecull-policy.5",
        "man5/statecull-broker.toml.5",
    ];

    /// The units' `Documentation=man:PAGE(N)` name pages the packages install (lintian's
    /// systemd-service-file-missing-documentation-key; `systemctl help` opens them).
    #[test]
    fn the_units_document_themselves_with_pages_we_ship() {
        let shipped: Vec<PathBuf> = render().unwrap().into_iter().map(|(p, _)| p).collect();
        for unit in ["statecull-broker.service", "statecull-engine.service"] {
            let path = crate::util::root().join("sandbox/profiles/systemd").join(unit);
            let text = std::fs::read_to_string(&path).unwrap();
            let pages: Vec<&str> = text
                .lines()
                .filter_map(|l| l.strip_prefix("Documentation="))
                .flat_map(str::split_whitespace)
                .collect();
            assert!(!pages.is_empty(), "{unit}: no Documentation=");
            for page in pages {
                let (name, section) = page
                    .strip_prefix("man:")
                    .and_then(|p| p.strip_suffix(')'))
                    .and_then(|p| p.split_once('('))
                    .unwrap_or_else(|| panic!("{unit}: {page} is not man:NAME(N)"));
                let want = PathBuf::from(format!("man{section}/{name}.{section}"));
                assert!(
                    shipped.contains(&want),
                    "{unit}: {page}: {} is not rendered",
                    want.display()
                );
            }
        }
    }

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

    /// groff's own warnings (`-ww`: all of them) on every page, generated or hand-written:
    /// a page that renders with a warning fails. Without groff (Debian: groff-base) the
    /// test says so and fails, since CI has it.
    #[test]
    fn every_page_renders_without_groff_warnings() {
        for (path, contents) in render().unwrap() {
            if !path.starts_with("man5") && !path.starts_with("man8") {
                continue;
            }
            let mut child = std::process::Command::new("groff")
                .args(["-ww", "-man", "-z", "-Tutf8"])
                .stdin(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("groff (Debian: groff-base) must be installed");
            std::io::Write::write_all(child.stdin.as_mut().unwrap(), &contents).unwrap();
            drop(child.stdin.take());
            let out = child.wait_with_output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success() && err.trim().is_empty(), "{}: {err}", path.display());
        }
    }

    /// Field names of the structs in a Rust source file whose names are given (the serde
    /// shapes of the configuration files): what the hand-written pages must document.
    fn struct_fields(rel: &str, structs: &[&str]) -> Vec<String> {
        let src = std::fs::read_to_string(crate::util::root().join(rel)).unwrap();
        let mut fields = Vec::new();
        let mut inside = false;
        for line in src.lines() {
            let l = line.trim();
            if structs.iter().any(|s| l.contains(&format!("struct {s} {{"))) {
                inside = true;
            } else if inside && l == "}" {
                inside = false;
            } else if inside && !l.starts_with("#[") && !l.starts_with("//") {
                let l = l.trim_start_matches("pub(super) ").trim_start_matches("pub ");
                if let Some((name, _)) = l.split_once(':') {
                    fields.push(name.trim().to_owned());
                }
            }
        }
        assert!(fields.len() > 10, "{rel}: found only {fields:?}");
        fields
    }

    fn page(name: &str) -> String {
        let files = render().unwrap();
        let (_, c) = files.iter().find(|(p, _)| p.ends_with(name)).unwrap();
        String::from_utf8(c.clone()).unwrap().replace("\\-", "-")
    }

    /// Each key of each table is named in bold (`.B key` or within `.BR`) on the policy
    /// page: a key added to the loader without a line on the page fails.
    #[test]
    fn the_policy_page_documents_every_key_and_its_defaults() {
        let text = page("statecull-policy.5");
        let fields = struct_fields(
            "policy/src/load/raw.rs",
            &[
                "RawEngine",
                "RawRouting",
                "RawGateway",
                "RawDamping",
                "RawStates",
                "RawGroup",
                "RawProtect",
            ],
        );
        for f in fields {
            let bold = text.lines().any(|l| {
                (l.starts_with(".B ") || l.starts_with(".BR "))
                    && l.split([' ', ',', '"']).any(|w| w == f)
            });
            let table = ["damping", "states"].contains(&f.as_str())
                && text.contains(&format!("[gateway.{f}]"));
            assert!(bold || table, "statecull-policy.5 does not document {f}");
        }
        let h = statecull_policy::model::HealthParams::default();
        let r = statecull_policy::model::Routing::default();
        for (key, default) in [
            ("window", h.window.to_string()),
            ("min_samples", h.min_samples.to_string()),
            ("loss_down", format!("{}%", h.loss_down_pct)),
            ("loss_degraded", format!("{}%", h.loss_degraded_pct)),
            ("loss_up", format!("{}%", h.loss_up_pct)),
            ("latency_degraded", format!("{}ms", h.latency_degraded.as_millis())),
            ("latency_up", format!("{}ms", h.latency_up.as_millis())),
            ("hold_down", format!("{}s", h.hold_down.as_secs())),
            ("penalty", h.damping.penalty.to_string()),
            ("suppress_above", h.damping.suppress_above.to_string()),
            ("reuse_below", h.damping.reuse_below.to_string()),
            ("max_penalty", h.damping.max_penalty.to_string()),
            ("half_life", format!("{}m", h.damping.half_life.as_secs() / 60)),
            ("settle_timeout", format!("{}s", r.settle_timeout.as_secs())),
            ("sweep_delay", format!("{}s", r.sweep_delay.as_secs())),
            (
                "probe_interval",
                format!(
                    "{}ms",
                    statecull_policy::model::Gateway::DEFAULT_PROBE_INTERVAL.as_millis()
                ),
            ),
            (
                "probe_timeout",
                format!("{}s", statecull_policy::model::Gateway::DEFAULT_PROBE_TIMEOUT.as_secs()),
            ),
        ] {
            let at =
                text.find(&format!(".TP\n.B {key}\n")).unwrap_or_else(|| panic!("no .B {key}"));
            let entry = &text[at..];
            let end = ["\n.TP", "\n.S"].iter().filter_map(|m| entry[4..].find(m)).min();
            let entry = &entry[..end.map_or(entry.len(), |e| e + 4)];
            assert!(entry.contains(&format!("Default: {default}")), "{key}: {entry}");
        }
    }

    /// The page's example is a policy the loader accepts.
    #[test]
    fn the_policy_pages_example_loads() {
        let text = page("statecull-policy.5");
        let example = text.split(".SH EXAMPLE\n.nf\n").nth(1).unwrap();
        let example = example.split("\n.fi\n").next().unwrap();
        let p = statecull_policy::load::parse(example, "statecull-policy.5").unwrap();
        assert_eq!(p.gateways.len(), 2);
    }

    #[test]
    fn the_broker_toml_page_documents_every_key() {
        let text = page("statecull-broker.toml.5");
        for f in struct_fields("crates/broker/src/config.rs", &["FileConfig"]) {
            assert!(
                text.lines().any(|l| (l.starts_with(".B ") || l.starts_with(".BR "))
                    && l.split([' ', ',', '"']).any(|w| w == f)),
                "statecull-broker.toml.5 does not document {f}"
            );
        }
        assert!(
            text.contains(&format!(
                "Default: {}.",
                statecull_broker::config::DEFAULT_MAX_CONNECTIONS
            ))
        );
        let example = text.split(".SH EXAMPLE\n.nf\n").nth(1).unwrap();
        let example = example.split("\n.fi\n").next().unwrap();
        statecull_broker::config::Config::from_toml(example, "statecull-broker.toml.5").unwrap();
    }
}
