//! Tidy: the invariants of the tree that no compiler checks, as tests that fail when broken
//! (`cargo test -p xtask`, and `cargo xtask tidy`).
//!
//! * the root broker's normal dependencies contain no async runtime, no argument parser
//!   framework, none of the policy, engine, CLI, client or control crates, and its default
//!   build carries no simulator (the pf model) or fake backend;
//! * the engine does not depend on the operator's CLI;
//! * `unsafe` appears only in the FreeBSD syscall layers (`crates/pf/src/sys.rs`,
//!   `sandbox/src/freebsd/sys.rs`);
//! * the engine connects Unix sockets by path only in its dialer (`crates/engine/src/dial.rs`),
//!   the one place that still works after confinement (Capsicum refuses `connect` by path);
//! * every path ARCHITECTURE.md's code map names exists;
//! * no source file is longer than 1,500 lines outside its unit-test module.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::{Result, msg, root};

/// Crates the root broker must never link (directly or not).
const BROKER_FORBIDDEN: &[&str] = &[
    "tokio",
    "clap",
    "statecull-policy",
    "statecull-engine",
    "statecull-cli",
    "statecull-client",
    "statecull-control",
];
/// Cargo features of the broker that must stay off by default: test and simulation code.
const BROKER_NOT_DEFAULT: &[&str] = &["model", "fake"];
/// The files allowed to contain `unsafe`: the FreeBSD syscall layers.
const UNSAFE_ALLOWED: &[&str] = &["crates/pf/src/sys.rs", "sandbox/src/freebsd/sys.rs"];
/// The engine's sources, and the one file among them allowed to connect a socket by path.
const ENGINE_SRC: &str = "crates/engine/src";
const ENGINE_DIALER: &str = "crates/engine/src/dial.rs";
/// Ways to connect a socket by path (or to a broker, which does), outside the dialer.
const PATH_CONNECTS: &[&str] = &[
    "UnixStream::connect",
    "UnixDatagram::connect",
    "UnixStream::connect_addr",
    "AsyncBrokerClient::connect",
    "BrokerClient::connect",
    "connect_unix_at",
    "connectat",
];
/// Longest source file, not counting its unit-test module.
const MAX_LINES: usize = 1500;

/// `cargo tree` of one package as cargo would build it alone (features resolved for that
/// package only, as its release build is), one line per crate or crate feature.
fn tree(package: &str, edges: &str) -> Result<Vec<String>> {
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["tree", "--locked", "-e", edges, "-p", package, "--prefix", "none"])
        .current_dir(root())
        .output()
        .map_err(|e| msg(format!("cargo tree: {e}")))?;
    if !out.status.success() {
        return Err(msg(format!(
            "cargo tree -p {package} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect())
}

/// Crate names in `cargo tree` lines ("name v1.2.3 (path) (*)").
fn crate_names(lines: &[String]) -> BTreeSet<String> {
    lines.iter().filter_map(|l| l.split_whitespace().next().map(str::to_owned)).collect()
}

/// Problems with the broker's normal dependencies (from `cargo tree`) and with its manifest
/// (`cargo metadata --no-deps`): the model and the fake backend must stay optional, off by
/// default, and no dependency may turn them on unconditionally.
pub fn broker_problems(deps: &BTreeSet<String>, manifest: &serde_json::Value) -> Vec<String> {
    let mut out: Vec<String> = BROKER_FORBIDDEN
        .iter()
        .filter(|f| deps.contains(**f))
        .map(|f| format!("statecull-broker depends on {f} (normal dependencies, transitively)"))
        .collect();
    let list = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    };
    let default = list(&manifest["features"]["default"]);
    for f in BROKER_NOT_DEFAULT {
        if default.iter().any(|d| d == f || d.ends_with(&format!("/{f}"))) {
            out.push(format!("statecull-broker turns on feature {f} by default"));
        }
    }
    for dep in manifest["dependencies"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let always = !dep["optional"].as_bool().unwrap_or(false) && dep["kind"].is_null();
        let features = list(&dep["features"]);
        if always && features.iter().any(|f| BROKER_NOT_DEFAULT.contains(&f.as_str())) {
            out.push(format!(
                "statecull-broker always turns on {features:?} of {}",
                dep["name"].as_str().unwrap_or("?")
            ));
        }
    }
    out
}

/// The broker's manifest as cargo reads it.
fn broker_manifest() -> Result<serde_json::Value> {
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["metadata", "--format-version", "1", "--no-deps", "--locked"])
        .current_dir(root())
        .output()
        .map_err(|e| msg(format!("cargo metadata: {e}")))?;
    if !out.status.success() {
        return Err(msg(format!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| msg(format!("cargo metadata: {e}")))?;
    meta["packages"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "statecull-broker"))
        .cloned()
        .ok_or_else(|| msg("no statecull-broker package"))
}

/// Problems with the engine's dependencies.
pub fn engine_problems(deps: &BTreeSet<String>) -> Vec<String> {
    deps.contains("statecull-cli")
        .then(|| "statecull-engine depends on statecull-cli (the operator tool)".to_owned())
        .into_iter()
        .collect()
}

/// Every Rust source file of the tree (not build output), relative to the root.
fn rust_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            let name = e.file_name();
            let name = name.to_string_lossy();
            if p.is_dir() {
                if name == "target"
                    || name.starts_with('.')
                    || name == "corpus"
                    || name == "artifacts"
                {
                    continue;
                }
                todo.push(p);
            } else if name.ends_with(".rs") {
                out.push(p.strip_prefix(root).unwrap_or(&p).to_path_buf());
            }
        }
    }
    out.sort();
    out
}

