//! `statecull import pfsense|opnsense CONFIG.xml`: the translation is `statecull-import`'s
//! (pure); this file reads the configuration, prints the warnings on standard error, checks
//! that the result loads as a policy, and writes it to standard output or, atomically and
//! never over an existing file unless asked, to `--output FILE`.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use statecull_import::{Import, System, import};

use crate::cli::CliError;
use crate::output::{Output, to_stderr};

/// What the command line asked for.
#[derive(Debug)]
pub struct ImportArgs {
    pub system: System,
    pub config: PathBuf,
    pub output: Option<PathBuf>,
    pub force: bool,
    pub strict: bool,
}

pub fn run(args: &ImportArgs, out: &mut Output) -> Result<(), CliError> {
    let text = fs::read_to_string(&args.config)
        .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", args.config.display())))?;
    let name = args.config.display().to_string();
    let result = import(args.system, &text, &name).map_err(|e| CliError::Import(e.to_string()))?;
    for w in &result.warnings {
        to_stderr(format_args!("statecull import: {w}\n"));
    }
    let serious = result.serious().count();
    if args.strict && serious > 0 {
        return Err(CliError::Import(format!(
            "{serious} warning(s) and --strict: no policy written (without --strict the \
             policy lists them in its header)"
        )));
    }
    // Never hand out a policy the engine would refuse.
    let policy_name =
        args.output.as_ref().map_or_else(|| "<stdout>".to_owned(), |p| p.display().to_string());
    let policy = statecull_policy::load::parse(&result.policy, &policy_name).map_err(|e| {
        CliError::Import(format!("the generated policy does not load (a bug in the importer): {e}"))
    })?;
    match &args.output {
        None => out.write_all(result.policy.as_bytes())?,
        Some(path) => {
            write_atomically(path, result.policy.as_bytes(), args.force)?;
            summary(&result, path, policy.gateways.len(), policy.groups.len());
        }
    }
    Ok(())
}

fn summary(result: &Import, path: &Path, gateways: usize, groups: usize) {
    let serious = result.serious().count();
    let check = if serious > 0 {
        format!("; {serious} thing(s) to check by hand are listed in its header")
    } else {
        String::new()
    };
    to_stderr(format_args!(
        "statecull import: wrote {} ({gateways} gateway(s), {groups} group(s)){check}; check it \
         with `statecull check-policy {}`\n",
        path.display(),
        path.display()
    ));
}

/// Write `data` to `dest` so that a reader sees the old file or the whole new one: a
/// temporary file in the same directory, synced, then linked into place (which fails if
/// `dest` exists) or, with `force`, renamed over it.
fn write_atomically(dest: &Path, data: &[u8], force: bool) -> Result<(), CliError> {
    if !force && fs::symlink_metadata(dest).is_ok() {
        return Err(CliError::Usage(format!(
            "{} exists; add --force to replace it",
            dest.display()
        )));
    }
    let dir = match dest.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = dest
        .file_name()
        .ok_or_else(|| CliError::Usage(format!("{} names no file", dest.display())))?;
    let tmp = dir.join(format!(".{}.tmp-{}", file_name.to_string_lossy(), std::process::id()));
    let fail = |what: &str, e: std::io::Error| {
        let _ = fs::remove_file(&tmp);
        CliError::Import(format!("{what} {}: {e}", dest.display()))
    };
    let mut f: File = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| CliError::Import(format!("cannot create {}: {e}", tmp.display())))?;
    f.write_all(data).map_err(|e| fail("writing", e))?;
    f.sync_all().map_err(|e| fail("syncing", e))?;
    drop(f);
    if force {
        fs::rename(&tmp, dest).map_err(|e| fail("replacing", e))?;
    } else {
        // link(2) refuses an existing name: no window where another writer's file is lost.
        let linked = fs::hard_link(&tmp, dest);
        let _ = fs::remove_file(&tmp);
        linked.map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                CliError::Usage(format!("{} exists; add --force to replace it", dest.display()))
            } else {
                CliError::Import(format!("writing {}: {e}", dest.display()))
            }
        })?;
    }
    if let Ok(d) = File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_atomically_and_refuses_to_overwrite_without_force() {
        let dir =
            std::env::temp_dir().join(format!("statecull-import-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let dest = dir.join("policy.toml");
        let _ = fs::remove_file(&dest);
        write_atomically(&dest, b"one", false).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"one");
        let e = write_atomically(&dest, b"two", false).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("--force"), "{e}");
        assert_eq!(fs::read(&dest).unwrap(), b"one", "untouched");
        write_atomically(&dest, b"three", true).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"three");
        let left: Vec<_> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left.len(), 1, "no temporary file left: {left:?}");
        let _ = fs::remove_dir_all(&dir);
    }
}
