//! The broker's command-line flags as one table: the parser reads it, `--help` and the man
//! page `statecull-broker.8` are rendered from it. Pure: arguments in, flags found out; no
//! meaning is given to a value here (`cli.rs` does that, in the table's order, so the order
//! of the command line never matters).

use std::ffi::OsString;

/// Which flag; one per row of [`FLAGS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlagId {
    Config,
    Socket,
    SocketGroup,
    AllowUser,
    AllowGroup,
    Protect,
    MaxConnections,
    MaxConnectionsPerUser,
    EngineUser,
    Backend,
    ModelStates,
    ModelSeed,
    ModelRelease,
    LogFormat,
    LogLevel,
    LogTarget,
    Check,
    User,
    PrintSandbox,
    NoSandbox,
    Help,
    Version,
}

/// One flag: its spellings, its value's name (none for a switch), whether it may be given
/// more than once, what it does (one paragraph, no line breaks: each renderer wraps) and its
/// default.
#[derive(Debug)]
pub struct Flag {
    pub id: FlagId,
    pub short: Option<char>,
    pub long: &'static str,
    pub value: Option<&'static str>,
    pub repeatable: bool,
    pub help: &'static str,
    pub default: Option<&'static str>,
}

const fn flag(
    id: FlagId,
    long: &'static str,
    value: Option<&'static str>,
    help: &'static str,
) -> Flag {
    Flag { id, short: None, long, value, repeatable: false, help, default: None }
}

impl Flag {
    const fn short(mut self, c: char) -> Self {
        self.short = Some(c);
        self
    }
    const fn repeatable(mut self) -> Self {
        self.repeatable = true;
        self
    }
    const fn default(mut self, d: &'static str) -> Self {
        self.default = Some(d);
        self
    }

    /// `-c, --config FILE` or `--check`.
    pub fn spelling(&self) -> String {
        let mut s = match self.short {
            Some(c) => format!("-{c}, --{}", self.long),
            None => format!("    --{}", self.long),
        };
        if let Some(v) = self.value {
            s.push(' ');
            s.push_str(v);
        }
        s
    }
}

