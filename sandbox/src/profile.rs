//! The seccomp allow-list format (`profiles/seccomp/*.allow`): a parser shared by `build.rs`
//! (which turns each file into Rust at build time, so a misspelt syscall or constant is a
//! compile error) and by the tests (which check that the compiled filter says exactly what the
//! file says).
//!
//! Pure `std`, no dependencies: `build.rs` includes this file with `#[path]`.
//!
//! # Format
//!
//! ```text
//! # Comments start with '#' and run to the end of the line; blank lines are ignored.
//! default: errno EPERM            # or: default: kill-process   (exactly once, first)
//!
//! NAME [@TAG]... [CONDITION]... [=> errno ERRNO]   # who needs it and why (required)
//! ```
//!
//! * `NAME` is a syscall name as in `libc::SYS_NAME` (`read`, `epoll_wait`, …).
//! * `@TAG` limits the line: `@x86_64` / `@aarch64` compile it only on that architecture
//!   (some syscalls exist on one only); `@readable-paths` only when the plan gives the
//!   process files to read (`Plan::readable_paths` non-empty).
//! * `CONDITION` is `argN OP VALUE` or `argN & MASK == VALUE`, N in 0..=5, OP one of
//!   `== != < <= > >=`. `VALUE`/`MASK` are a number (`12`, `0x40`) or libc constants joined by
//!   `|` without spaces (`AF_UNIX`, `O_ACCMODE|O_CREAT`). Arguments are compared as 32-bit
//!   values (the low half of the register): every constrained argument in our profiles is a C
//!   `int`/`unsigned int`, which the kernel truncates to 32 bits itself. All conditions on a
//!   line must hold (AND); several lines for the same syscall are alternatives (OR).
//! * `=> errno ERRNO`: the syscall does not run and fails with that errno (e.g. `clone3 =>
//!   errno ENOSYS` makes glibc fall back to `clone`, whose flags *can* be checked). Such a
//!   line takes no conditions and must be the only line for its syscall.
//! * The comment is mandatory: every allowed syscall says who needs it.

use std::collections::BTreeMap;
use std::fmt;

/// What happens to a syscall that no line allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DefaultAction {
    /// The syscall fails with this errno (by name, e.g. `EPERM`).
    Errno(String),
    /// The whole process is killed (`SECCOMP_RET_KILL_PROCESS`, seen as SIGSYS).
    KillProcess,
}

/// A tag limiting where a line applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tag {
    /// Only on x86_64.
    X86_64,
    /// Only on aarch64.
    Aarch64,
    /// Only when the plan names paths the process may read.
    ReadablePaths,
}

impl Tag {
    fn parse(s: &str) -> Option<Tag> {
        match s {
            "@x86_64" => Some(Tag::X86_64),
            "@aarch64" => Some(Tag::Aarch64),
            "@readable-paths" => Some(Tag::ReadablePaths),
            _ => None,
        }
    }

    /// The tag as written in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            Tag::X86_64 => "@x86_64",
            Tag::Aarch64 => "@aarch64",
            Tag::ReadablePaths => "@readable-paths",
        }
    }
}

/// A comparison operator of a condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    /// `argN & MASK == VALUE`
    MaskedEq,
}

/// A number or a `|`-joined list of libc constant names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Number(u32),
    /// Constant names (`libc::NAME`), ORed together.
    Symbols(Vec<String>),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Number(n) => write!(f, "{n:#x}"),
            Value::Symbols(s) => f.write_str(&s.join("|")),
        }
    }
}

/// One condition on one argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Condition {
    /// Argument index, 0..=5.
    pub arg: u8,
    pub op: Op,
    /// The mask of `MaskedEq`, else `None`.
    pub mask: Option<Value>,
    pub value: Value,
}

/// What a matching line does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Allow,
    /// Fail with this errno (by name).
    Errno(String),
}

/// One syscall line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    /// 1-based line number in the file.
    pub line: usize,
    pub name: String,
    pub tags: Vec<Tag>,
    pub conditions: Vec<Condition>,
    pub action: Action,
    pub reason: String,
}

/// A parsed allow-list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Profile {
    pub default: DefaultAction,
    pub lines: Vec<Line>,
}

/// A malformed file: where and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.message)
    }
}

impl std::error::Error for ParseError {}

fn is_ident(s: &str) -> bool {
    !s.is_empty()
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !s.starts_with(|c: char| c.is_ascii_digit())
}

