//! The packages read back with an independent reader, with synthetic FreeBSD programs (the
//! real ones are checked the same way by `cargo xtask dist freebsd`, which CI runs), and the
//! service scripts, samples and port kept in step with the code's defaults.

use statecull_proto::paths::{FREEBSD, LINUX};

use super::pkg::file_sum;
use super::*;

/// A minimal x86-64 ELF executable: header, no program, a `.note.tag` FreeBSD ABI note and
/// the section name table. `osabi` is e_ident[EI_OSABI].
fn fake_elf(osabi: u8, abi_note: Option<u32>) -> Vec<u8> {
    let mut note = Vec::new();
    if let Some(v) = abi_note {
        for w in [8u32, 4, 1] {
            note.extend_from_slice(&w.to_le_bytes());
        }
        note.extend_from_slice(b"FreeBSD\0");
        note.extend_from_slice(&v.to_le_bytes());
    }
    let strtab = b"\0.note.tag\0.shstrtab\0".to_vec();
    let note_off = 64usize;
    let str_off = note_off + note.len();
    let sh_off = (str_off + strtab.len()).div_ceil(8) * 8;
    let mut e = vec![0u8; sh_off];
    e[..4].copy_from_slice(b"\x7fELF");
    e[4] = 2;
    e[5] = 1;
    e[6] = 1;
    e[7] = osabi;
    e[0x10..0x12].copy_from_slice(&3u16.to_le_bytes());
    e[0x12..0x14].copy_from_slice(&62u16.to_le_bytes());
    e[0x28..0x30].copy_from_slice(&(sh_off as u64).to_le_bytes());
    e[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
    e[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
    e[0x3e..0x40].copy_from_slice(&2u16.to_le_bytes());
    e[note_off..str_off].copy_from_slice(&note);
    e[str_off..str_off + strtab.len()].copy_from_slice(&strtab);
    let section = |name: u32, kind: u32, off: usize, size: usize| {
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(&name.to_le_bytes());
        h[4..8].copy_from_slice(&kind.to_le_bytes());
        h[0x18..0x20].copy_from_slice(&(off as u64).to_le_bytes());
        h[0x20..0x28].copy_from_slice(&(size as u64).to_le_bytes());
        h
    };
    e.extend(section(0, 0, 0, 0));
    e.extend(section(1, 7, note_off, note.len()));
    e.extend(section(11, 3, str_off, strtab.len()));
    e
}

fn programs() -> Programs {
    Programs {
        broker: fake_elf(9, Some(1_400_097)),
        engine: fake_elf(9, Some(1_400_500)),
        cli: fake_elf(0, Some(1_400_000)),
    }
}

#[test]
fn packages_read_back_and_check() {
    for p in packages(programs()).unwrap() {
        let bytes = p.archive(1_700_000_000).unwrap();
        let notes = verify(&bytes, &p).unwrap_or_else(|e| panic!("{}: {e}", p.name));
        assert!(notes.contains("EI_OSABI"), "{notes}");
        let back = read::read(&bytes).unwrap();
        assert_eq!(back.str_field("name").unwrap(), p.name);
        assert_eq!(back.str_field("abi").unwrap(), "FreeBSD:14:amd64");
        assert_eq!(back.str_field("prefix").unwrap(), "/usr/local");
        for f in &p.files {
            let e = back.entry(&f.path).unwrap();
            assert_eq!(e.data, f.data);
            assert_eq!(back.manifest["files"][&f.path], file_sum(&f.data).as_str());
        }
    }
}

#[test]
fn the_packages_hold_what_each_half_needs() {
    let all = packages(programs()).unwrap();
    let paths = |name: &str| -> Vec<String> {
        let p = all.iter().find(|p| p.name == name).unwrap();
        p.files.iter().map(|f| f.path.clone()).collect()
    };
    let broker = paths("statecull-broker");
    assert!(broker.contains(&"/usr/local/sbin/statecull-broker".to_owned()));
    assert!(broker.contains(&"/usr/local/etc/rc.d/statecull_broker".to_owned()));
    assert!(broker.contains(&"/usr/local/etc/statecull/broker.toml.sample".to_owned()));
    let engine = paths("statecull-engine");
    assert!(engine.contains(&"/usr/local/sbin/statecull-engine".to_owned()));
    assert!(engine.contains(&"/usr/local/etc/rc.d/statecull_engine".to_owned()));
    assert!(engine.contains(&"/usr/local/etc/statecull/policy.toml.sample".to_owned()));
    assert_eq!(paths("statecull")[0], "/usr/local/bin/statecull");
    // Samples only: an installed configuration is never overwritten by an upgrade.
    for p in &all {
        for f in &p.files {
            assert!(
                !f.path.contains("/etc/statecull/") || f.path.ends_with(".sample"),
                "{}",
                f.path
            );
        }
    }
    let engine = all.iter().find(|p| p.name == "statecull-engine").unwrap();
    assert_eq!(engine.deps[0].name, "statecull-broker");
    let pre = &engine.scripts["pre-install"];
    assert!(pre.contains("pw -R ${PKG_ROOTDIR}") && pre.contains("useradd statecull -g statecull"));
}

#[test]
fn tampering_and_foreign_programs_are_caught() {
    let all = packages(programs()).unwrap();
    let broker = &all[0];
    // A changed program: its sum no longer matches the manifest.
    let mut tampered = broker.clone();
    let good = broker.archive(1).unwrap();
    tampered.files[0].data.push(0);
    let mut p = read::read(&tampered.archive(1).unwrap()).unwrap();
    p.manifest = read::read(&good).unwrap().manifest;
    assert!(read::check(&p).unwrap_err().contains("manifest sum"));
    // A program for another OS (EI_OSABI 3 = Linux, no FreeBSD note) is refused.
    let mut linux = broker.clone();
    linux.files[0].data = fake_elf(3, None);
    let err = verify(&linux.archive(1).unwrap(), &linux).unwrap_err();
    assert!(err.contains("neither EI_OSABI = FreeBSD nor a FreeBSD .note.tag"), "{err}");
    assert!(read::freebsd_elf(b"#!/bin/sh\n").is_err());
    // FreeBSD, but not the release the manifest's ABI names.
    let mut fifteen = broker.clone();
    fifteen.files[0].data = fake_elf(9, Some(1_500_000));
    let err = verify(&fifteen.archive(1).unwrap(), &fifteen).unwrap_err();
    assert!(err.contains("is not FreeBSD 14"), "{err}");
    // Not zstd at all.
    assert!(read::read(b"not a package").is_err());
}

#[test]
fn the_abi_note_is_read() {
    let elf = read::freebsd_elf(&fake_elf(0, Some(1_400_097))).unwrap();
    assert_eq!(elf, read::FreebsdElf { osabi: false, abi_tag: Some(1_400_097) });
    let elf = read::freebsd_elf(&fake_elf(9, None)).unwrap();
    assert_eq!(elf, read::FreebsdElf { osabi: true, abi_tag: None });
}

/// The rc.d scripts' defaults are the FreeBSD paths the programs compile in, and follow
/// rc.subr conventions; the systemd units use the Linux ones.
#[test]
fn service_scripts_use_the_compiled_in_paths() {
    let broker = text("sandbox/profiles/rc.d/statecull_broker").unwrap();
    let engine = text("sandbox/profiles/rc.d/statecull_engine").unwrap();
    for (script, name) in [(&broker, "statecull_broker"), (&engine, "statecull_engine")] {
        for needle in [
            format!("# PROVIDE: {name}\n"),
            "# REQUIRE: NETWORKING pf".to_owned(),
            "# KEYWORD: shutdown\n".to_owned(),
            ". /etc/rc.subr\n".to_owned(),
            format!("name=\"{name}\"\n"),
            format!("rcvar=\"{name}_enable\"\n"),
            format!(": \"${{{name}_enable:=NO}}\""),
            "pidfile=\"/var/run/${name}.pid\"".to_owned(),
            "command=\"/usr/sbin/daemon\"".to_owned(),
            format!("{name}_binary=\"/usr/local/sbin/{}\"", name.replace('_', "-")),
            "load_rc_config \"$name\"".to_owned(),
            // ${name}_flags (rc_flags) go to the program, after daemon(8)'s own flags.
            "    ${rc_flags}\"".to_owned(),
            "-P ${pidfile}".to_owned(),
            "run_rc_command \"$1\"".to_owned(),
        ] {
            assert!(script.contains(&needle), "{name}: no {needle:?}");
        }
    }
    assert!(
        broker.contains(&format!(": \"${{statecull_broker_config:={}}}\"", FREEBSD.broker_config))
    );
    assert!(
        broker.contains(&format!(": \"${{statecull_broker_socket:={}}}\"", FREEBSD.broker_socket))
    );
    assert!(broker.contains("--backend pf"));
    assert!(
        engine.contains(&format!(": \"${{statecull_engine_policy:={}}}\"", FREEBSD.policy_file))
    );
    assert!(engine.contains(&format!(
        ": \"${{statecull_engine_broker_socket:={}}}\"",
        FREEBSD.broker_socket
    )));
    assert!(engine.contains(&format!(
        ": \"${{statecull_engine_control_socket:={}}}\"",
        FREEBSD.control_socket
    )));
    assert!(engine.contains("# REQUIRE: NETWORKING pf statecull_broker"));
    // reload: SIGHUP to the engine, whose pid daemon(8) writes (-p), not to daemon(8).
    for needle in [
        "extra_commands=\"reload\"",
        "sig_reload=\"HUP\"",
        "reload_cmd=\"statecull_engine_reload\"",
        "-p ${child_pidfile}",
        "check_pidfile \"${child_pidfile}\" \"${statecull_engine_binary}\"",
    ] {
        assert!(engine.contains(needle), "statecull_engine: no {needle:?}");
    }
    assert!(
        text("sandbox/profiles/systemd/statecull-engine.service").unwrap().contains(
            "\nExecReload=/usr/bin/statecull reload --control /run/statecull/engine.sock\n"
        )
    );
    let units = text("sandbox/profiles/systemd/statecull-broker.service").unwrap()
        + &text("sandbox/profiles/systemd/statecull-engine.service").unwrap();
    for p in [LINUX.broker_config, LINUX.broker_socket, LINUX.policy_file, LINUX.control_socket] {
        assert!(units.contains(p), "systemd units do not use {p}");
    }
}

#[test]
fn samples_are_valid_configuration() {
    let broker = text("dist/freebsd/broker.toml.sample").unwrap();
    statecull_broker::config::Config::from_toml(&broker, "broker.toml.sample").unwrap();
    let policy = text("policy/examples/pfsense-two-wan.toml").unwrap();
    let p = statecull_policy::load::parse(&policy, "policy.toml.sample").unwrap();
    assert_eq!(p.engine.broker_socket.as_deref(), Some(FREEBSD.broker_socket));
}

#[test]
fn the_port_matches_the_workspace() {
    let makefile = text("dist/freebsd/port/Makefile").unwrap();
    assert!(makefile.contains(&format!("DISTVERSION=\t{VERSION}\n")), "port version");
    assert!(makefile.contains("USES=\t\tcargo\n"));
    assert!(makefile.contains("USE_RC_SUBR=\tstatecull_broker statecull_engine\n"));
    let plist = text("dist/freebsd/port/pkg-plist").unwrap();
    for p in packages(programs()).unwrap() {
        for f in &p.files {
            let rel = f.path.strip_prefix("/usr/local/").unwrap();
            let rel = rel.replace("share/doc/statecull-broker/", "%%PORTDOCS%%%%DOCSDIR%%/");
            let rel = rel.replace("share/doc/statecull/", "%%PORTDOCS%%%%DOCSDIR%%/");
            let rel =
                rel.replace("share/examples/statecull-engine/", "%%PORTEXAMPLES%%%%EXAMPLESDIR%%/");
            // rc.d scripts come from USE_RC_SUBR, samples from @sample.
            if rel.starts_with("etc/rc.d/") {
                continue;
            }
            let line =
                if rel.ends_with(".sample") { format!("@sample {rel}") } else { rel.clone() };
            assert!(plist.lines().any(|l| l == line), "pkg-plist lacks {line}");
        }
    }
    let crates = cargo_crates(
        "[[package]]\nname = \"a\"\nversion = \"1.0.0\"\nsource = \"registry+https://github.com/rust-lang/crates.io-index\"\n\n[[package]]\nname = \"local\"\nversion = \"0.1.0\"\n",
    );
    assert!(crates.contains("CARGO_CRATES=\ta-1.0.0\n") && !crates.contains("local"), "{crates}");
}

/// Runs a package script with `sh`, pw(8) replaced by a stub that logs its arguments and
/// answers "exists" for the names in `existing`.
fn run_script(script: &str, root: &Path, existing: &[&str]) -> (bool, String) {
    let log = root.join("pw.log");
    let stub = root.join("pw");
    let known = existing.join(" ");
    std::fs::write(
        &stub,
        format!(
            "#!/bin/sh\necho \"$*\" >> '{}'\ncase \"$*\" in *show*) for n in {known}; do case \"$*\" in *\" $n\") exit 0;; esac; done; exit 67;; esac\nexit 0\n",
            log.display()
        ),
    )
    .unwrap();
    let script = script.replace("/usr/sbin/pw", &stub.display().to_string());
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("chmod +x '{}' && {script}", stub.display()))
        .env("PKG_ROOTDIR", root)
        .env("PKG_PREFIX", "/usr/local")
        .output()
        .unwrap()
        .status
        .success();
    (ok, std::fs::read_to_string(&log).unwrap_or_default())
}

#[test]
fn pre_install_creates_only_missing_accounts() {
    let dir = std::env::temp_dir().join(format!("statecull-dist-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let all = packages(programs()).unwrap();
    let engine = &all[1].scripts["pre-install"];
    let (ok, log) = run_script(engine, &dir, &[]);
    let r = format!("-R {}", dir.display());
    assert!(ok, "{log}");
    assert!(log.contains(&format!("{r} groupadd statecull\n")), "{log}");
    assert!(log.contains(&format!("{r} useradd statecull -g statecull ")), "{log}");
    std::fs::remove_file(dir.join("pw.log")).unwrap();
    let (ok, log) = run_script(engine, &dir, &["statecull"]);
    assert!(ok && !log.contains("add"), "{log}");
    std::fs::remove_file(dir.join("pw.log")).unwrap();
    let (ok, log) = run_script(&all[0].scripts["pre-install"], &dir, &["statecull"]);
    assert!(ok && !log.contains("groupadd"), "{log}");
    assert!(log.contains(&format!("{r} useradd statecull-broker -c ")), "{log}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn samples_are_installed_once_and_removed_only_unchanged() {
    let dir = std::env::temp_dir().join(format!("statecull-sample-{}", std::process::id()));
    let etc = dir.join("usr/local/etc/statecull");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(etc.join("broker.toml.sample"), "protected = []\n").unwrap();
    let broker = &packages(programs()).unwrap()[0];
    assert!(run_script(&broker.scripts["post-install"], &dir, &[]).0);
    assert_eq!(std::fs::read_to_string(etc.join("broker.toml")).unwrap(), "protected = []\n");
    // An edited configuration survives an upgrade's post-install and a deinstall.
    std::fs::write(etc.join("broker.toml"), "protected = [\"192.0.2.0/28\"]\n").unwrap();
    assert!(run_script(&broker.scripts["post-install"], &dir, &[]).0);
    assert!(run_script(&broker.scripts["pre-deinstall"], &dir, &[]).0);
    assert!(std::fs::read_to_string(etc.join("broker.toml")).unwrap().contains("192.0.2.0/28"));
    // An unchanged one goes with the package.
    std::fs::write(etc.join("broker.toml"), "protected = []\n").unwrap();
    assert!(run_script(&broker.scripts["pre-deinstall"], &dir, &[]).0);
    assert!(!etc.join("broker.toml").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn programs_must_carry_the_freebsd_defaults() {
    let with = |extra: &str| {
        let mut p = programs();
        p.broker.extend_from_slice(b"socket = \"/var/run/statecull/broker.sock\"\n");
        p.broker.extend_from_slice(b"scripts pass --config /usr/local/etc/statecull/broker.toml");
        p.broker.extend_from_slice(b"backend = \"pf\"");
        p.engine.extend_from_slice(b"else /var/run/statecull/engine.sock]");
        p.cli.extend_from_slice(b"check-policy /usr/local/etc/statecull/policy.toml");
        p.cli.extend_from_slice(extra.as_bytes());
        p
    };
    check_paths(&with("")).unwrap();
    assert!(check_paths(&programs()).unwrap_err().contains("not built for FreeBSD"));
    let err = check_paths(&with("[default: /run/statecull/broker.sock]")).unwrap_err();
    assert!(err.contains("Linux default path"), "{err}");
    assert!(check_paths(&with(" /etc/statecull/policy.toml")).is_err());
    // Each of the broker's help texts is required: a Linux-default backend is refused.
    let mut linux_backend = with("");
    let at = linux_backend.broker.windows(6).position(|w| w == b"= \"pf\"").unwrap();
    linux_backend.broker[at + 3..at + 5].copy_from_slice(b"ct");
    let err = check_paths(&linux_backend).unwrap_err();
    assert!(err.contains("statecull-broker") && err.contains("backend"), "{err}");
}