/// Every flag, in the order `--help` lists them and values are applied (a flag that refines
/// another comes after it: the pf-model flags after `--backend`).
pub const FLAGS: &[Flag] = &[
    flag(
        FlagId::Config,
        "config",
        Some("FILE"),
        concat!(
            "TOML configuration; the flags override it (see CONFIG FILE). The service scripts \
             pass --config ",
            statecull_proto::broker_config!(),
            "."
        ),
    )
    .short('c'),
    flag(FlagId::Socket, "socket", Some("PATH"), "Listening socket.")
        .short('s')
        .default(statecull_proto::broker_socket!()),
    flag(
        FlagId::SocketGroup,
        "socket-group",
        Some("GROUP"),
        "Group owning the socket (mode 0660), e.g. the engine's group.",
    ),
    flag(
        FlagId::AllowUser,
        "allow-user",
        Some("USER"),
        "User (name or uid) allowed to connect; repeatable. Root is always allowed, for operators.",
    )
    .repeatable(),
    flag(
        FlagId::AllowGroup,
        "allow-group",
        Some("GROUP"),
        "Primary group allowed to connect; repeatable.",
    )
    .repeatable(),
    flag(
        FlagId::Protect,
        "protect",
        Some("PREFIX"),
        "Never kill states touching PREFIX, whatever is asked; repeatable (e.g. --protect \
         192.0.2.0/28 for management).",
    )
    .repeatable(),
    flag(
        FlagId::MaxConnections,
        "max-connections",
        Some("N"),
        "Connection slots shared by all clients; root and the engine's user each have one \
         more, reserved.",
    )
    .default("16"),
    flag(
        FlagId::MaxConnectionsPerUser,
        "max-connections-per-user",
        Some("N"),
        "Most shared slots one user may hold.",
    )
    .default("half of --max-connections"),
    flag(
        FlagId::EngineUser,
        "engine-user",
        Some("USER"),
        "The engine's user (name or uid), which gets the reserved slot.",
    )
    .default("the first --allow-user"),
    flag(
        FlagId::Backend,
        "backend",
        Some("NAME"),
        "State table: conntrack (Linux), pf (FreeBSD), or pf-model: an in-memory model of pf \
         with a generated two-WAN router table, for simulation and tests. pf-model exists only \
         in builds with the cargo feature `model` (cargo build -p statecull-broker --features \
         model), never in a package.",
    )
    .default(crate::default_backend!()),
    flag(
        FlagId::ModelStates,
        "model-states",
        Some("N"),
        "pf-model: states in the generated table.",
    )
    .default("100000"),
    flag(FlagId::ModelSeed, "model-seed", Some("N"), "pf-model: seed of the generated table.")
        .default("1"),
    flag(
        FlagId::ModelRelease,
        "model-release",
        Some("R"),
        "pf-model: FreeBSD release whose interfaces to emulate: 13 (nvlist ioctls), 14 (also \
         netlink listing), 15 (netlink). SIGUSR1 to a pf-model broker commits a new filter \
         ruleset in the model (as `pfctl -f` would): its ticket changes.",
    )
    .default("15"),
    flag(FlagId::LogFormat, "log-format", Some("FORMAT"), "text or json.").default("text"),
    flag(FlagId::LogLevel, "log-level", Some("LEVEL"), "error, warn, info, debug or trace.")
        .default("info"),
    flag(
        FlagId::LogTarget,
        "log-target",
        Some("TARGET"),
        "stderr or syslog. On stderr, each line starts with its syslog priority (<3> error \
         ... <7> debug) when stderr is the journal (JOURNAL_STREAM), for journalctl -p. \
         syslog: one message per event to the local syslog socket (/var/run/log on FreeBSD, \
         /dev/log on Linux), facility daemon, tag statecull-broker, with its priority; for \
         rc.d, instead of daemon(8) forwarding every line at one severity.",
    )
    .default("stderr"),
    flag(FlagId::Check, "check", None, "Probe the backend, print what it supports, and exit."),
    flag(
        FlagId::User,
        "user",
        Some("USER"),
        "After opening the state table and the socket, switch to USER (name or uid) with only \
         CAP_NET_ADMIN, no_new_privs, no filesystem (Landlock) and a seccomp allow-list.",
    )
    .default("statecull-broker, when started as root"),
    flag(
        FlagId::PrintSandbox,
        "print-sandbox",
        None,
        "Start up, confine, print the confinement in force, and exit.",
    ),
    flag(
        FlagId::NoSandbox,
        "no-sandbox",
        None,
        "DEVELOPMENT ONLY: no user switch, no confinement (a loud warning is logged at every \
         start).",
    ),
    flag(FlagId::Help, "help", None, "Print this text.").short('h'),
    flag(FlagId::Version, "version", None, "Print the version.").short('V'),
];