fn parse_value(s: &str) -> Result<Value, String> {
    let number = if let Some(hex) = s.strip_prefix("0x") {
        Some(u64::from_str_radix(hex, 16).map_err(|_| format!("bad hexadecimal number {s:?}")))
    } else if s.starts_with(|c: char| c.is_ascii_digit()) {
        Some(s.parse::<u64>().map_err(|_| format!("bad number {s:?}")))
    } else {
        None
    };
    if let Some(n) = number {
        let n = n?;
        return u32::try_from(n)
            .map(Value::Number)
            .map_err(|_| format!("{s} does not fit the 32 bits that are compared"));
    }
    let symbols: Vec<String> = s.split('|').map(str::to_owned).collect();
    for sym in &symbols {
        if !is_ident(sym) || !sym.starts_with(|c: char| c.is_ascii_uppercase()) {
            return Err(format!(
                "{sym:?} is neither a number nor a libc constant name (like AF_UNIX; join several with '|', no spaces)"
            ));
        }
    }
    Ok(Value::Symbols(symbols))
}

fn parse_arg(s: &str) -> Result<u8, String> {
    match s.strip_prefix("arg").and_then(|n| n.parse::<u8>().ok()) {
        Some(n) if n <= 5 => Ok(n),
        _ => Err(format!("expected an argument arg0..arg5, found {s:?}")),
    }
}

fn parse_op(s: &str) -> Result<Op, String> {
    Ok(match s {
        "==" => Op::Eq,
        "!=" => Op::Ne,
        "<" => Op::Lt,
        "<=" => Op::Le,
        ">" => Op::Gt,
        ">=" => Op::Ge,
        _ => return Err(format!("expected a comparison (== != < <= > >=), found {s:?}")),
    })
}

fn parse_errno(s: Option<&&str>) -> Result<String, String> {
    match s {
        Some(e) if is_ident(e) && e.starts_with('E') => Ok((*e).to_owned()),
        Some(e) => Err(format!("{e:?} is not an errno name (like EPERM)")),
        None => Err("errno needs a name (like EPERM)".into()),
    }
}

/// Parse one allow-list. `file` is used in error messages only.
pub fn parse(file: &str, text: &str) -> Result<Profile, ParseError> {
    let err = |line: usize, message: String| ParseError { file: file.to_owned(), line, message };
    let mut default: Option<DefaultAction> = None;
    let mut lines: Vec<Line> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let (code, reason) = match raw.split_once('#') {
            Some((c, r)) => (c.trim(), Some(r.trim())),
            None => (raw.trim(), None),
        };
        if code.is_empty() {
            continue;
        }
        if let Some(rest) = code.strip_prefix("default:") {
            if default.is_some() {
                return Err(err(n, "a second `default:` line".into()));
            }
            if !lines.is_empty() {
                return Err(err(n, "`default:` must come before the first syscall".into()));
            }
            let words: Vec<&str> = rest.split_whitespace().collect();
            default = Some(match words.as_slice() {
                ["kill-process"] => DefaultAction::KillProcess,
                ["errno", e] => DefaultAction::Errno(parse_errno(Some(e)).map_err(|m| err(n, m))?),
                _ => {
                    return Err(err(
                        n,
                        format!(
                            "expected `default: errno ERRNO` or `default: kill-process`, found {rest:?}"
                        ),
                    ));
                }
            });
            continue;
        }
        if default.is_none() {
            return Err(err(
                n,
                "the file must start with `default: errno EPERM` or `default: kill-process`".into(),
            ));
        }
        let reason = match reason {
            Some(r) if !r.is_empty() => r.to_owned(),
            _ => {
                return Err(err(
                    n,
                    "every syscall needs a comment saying who needs it and why (`# ...`)".into(),
                ));
            }
        };
        let words: Vec<&str> = code.split_whitespace().collect();
        let Some((name, mut rest)) = words.split_first() else { continue };
        if !is_ident(name) || name.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(err(n, format!("{name:?} is not a syscall name")));
        }
        let mut tags = Vec::new();
        while let Some((t, r)) = rest.split_first() {
            if !t.starts_with('@') {
                break;
            }
            let tag = Tag::parse(t).ok_or_else(|| {
                err(n, format!("unknown tag {t:?} (known: @x86_64, @aarch64, @readable-paths)"))
            })?;
            if tags.contains(&tag) {
                return Err(err(n, format!("tag {t} given twice")));
            }
            tags.push(tag);
            rest = r;
        }
        if tags.contains(&Tag::X86_64) && tags.contains(&Tag::Aarch64) {
            return Err(err(n, "a line cannot be for both @x86_64 and @aarch64".into()));
        }
        let mut conditions = Vec::new();
        let mut action = Action::Allow;
        while !rest.is_empty() {
            match rest {
                ["=>", "errno", e, tail @ ..] => {
                    action = Action::Errno(parse_errno(Some(e)).map_err(|m| err(n, m))?);
                    if !tail.is_empty() {
                        return Err(err(
                            n,
                            format!("unexpected {:?} after the errno", tail.join(" ")),
                        ));
                    }
                    rest = &[];
                }
                ["=>", ..] => {
                    return Err(err(n, "expected `=> errno ERRNO`".into()));
                }
                [arg, "&", mask, "==", value, tail @ ..] => {
                    let arg = parse_arg(arg).map_err(|m| err(n, m))?;
                    conditions.push(Condition {
                        arg,
                        op: Op::MaskedEq,
                        mask: Some(parse_value(mask).map_err(|m| err(n, m))?),
                        value: parse_value(value).map_err(|m| err(n, m))?,
                    });
                    rest = tail;
                }
                [arg, "&", ..] => {
                    return Err(err(
                        n,
                        format!(
                            "a masked condition is `{arg} & MASK == VALUE` (only == after a mask)"
                        ),
                    ));
                }
                [arg, op, value, tail @ ..] => {
                    let arg = parse_arg(arg).map_err(|m| err(n, m))?;
                    let op = parse_op(op).map_err(|m| err(n, m))?;
                    conditions.push(Condition {
                        arg,
                        op,
                        mask: None,
                        value: parse_value(value).map_err(|m| err(n, m))?,
                    });
                    rest = tail;
                }
                _ => {
                    return Err(err(
                        n,
                        format!(
                            "cannot read {:?}: expected `argN OP VALUE`, `argN & MASK == VALUE` or `=> errno ERRNO`",
                            rest.join(" ")
                        ),
                    ));
                }
            }
        }
        if matches!(action, Action::Errno(_)) && !conditions.is_empty() {
            return Err(err(n, "a `=> errno` line takes no conditions".into()));
        }
        lines.push(Line { line: n, name: (*name).to_owned(), tags, conditions, action, reason });
    }
    let Some(default) = default else {
        return Err(err(
            1,
            "no `default:` line (`default: errno EPERM` or `default: kill-process`)".into(),
        ));
    };
    check_consistency(file, &lines)?;
    Ok(Profile { default, lines })
}