/// A line with its comment and the contents of its string literals taken out (enough to
/// find a keyword in code; raw strings and block comments are not used for `unsafe` here).
fn code_of(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut in_str = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if in_str {
            match c {
                '\\' => {
                    chars.next();
                }
                '"' => {
                    in_str = false;
                    out.push('"');
                }
                _ => {}
            }
            continue;
        }
        match c {
            '"' => {
                in_str = true;
                out.push('"');
            }
            '/' if chars.peek() == Some(&'/') => break,
            _ => out.push(c),
        }
    }
    out
}

fn has_unsafe(code: &str) -> bool {
    code.match_indices("unsafe").any(|(i, _)| {
        let before = code[..i].chars().next_back();
        let after = code[i + "unsafe".len()..].chars().next();
        let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
        !word(before) && !word(after)
    })
}

/// Files other than [`UNSAFE_ALLOWED`] that contain `unsafe` code, with a line each.
pub fn unsafe_problems(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for f in rust_files(root) {
        if UNSAFE_ALLOWED.iter().any(|a| f == Path::new(a)) {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(root.join(&f)) else { continue };
        if let Some((n, _)) = text.lines().enumerate().find(|(_, l)| has_unsafe(&code_of(l))) {
            out.push(format!(
                "{}:{}: `unsafe` outside {}",
                f.display(),
                n + 1,
                UNSAFE_ALLOWED.join(", ")
            ));
        }
    }
    out
}

/// The 0-based lines of a file's unit-test module (`#[cfg(test)]` then `mod tests`, to its
/// closing brace, counted in code), or an empty range.
fn test_module(text: &str) -> std::ops::Range<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines_outside_tests(text);
    let mut depth = 0usize;
    let mut opened = false;
    for (i, line) in lines.iter().enumerate().skip(start) {
        for c in code_of(line).chars() {
            match c {
                '{' => {
                    depth += 1;
                    opened = true;
                }
                '}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        if opened && depth == 0 {
            return start..i + 1;
        }
    }
    start..lines.len()
}

/// Path connects in one engine source file `f` (its text), outside its unit-test module.
fn connect_problems_in(f: &Path, text: &str) -> Vec<String> {
    if f == Path::new(ENGINE_DIALER) {
        return Vec::new();
    }
    let mut out = Vec::new();
    let tests = test_module(text);
    for (n, line) in text.lines().enumerate() {
        if tests.contains(&n) {
            continue;
        }
        let code = code_of(line);
        if let Some(p) = PATH_CONNECTS.iter().find(|p| code.contains(**p)) {
            out.push(format!(
                "{}:{}: `{p}` outside {ENGINE_DIALER} (after confinement only the dialer can \
                 reach a socket: register the path with it and call `Dialer::connect`)",
                f.display(),
                n + 1
            ));
        }
    }
    out
}

/// Engine source files that connect a socket by path outside the dialer.
pub fn connect_problems(root: &Path) -> Vec<String> {
    rust_files(root)
        .into_iter()
        .filter(|f| f.starts_with(ENGINE_SRC))
        .flat_map(|f| {
            let text = std::fs::read_to_string(root.join(&f)).unwrap_or_default();
            connect_problems_in(&f, &text)
        })
        .collect()
}

/// The code map's rows: (path, other backticked names in the row).
fn code_map_rows(architecture: &str) -> Vec<(String, Vec<String>)> {
    let mut rows = Vec::new();
    let mut in_map = false;
    for line in architecture.lines() {
        if line.starts_with("## ") {
            in_map = line.trim() == "## Code map";
            continue;
        }
        if !in_map || !line.starts_with("| `") {
            continue;
        }
        let ticked: Vec<String> = line.split('`').skip(1).step_by(2).map(str::to_owned).collect();
        if let Some((first, rest)) = ticked.split_first() {
            rows.push((first.clone(), rest.to_vec()));
        }
    }
    rows
}

/// Does `dir` (recursively) hold a file or directory whose path ends with `name`?
fn holds(dir: &Path, name: &str) -> bool {
    let name = name.trim_end_matches('/');
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.ends_with(name) {
                return true;
            }
            if p.is_dir() && e.file_name() != "target" {
                todo.push(p);
            }
        }
    }
    false
}