/// The flags given, each with its value, in command-line order.
pub type Given = Vec<(&'static Flag, Option<String>)>;

/// Find every flag of `argv` (without the program name) in [`FLAGS`]. Refused: an unknown
/// flag, a positional argument, a missing or non-UTF-8 value, a value given to a switch. A
/// flag that takes one value may be given again: the last one counts (see [`last`]), so the
/// flags an operator appends to a service's fixed ones (rc.d `statecull_broker_flags`)
/// override them.
pub fn parse(argv: Vec<OsString>) -> Result<Given, String> {
    use lexopt::Arg;
    let mut parser = lexopt::Parser::from_args(argv);
    let mut given: Given = Vec::new();
    while let Some(arg) = parser.next().map_err(|e| format!("{e}; see --help"))? {
        let found = match &arg {
            Arg::Short(c) => FLAGS.iter().find(|f| f.short == Some(*c)),
            Arg::Long(name) => FLAGS.iter().find(|f| f.long == *name),
            Arg::Value(_) => None,
        };
        let Some(f) = found else {
            return Err(format!("{}; see --help", arg.unexpected()));
        };
        let value = match f.value {
            Some(_) => Some(
                parser
                    .value()
                    .map_err(|e| format!("{e}; see --help"))?
                    .into_string()
                    .map_err(|_| format!("--{}: the value is not UTF-8", f.long))?,
            ),
            None => None,
        };
        given.push((f, value));
    }
    Ok(given)
}

/// Every value given for `id`, in command-line order.
pub fn values(given: &Given, id: FlagId) -> impl Iterator<Item = &str> {
    given.iter().filter(move |(f, _)| f.id == id).filter_map(|(_, v)| v.as_deref())
}

/// The value that counts for a flag taking one value: the last one given.
pub fn last(given: &Given, id: FlagId) -> Option<&str> {
    values(given, id).last()
}

/// Whether the switch `id` was given.
pub fn has(given: &Given, id: FlagId) -> bool {
    given.iter().any(|(f, _)| f.id == id)
}

/// `text` in lines of at most `width` columns (a longer word gets a line of its own).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

/// What the broker is, before its flags (help and man page).
pub const ABOUT: &str = "statecull-broker is the privileged half of statecull. It owns the \
    state table (Linux conntrack, FreeBSD pf) and only lists and kills states, for the \
    unprivileged statecull-engine and for operators (statecull broker ...), over a Unix \
    socket. It holds no policy: every request names exactly which states to kill.";

/// The configuration file's keys (all optional), as an example file.
pub const CONFIG_EXAMPLE: &str = concat!(
    "socket = \"",
    statecull_proto::broker_socket!(),
    "\"
socket_group = \"statecull\"
allow_users = [\"statecull\"]        # or allow_uids = [998]
allow_groups = []                  # or allow_gids = []
protected = [\"192.0.2.0/28\", \"2001:db8:ffff::/48\"]
max_connections = 16
max_connections_per_user = 8
engine_user = \"statecull\"
backend = \"",
    crate::default_backend!(),
    "\"
log_format = \"json\"
log_level = \"info\"
log_target = \"stderr\"
user = \"statecull-broker\""
);

/// Paragraphs after the flags: audit, signals, errors.
pub const NOTES: &[&str] = &[
    "Every kill is logged as one audit line (target statecull::audit): peer uid/gid/pid, \
     verb, selector, killed/not found/spared counts, path taken and microseconds.",
    "SIGTERM, SIGINT or SIGQUIT: stop accepting, finish requests in flight (a kill is never \
     cut short), exit 0 (a confined broker cannot remove its socket file; nothing listens \
     there any more and the next start replaces it). Other signals that would end a process \
     (SIGHUP, SIGUSR1 except to a pf-model broker, SIGUSR2, SIGALRM, real-time signals, ...) are \
     logged and ignored.",
    "Under systemd (NOTIFY_SOCKET, Type=notify) the broker sends READY=1 once its socket is \
     bound, it is confined and it takes signals, and STOPPING=1 when it begins to stop. Log \
     lines on the journal's stream (JOURNAL_STREAM) start with their syslog priority, <3> \
     error to <7> debug.",
    "Flags may come in any order and override the configuration file; of a flag that takes \
     one value and is given twice, the last counts. A broker that cannot \
     start prints one line, statecull-broker: followed by the reason, on standard error and \
     exits 2 for a mistake on the command line or in the configuration, 1 for anything else.",
];

const LEFT: usize = 33;
const WIDTH: usize = 92;

/// `--help`: rendered from [`FLAGS`], [`ABOUT`], [`CONFIG_EXAMPLE`] and [`NOTES`].
pub fn help() -> String {
    let mut s = String::from("statecull-broker: the privileged half of statecull.\n\n");
    for line in wrap(ABOUT, WIDTH) {
        s.push_str(&line);
        s.push('\n');
    }
    s.push_str("\nUSAGE:\n    statecull-broker [OPTIONS]\n\nOPTIONS:\n");
    for f in FLAGS {
        let left = format!("    {}", f.spelling());
        let mut text = f.help.to_owned();
        if let Some(d) = f.default {
            text.push_str(&format!(" [default: {d}]"));
        }
        let lines = wrap(&text, WIDTH - LEFT);
        let mut lines = lines.iter();
        if left.len() < LEFT - 1 {
            s.push_str(&format!("{left:<LEFT$}{}\n", lines.next().map_or("", String::as_str)));
        } else {
            s.push_str(&left);
            s.push('\n');
        }
        for l in lines {
            s.push_str(&format!("{:LEFT$}{l}\n", ""));
        }
    }
    s.push_str("\nCONFIG FILE (all keys optional):\n");
    for line in CONFIG_EXAMPLE.lines() {
        s.push_str(&format!("    {line}\n"));
    }
    for note in NOTES {
        s.push('\n');
        for line in wrap(note, WIDTH) {
            s.push_str(&line);
            s.push('\n');
        }
    }
    s
}

/// Text for roff: backslashes and hyphens escaped, a leading dot or quote neutralised.
fn roff(text: &str) -> String {
    let s = text.replace('\\', "\\e").replace('-', "\\-");
    if s.starts_with('.') || s.starts_with('\'') { format!("\\&{s}") } else { s }
}

/// The man page `statecull-broker.8` (roff, man macros), from the same table as `--help`.
pub fn man_page() -> String {
    let mut s = String::new();
    s.push_str(&format!(
        ".TH STATECULL\\-BROKER 8 \"\" \"statecull {}\" \"System Manager's Manual\"\n",
        env!("CARGO_PKG_VERSION")
    ));
    s.push_str(".SH NAME\nstatecull\\-broker \\- the privileged half of statecull: lists and kills connection states\n");
    s.push_str(".SH SYNOPSIS\n.B statecull\\-broker\n[\\fIOPTIONS\\fR]\n");
    s.push_str(&format!(".SH DESCRIPTION\n{}\n", roff(ABOUT)));
    s.push_str(".SH OPTIONS\n");
    for f in FLAGS {
        s.push_str(".TP\n");
        if let Some(c) = f.short {
            s.push_str(&format!("\\fB\\-{c}\\fR, "));
        }
        s.push_str(&format!("\\fB\\-\\-{}\\fR", roff(f.long)));
        if let Some(v) = f.value {
            s.push_str(&format!(" \\fI{}\\fR", roff(v)));
        }
        s.push('\n');
        s.push_str(&roff(f.help));
        if let Some(d) = f.default {
            s.push_str(&format!(" Default: {}.", roff(d)));
        }
        s.push('\n');
    }
    s.push_str(".SH CONFIG FILE\nAll keys are optional; flags override them.\n.PP\n.nf\n");
    for line in CONFIG_EXAMPLE.lines() {
        s.push_str(&roff(line));
        s.push('\n');
    }
    s.push_str(".fi\n.SH NOTES\n");
    for note in NOTES {
        s.push_str(&format!(".PP\n{}\n", roff(note)));
    }
    s.push_str(".SH SEE ALSO\n.BR statecull (8),\n.BR statecull\\-engine (8),\n.BR conntrack (8),\n.BR pfctl (8)\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<OsString> {
        line.split_whitespace().map(OsString::from).collect()
    }

    #[test]
    fn every_flag_is_found_by_its_spellings() {
        for f in FLAGS {
            let mut argv = vec![OsString::from(format!("--{}", f.long))];
            if f.value.is_some() {
                argv.push("x".into());
            }
            let given = parse(argv).unwrap();
            assert_eq!(given.len(), 1);
            assert_eq!(given[0].0.id, f.id);
            if let Some(c) = f.short {
                let mut argv = vec![OsString::from(format!("-{c}"))];
                if f.value.is_some() {
                    argv.push("x".into());
                }
                let given = parse(argv).unwrap();
                assert_eq!(given[0].0.id, f.id);
            }
        }
    }

    #[test]
    fn repeatable_flags_say_so() {
        for f in FLAGS {
            assert_eq!(f.repeatable, f.help.contains("repeatable"), "{}", f.long);
        }
    }

    #[test]
    fn spellings_are_unique() {
        for (i, a) in FLAGS.iter().enumerate() {
            for b in &FLAGS[i + 1..] {
                assert_ne!(a.long, b.long);
                assert_ne!(a.id, b.id);
                assert!(a.short.is_none() || a.short != b.short, "{}", a.long);
            }
        }
    }

    #[test]
    fn values_keep_their_order_and_repeats() {
        let given =
            parse(args("--protect 192.0.2.0/28 -s /run/b.sock --protect 2001:db8::/48")).unwrap();
        assert_eq!(
            values(&given, FlagId::Protect).collect::<Vec<_>>(),
            ["192.0.2.0/28", "2001:db8::/48"]
        );
        assert_eq!(values(&given, FlagId::Socket).collect::<Vec<_>>(), ["/run/b.sock"]);
        assert!(!has(&given, FlagId::Check));
    }

    #[test]
    fn mistakes_are_refused_with_their_flag() {
        let given = parse(args("--socket a -s b")).unwrap();
        assert_eq!(last(&given, FlagId::Socket), Some("b"), "the last one counts");
        let e = parse(args("--socket")).unwrap_err();
        assert!(e.contains("--socket") && e.contains("missing"), "{e}");
        let e = parse(args("--frobnicate")).unwrap_err();
        assert!(e.contains("--frobnicate") && e.ends_with("; see --help"), "{e}");
        let e = parse(args("stray")).unwrap_err();
        assert!(e.contains("stray"), "{e}");
        let e = parse(args("--check=yes")).unwrap_err();
        assert!(e.contains("--check"), "{e}");
    }

    #[test]
    fn help_lists_every_flag_with_its_default() {
        let h = help();
        let words = h.split_whitespace().collect::<Vec<_>>().join(" ");
        for f in FLAGS {
            assert!(h.contains(&f.spelling()), "{} missing from --help", f.long);
            if let Some(d) = f.default {
                assert!(words.contains(&format!("[default: {d}]")), "{d}");
            }
        }
        assert!(h.contains("    -c, --config FILE            TOML configuration"), "{h}");
        assert!(h.lines().all(|l| l.len() <= WIDTH), "{h}");
    }

    #[test]
    fn help_and_man_page_show_this_os_defaults() {
        use statecull_proto::paths;
        let h = help();
        // Words joined by one space: the renderer wraps.
        let words = h.split_whitespace().collect::<Vec<_>>().join(" ");
        let m = man_page();
        let backend = if cfg!(target_os = "freebsd") { "pf" } else { "conntrack" };
        for want in [
            format!("Listening socket. [default: {}]", paths::BROKER_SOCKET),
            format!("pass --config {}.", paths::BROKER_CONFIG),
            "for simulation and tests. pf-model".to_owned(),
            format!("[default: {backend}] -"),
            format!("socket = \"{}\"", paths::BROKER_SOCKET),
            format!("backend = \"{backend}\""),
            "SIGUSR1 to a pf-model broker commits a new filter ruleset".to_owned(),
        ] {
            assert!(words.contains(&want), "{want:?} missing from {h}");
            let roffed = roff(&want);
            let m_words = m.split_whitespace().collect::<Vec<_>>().join(" ");
            if !want.starts_with("[default") && !want.starts_with("Listening") {
                assert!(m_words.contains(&roffed), "{roffed:?} missing from {m}");
            }
        }
        assert!(m.contains(&format!("Default: {}.", roff(paths::BROKER_SOCKET))), "{m}");
        assert!(m.contains(&format!("Default: {backend}.")), "{m}");
        let other_os = if cfg!(target_os = "freebsd") { paths::LINUX } else { paths::FREEBSD };
        // Quoted, bracketed or after a space: FreeBSD's /var/run/statecull contains Linux's
        // /run/statecull.
        for wrong in [
            format!("[default: {}]", other_os.broker_socket),
            format!("\"{}\"", other_os.broker_socket),
            format!(" {}", other_os.broker_config),
        ] {
            assert!(!words.contains(&wrong), "{wrong:?} in {h}");
            assert!(!m.contains(&roff(&wrong)), "{wrong:?} in {m}");
        }
    }

    #[test]
    fn the_man_page_has_every_flag() {
        let m = man_page();
        assert!(m.starts_with(".TH STATECULL\\-BROKER 8 "), "{m}");
        for f in FLAGS {
            assert!(m.contains(&format!("\\fB\\-\\-{}\\fR", roff(f.long))), "{}", f.long);
        }
        assert!(m.contains("\\fB\\-c\\fR, \\fB\\-\\-config\\fR \\fIFILE\\fR"), "{m}");
        // No line may start with a dot or quote that is not a macro of ours.
        for l in m.lines() {
            if l.starts_with('.') {
                let mac = l.split_whitespace().next().unwrap();
                assert!(
                    [".TH", ".SH", ".B", ".TP", ".PP", ".nf", ".fi", ".BR"].contains(&mac),
                    "{l}"
                );
            }
            assert!(!l.starts_with('\''), "{l}");
        }
    }
}