/// Lines for the same syscall must make sense together: an unconstrained line already allows
/// every call (a second line would be dead or a mistake), and an errno line is the syscall's
/// only line. Lines for different architectures never meet, so they are checked per
/// architecture; `@readable-paths` lines meet the untagged ones.
fn check_consistency(file: &str, lines: &[Line]) -> Result<(), ParseError> {
    for arch in [Tag::X86_64, Tag::Aarch64] {
        let other = if arch == Tag::X86_64 { Tag::Aarch64 } else { Tag::X86_64 };
        let mut by_name: BTreeMap<&str, Vec<&Line>> = BTreeMap::new();
        for l in lines.iter().filter(|l| !l.tags.contains(&other)) {
            by_name.entry(l.name.as_str()).or_default().push(l);
        }
        for (name, group) in by_name {
            if group.len() < 2 {
                continue;
            }
            let second = group[1].line;
            if group.iter().any(|l| matches!(l.action, Action::Errno(_))) {
                return Err(ParseError {
                    file: file.to_owned(),
                    line: second,
                    message: format!(
                        "{name} has a `=> errno` line and another line; an errno line must be the only one for its syscall"
                    ),
                });
            }
            if let Some(free) = group.iter().find(|l| l.conditions.is_empty()) {
                return Err(ParseError {
                    file: file.to_owned(),
                    line: second,
                    message: format!(
                        "{name} has several lines and line {} allows it without conditions, so the others are dead or a mistake (keep only conditional lines, or one line without conditions)",
                        free.line
                    ),
                });
            }
        }
    }
    Ok(())
}