/// Paths in ARCHITECTURE.md's code map that do not exist: each row's path, and the source
/// files and directories (names ending in `.rs` or `/`) the row says are in it.
pub fn code_map_problems(root: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(root.join("ARCHITECTURE.md"))
        .map_err(|e| msg(format!("ARCHITECTURE.md: {e}")))?;
    let rows = code_map_rows(&text);
    if rows.is_empty() {
        return Ok(vec!["ARCHITECTURE.md has no code map table under \"## Code map\"".into()]);
    }
    let mut out = Vec::new();
    for (path, names) in rows {
        let dir = root.join(&path);
        if !dir.exists() {
            out.push(format!("code map: {path} does not exist"));
            continue;
        }
        for n in names.iter().filter(|n| {
            (n.ends_with(".rs") || n.ends_with('/'))
                && !n.contains('*')
                && !n.contains(' ')
                && !n.starts_with("cargo ")
        }) {
            if !holds(&dir, n) {
                out.push(format!("code map: the {path} row names {n}, which is not in {path}"));
            }
        }
    }
    Ok(out)
}

/// Lines of a source file before its unit-test module (`#[cfg(test)]` then `mod tests`).
fn lines_outside_tests(text: &str) -> usize {
    let lines: Vec<&str> = text.lines().collect();
    for (i, w) in lines.windows(2).enumerate() {
        if w[0].trim() == "#[cfg(test)]" && w[1].trim_start().starts_with("mod tests") {
            return i;
        }
    }
    lines.len()
}

/// Source files (under a `src/` directory) longer than [`MAX_LINES`] outside their tests.
pub fn length_problems(root: &Path) -> Vec<String> {
    rust_files(root)
        .into_iter()
        .filter(|f| f.components().any(|c| c.as_os_str() == "src"))
        .filter_map(|f| {
            let text = std::fs::read_to_string(root.join(&f)).ok()?;
            let n = lines_outside_tests(&text);
            (n > MAX_LINES).then(|| {
                format!("{}: {n} lines outside its unit tests (at most {MAX_LINES})", f.display())
            })
        })
        .collect()
}

fn broker_now() -> Result<Vec<String>> {
    let deps = crate_names(&tree("statecull-broker", "normal")?);
    Ok(broker_problems(&deps, &broker_manifest()?))
}

fn engine_now() -> Result<Vec<String>> {
    Ok(engine_problems(&crate_names(&tree("statecull-engine", "normal")?)))
}

/// Every rule; the problems found (empty: tidy).
pub fn all_problems() -> Result<Vec<String>> {
    let root = root();
    let mut out = broker_now()?;
    out.extend(engine_now()?);
    out.extend(unsafe_problems(&root));
    out.extend(connect_problems(&root));
    out.extend(code_map_problems(&root)?);
    out.extend(length_problems(&root));
    Ok(out)
}

/// `cargo xtask tidy`.
pub fn tidy() -> Result<()> {
    let problems = all_problems()?;
    if problems.is_empty() {
        println!("tidy: every rule holds");
        return Ok(());
    }
    for p in &problems {
        eprintln!("tidy: {p}");
    }
    Err(msg(format!("{} tidy problem(s)", problems.len())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_broker_links_no_runtime_no_policy_and_no_simulator() {
        let problems = broker_now().unwrap_or_else(|e| panic!("{e}"));
        assert!(problems.is_empty(), "{problems:#?}");
    }

    #[test]
    fn the_engine_does_not_depend_on_the_cli() {
        let problems = engine_now().unwrap_or_else(|e| panic!("{e}"));
        assert!(problems.is_empty(), "{problems:#?}");
    }

    #[test]
    fn dependency_rules_catch_what_they_forbid() {
        let deps: BTreeSet<String> =
            ["statecull-proto", "tokio", "statecull-pf"].map(String::from).into();
        let manifest = serde_json::json!({
            "features": { "default": ["model"], "model": ["statecull-pf/model"] },
            "dependencies": [
                { "name": "statecull-pf", "kind": null, "optional": false, "features": ["model"] },
                { "name": "statecull-pf", "kind": "dev", "optional": false, "features": ["model"] },
            ],
        });
        let p = broker_problems(&deps, &manifest);
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p.iter().any(|l| l.contains("depends on tokio")), "{p:?}");
        assert!(p.iter().any(|l| l.contains("feature model by default")), "{p:?}");
        assert!(p.iter().any(|l| l.contains("always turns on")), "{p:?}");
        assert_eq!(engine_problems(&["statecull-cli".to_owned()].into()).len(), 1);
        assert!(
            crate_names(&["tokio v1.0.0".to_owned(), "x v0.1.0 (/p) (*)".to_owned()]).contains("x")
        );
    }

    #[test]
    fn unsafe_only_in_the_freebsd_layer() {
        let problems = unsafe_problems(&root());
        assert!(problems.is_empty(), "{problems:#?}");
    }

    #[test]
    fn the_engine_connects_by_path_only_in_its_dialer() {
        let problems = connect_problems(&root());
        assert!(problems.is_empty(), "{problems:#?}");
        // The rule looks at the real files: the dialer is among them and does connect.
        let dialer = std::fs::read_to_string(root().join(ENGINE_DIALER)).unwrap_or_default();
        assert!(dialer.contains("UnixStream::connect(path)"));
    }

    #[test]
    fn path_connects_outside_the_dialer_are_found() {
        let f = Path::new("crates/engine/src/sources.rs");
        let bad = "fn f() {\n    let s = UnixStream::connect(path).await?;\n}\n";
        let p = connect_problems_in(f, bad);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("crates/engine/src/sources.rs:2: `UnixStream::connect`"));
        let client = "let c = AsyncBrokerClient::connect(&p, NAME, None).await;\n";
        assert_eq!(connect_problems_in(f, client).len(), 1);
        let at = "let fd = statecull_sandbox::freebsd::connect_unix_at(d, n)?;\n";
        assert_eq!(connect_problems_in(f, at).len(), 1);
        // Comments, strings, unit tests and the dialer itself are not violations.
        let fine = "// UnixStream::connect is for the dialer\nlet m = \"UnixStream::connect\";\n\
                    #[cfg(test)]\nmod tests {\n    let s = UnixStream::connect(p);\n}\n";
        assert!(connect_problems_in(f, fine).is_empty());
        // Code after the test module is checked again.
        let after = format!("{fine}pub fn g() {{ UnixStream::connect(p); }}\n");
        assert_eq!(connect_problems_in(f, &after).len(), 1, "{after}");
        assert!(connect_problems_in(Path::new(ENGINE_DIALER), bad).is_empty());
    }

    #[test]
    fn the_code_map_names_only_what_exists() {
        let problems = code_map_problems(&root()).unwrap_or_else(|e| panic!("{e}"));
        assert!(problems.is_empty(), "{problems:#?}");
    }

    #[test]
    fn no_source_file_is_too_long() {
        let problems = length_problems(&root());
        assert!(problems.is_empty(), "{problems:#?}");
    }

    // The rules' own logic, on made-up inputs: each one can fail.

    /// The keyword, spelt so that this file does not contain it.
    const KW: &str = concat!("uns", "afe");

    #[test]
    fn unsafe_is_found_in_code_not_in_comments_strings_or_lint_names() {
        assert!(has_unsafe(&code_of(&format!("    let x = {KW} {{ f() }};"))));
        assert!(has_unsafe(&code_of(&format!("{KW} fn f() {{}}"))));
        assert!(!has_unsafe(&code_of(&format!("#![forbid({KW}_code)]"))));
        assert!(!has_unsafe(&code_of(&format!("// {KW} is only in sys.rs"))));
        assert!(!has_unsafe(&code_of(&format!("let s = \"{KW}\";"))));
        assert!(has_unsafe(&code_of(&format!("let s = \"a\\\"b\"; {KW} {{ g() }}"))));
    }

    #[test]
    fn test_modules_do_not_count_toward_length() {
        let text =
            format!("{}#[cfg(test)]\nmod tests {{\n{}}}\n", "x\n".repeat(10), "y\n".repeat(5000));
        assert_eq!(lines_outside_tests(&text), 10);
        assert_eq!(lines_outside_tests(&"z\n".repeat(1600)), 1600);
    }

    #[test]
    fn code_map_rows_are_read_from_the_table() {
        let text = "# A\n## Code map\n| path | what |\n|---|---|\n| `crates/x` | codec (`codec.rs`), `linux/` |\n## Next\n| `not/a/row` | |\n";
        let rows = code_map_rows(text);
        assert_eq!(rows, vec![("crates/x".to_owned(), vec!["codec.rs".into(), "linux/".into()])]);
    }
}