impl Line {
    /// Whether this line is compiled for `arch` (`std::env::consts::ARCH` spelling) and a
    /// plan with or without readable paths.
    pub fn applies(&self, arch: &str, readable_paths: bool) -> bool {
        self.tags.iter().all(|t| match t {
            Tag::X86_64 => arch == "x86_64",
            Tag::Aarch64 => arch == "aarch64",
            Tag::ReadablePaths => readable_paths,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<Profile, ParseError> {
        parse("t.allow", text)
    }

    #[test]
    fn reads_a_small_profile() {
        let prof = p("# top\n\ndefault: errno EPERM\nread # everyone\nsocket arg0 == AF_UNIX # link\nsocket arg0 == AF_NETLINK arg2 == NETLINK_NETFILTER # ct\nclone3 => errno ENOSYS # fallback\nopenat @readable-paths arg2 & O_ACCMODE|O_CREAT == 0 # files\npoll @x86_64 # loop\n")
            .unwrap();
        assert_eq!(prof.default, DefaultAction::Errno("EPERM".into()));
        assert_eq!(prof.lines.len(), 6);
        assert_eq!(prof.lines[0].line, 4);
        assert_eq!(prof.lines[2].conditions.len(), 2);
        assert_eq!(prof.lines[2].conditions[1].arg, 2);
        assert_eq!(prof.lines[3].action, Action::Errno("ENOSYS".into()));
        let masked = &prof.lines[4].conditions[0];
        assert_eq!(masked.op, Op::MaskedEq);
        assert_eq!(masked.mask, Some(Value::Symbols(vec!["O_ACCMODE".into(), "O_CREAT".into()])));
        assert_eq!(masked.value, Value::Number(0));
        assert!(prof.lines[4].applies("x86_64", true));
        assert!(!prof.lines[4].applies("x86_64", false));
        assert!(prof.lines[5].applies("x86_64", false));
        assert!(!prof.lines[5].applies("aarch64", false));
        assert_eq!(
            p("default: kill-process\nread # r\n").unwrap().default,
            DefaultAction::KillProcess
        );
    }

    #[test]
    fn malformed_lines_name_their_line() {
        let cases: &[(&str, usize, &str)] = &[
            ("read # r\n", 1, "must start with"),
            ("default: errno EPERM\nread\n", 2, "needs a comment"),
            ("default: errno EPERM\nread #   \n", 2, "needs a comment"),
            ("default: deny\n", 1, "expected `default:"),
            ("default: errno EPERM\ndefault: kill-process\n", 2, "second"),
            ("default: errno EPERM\nread # r\ndefault: errno EPERM\n", 3, "second"),
            ("default: errno EPERM\nRead # r\n", 2, "not a syscall name"),
            ("default: errno EPERM\nsocket arg6 == 1 # r\n", 2, "arg0..arg5"),
            ("default: errno EPERM\nsocket arg0 = 1 # r\n", 2, "comparison"),
            ("default: errno EPERM\nsocket arg0 == af_unix # r\n", 2, "libc constant"),
            ("default: errno EPERM\nsocket arg0 == 0x1ffffffff # r\n", 2, "32 bits"),
            ("default: errno EPERM\nsocket arg0 == 12abc # r\n", 2, "bad number"),
            ("default: errno EPERM\nsocket arg0 == AF_UNIX | AF_INET # r\n", 2, "cannot read"),
            ("default: errno EPERM\nsocket arg0 & 3 != 1 # r\n", 2, "only =="),
            ("default: errno EPERM\nsocket arg0 # r\n", 2, "cannot read"),
            ("default: errno EPERM\nsocket @linux # r\n", 2, "unknown tag"),
            ("default: errno EPERM\nsocket @x86_64 @x86_64 # r\n", 2, "twice"),
            ("default: errno EPERM\nsocket @x86_64 @aarch64 # r\n", 2, "both"),
            ("default: errno EPERM\nclone3 => errno enosys # r\n", 2, "errno name"),
            ("default: errno EPERM\nclone3 => ENOSYS # r\n", 2, "=> errno ERRNO"),
            ("default: errno EPERM\nclone3 arg0 == 1 => errno ENOSYS # r\n", 2, "no conditions"),
            ("default: errno EPERM\nclone3 => errno ENOSYS extra # r\n", 2, "after the errno"),
            ("default: errno EPERM\nread # a\nread # b\n", 3, "without conditions"),
            ("default: errno EPERM\nsocket arg0 == 1 # a\nsocket # b\n", 3, "line 3 allows it"),
            ("default: errno EPERM\nclone3 => errno ENOSYS # a\nclone3 # b\n", 3, "errno line"),
            ("# only a comment\n", 1, "no `default:`"),
        ];
        for (text, line, needle) in cases {
            let e = p(text).expect_err(text);
            assert_eq!(e.line, *line, "{text:?}: {e}");
            assert!(e.message.contains(needle), "{text:?}: {e}");
            assert!(e.to_string().starts_with(&format!("t.allow:{line}: ")), "{e}");
        }
    }

    #[test]
    fn per_architecture_lines_do_not_collide() {
        // `poll` for x86_64 and an aarch64 alternative never meet in one filter.
        let prof = p("default: errno EPERM\nfoo @x86_64 # a\nfoo @aarch64 # b\n").unwrap();
        assert_eq!(prof.lines.len(), 2);
        // An untagged and an arch-tagged unconstrained line do.
        assert!(p("default: errno EPERM\nfoo # a\nfoo @x86_64 # b\n").is_err());
        // Constrained alternatives are fine.
        assert!(
            p("default: errno EPERM\nfoo arg0 == 1 # a\nfoo @readable-paths arg0 == 2 # b\n")
                .is_ok()
        );
    }
}
