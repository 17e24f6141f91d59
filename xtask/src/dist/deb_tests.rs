//! The Debian packages built from synthetic programs, read back with dpkg-deb
//! (`--info`, `--field`, `--contents`, `--control`), and the maintainer scripts run against
//! stubs of the commands they call.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("statecull-deb-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn programs() -> LinuxPrograms {
    let libs = vec!["libc6 (>= 2.34)".to_owned()];
    LinuxPrograms {
        programs: crate::dist::Programs {
            broker: b"\x7fELF broker".to_vec(),
            engine: b"\x7fELF engine".to_vec(),
            cli: b"\x7fELF cli".to_vec(),
        },
        broker_libs: libs.clone(),
        engine_libs: libs.clone(),
        cli_libs: libs,
    }
}

fn all() -> Vec<DebPackage> {
    packages(programs(), &crate::man::render().unwrap(), &rfc2822(1_700_000_000)).unwrap()
}

fn paths(p: &DebPackage) -> Vec<&str> {
    p.files.iter().map(|f| f.path.as_str()).collect()
}

#[test]
fn packages_build_and_read_back() {
    let dir = scratch("build");
    for p in all() {
        let deb = build_package(&p, &dir.join("stage"), &dir).unwrap();
        assert_eq!(deb.file_name().unwrap().to_str().unwrap(), p.file_name());
        verify(&deb, &p).unwrap_or_else(|e| panic!("{}: {e}", p.name));
        // dpkg-deb's own view of the control fields.
        let field = |f: &str| {
            let o = Command::new("dpkg-deb").arg("--field").arg(&deb).arg(f).output().unwrap();
            String::from_utf8(o.stdout).unwrap().trim().to_owned()
        };
        assert_eq!(field("Package"), p.name);
        assert_eq!(field("Version"), VERSION);
        assert_eq!(field("Architecture"), "amd64");
        let depends = field("Depends");
        match p.name {
            "statecull" => {
                assert_eq!(depends, "libc6 (>= 2.34), systemd | systemd-standalone-sysusers");
            }
            "statecull-broker" => {
                assert_eq!(depends, format!("libc6 (>= 2.34), statecull (= {VERSION})"))
            }
            _ => assert_eq!(
                depends,
                format!("libc6 (>= 2.34), statecull (= {VERSION}), statecull-broker (= {VERSION})")
            ),
        }
        let info = Command::new("dpkg-deb").arg("--info").arg(&deb).output().unwrap();
        let info = String::from_utf8(info.stdout).unwrap();
        for script in p.scripts.keys() {
            assert!(info.contains(&format!(" {script} ")), "{}: {script} not in --info", p.name);
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn each_package_holds_its_files() {
    let all = all();
    let [cli, broker, engine] = [&all[0], &all[1], &all[2]];
    for want in [
        "/usr/bin/statecull",
        "/usr/lib/sysusers.d/statecull.conf",
        "/usr/share/statecull/sysctl.d/60-statecull-ping.conf.in",
        "/usr/share/man/man8/statecull.8.gz",
        "/usr/share/man/man5/statecull-policy.5.gz",
        "/usr/share/bash-completion/completions/statecull",
        "/usr/share/zsh/vendor-completions/_statecull",
        "/usr/share/fish/vendor_completions.d/statecull.fish",
        "/usr/share/doc/statecull/examples/linux-mwan-three-wan.toml",
        "/usr/share/doc/statecull/copyright",
        "/usr/share/doc/statecull/changelog.Debian.gz",
    ] {
        assert!(paths(cli).contains(&want), "statecull lacks {want}");
    }
    for want in [
        "/usr/sbin/statecull-broker",
        "/lib/systemd/system/statecull-broker.service",
        "/etc/statecull/broker.toml",
        "/usr/share/man/man8/statecull-broker.8.gz",
        "/usr/share/man/man5/statecull-broker.toml.5.gz",
    ] {
        assert!(paths(broker).contains(&want), "statecull-broker lacks {want}");
    }
    for want in [
        "/usr/sbin/statecull-engine",
        "/lib/systemd/system/statecull-engine.service",
        "/lib/systemd/system/statecull-engine.service.d/debian-policy.conf",
        "/usr/share/man/man8/statecull-engine.8.gz",
        "/usr/share/bash-completion/completions/statecull-engine",
        "/usr/share/doc/statecull-engine/README.Debian",
    ] {
        assert!(paths(engine).contains(&want), "statecull-engine lacks {want}");
    }
    // No file in two packages (dpkg would refuse the second).
    let mut every: Vec<&str> = all.iter().flat_map(paths).collect();
    let n = every.len();
    every.sort_unstable();
    every.dedup();
    assert_eq!(every.len(), n);
    // The one conffile; no policy is shipped.
    assert_eq!(broker.conffiles, ["/etc/statecull/broker.toml"]);
    assert!(cli.conffiles.is_empty() && engine.conffiles.is_empty());
    assert!(!every.iter().any(|p| p.ends_with("policy.toml")));
    // The units and sysusers file are the tree's, byte for byte.
    let tree = |rel: &str| std::fs::read(util::root().join(rel)).unwrap();
    let data =
        |p: &DebPackage, path: &str| p.files.iter().find(|f| f.path == path).unwrap().data.clone();
    assert_eq!(
        data(broker, "/lib/systemd/system/statecull-broker.service"),
        tree("sandbox/profiles/systemd/statecull-broker.service")
    );
    assert_eq!(
        data(engine, "/lib/systemd/system/statecull-engine.service"),
        tree("sandbox/profiles/systemd/statecull-engine.service")
    );
    assert_eq!(
        data(cli, "/usr/lib/sysusers.d/statecull.conf"),
        tree("sandbox/profiles/systemd/statecull.sysusers")
    );
    // The conffile is a valid broker configuration; the units pass it.
    let conf = String::from_utf8(data(broker, "/etc/statecull/broker.toml")).unwrap();
    statecull_broker::config::Config::from_toml(&conf, "broker.toml").unwrap();
    let unit =
        String::from_utf8(tree("sandbox/profiles/systemd/statecull-broker.service")).unwrap();
    assert!(unit.contains("--config /etc/statecull/broker.toml"));
}

#[test]
fn maintainer_scripts_follow_debhelper() {
    let all = all();
    let script = |p: usize, s: &str| String::from_utf8(all[p].scripts[s].clone()).unwrap();
    assert!(
        script(0, "postinst")
            .contains("systemd-sysusers ${DPKG_ROOT:+--root=\"$DPKG_ROOT\"} statecull.conf")
    );
    for (i, unit) in [(1, "statecull-broker.service"), (2, "statecull-engine.service")] {
        let post = script(i, "postinst");
        assert!(post.contains(&format!("deb-systemd-helper enable '{unit}'")), "{post}");
        assert!(post.contains(&format!("deb-systemd-invoke $_dh_action '{unit}'")), "{post}");
        assert!(script(i, "prerm").contains(&format!("deb-systemd-invoke stop '{unit}'")));
        let postrm = script(i, "postrm");
        assert!(postrm.contains(&format!("deb-systemd-helper purge '{unit}'")), "{postrm}");
        assert!(postrm.contains(&format!("deb-systemd-helper mask '{unit}'")), "{postrm}");
        for s in all[i].scripts.values() {
            let s = String::from_utf8_lossy(s);
            assert!(s.starts_with("#!/bin/sh\n") && s.contains("\nset -e\n"));
        }
    }
    // The engine starts only with a policy; the broker always.
    let engine = script(2, "postinst");
    let start = engine.find("deb-systemd-invoke $_dh_action").unwrap();
    let guard = engine.find("if [ -e /etc/statecull/policy.toml ]; then").unwrap();
    assert!(guard < start, "the engine's start is not behind the policy check");
    assert!(!script(1, "postinst").contains("policy.toml"));
}

#[test]
fn a_changed_package_is_caught_on_reading_back() {
    let dir = scratch("tamper");
    let good = &all()[1];
    let deb = build_package(good, &dir.join("stage"), &dir).unwrap();
    let mut other = good.clone();
    other.conffiles.clear();
    assert!(verify(&deb, &other).unwrap_err().contains("conffiles"));
    let mut other = good.clone();
    other.files.pop();
    assert!(verify(&deb, &other).unwrap_err().contains("files"));
    let mut other = good.clone();
    other.scripts.insert("postinst", b"#!/bin/sh\nexit 0\n".to_vec());
    assert!(verify(&deb, &other).unwrap_err().contains("postinst"));
    let mut other = good.clone();
    other.depends.push("foo".into());
    assert!(verify(&deb, &other).unwrap_err().contains("Depends"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Run a maintainer script with `PATH` leading to stubs: `getent` answers from a file of
/// known accounts, `systemd-sysusers` adds the three accounts, `userdel`/`groupdel` remove
/// one and log it. The script's absolute paths (/var/lib/statecull, /run/statecull) are
/// redirected into `root`.
fn run(script: &[u8], arg: &str, root: &Path) -> String {
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let db = root.join("accounts");
    let log = root.join("log");
    let stubs = [
        ("getent", format!("#!/bin/sh\ngrep -qx \"$1:$2\" '{}'\n", db.display())),
        (
            "systemd-sysusers",
            format!(
                "#!/bin/sh\necho \"sysusers $*\" >> '{l}'\nfor a in passwd:statecull-broker passwd:statecull group:statecull-broker group:statecull; do grep -qx $a '{d}' || echo $a >> '{d}'; done\n",
                l = log.display(),
                d = db.display()
            ),
        ),
        (
            "userdel",
            format!(
                "#!/bin/sh\necho \"userdel $1\" >> '{l}'\ngrep -vx \"passwd:$1\" '{d}' > '{d}.new'; mv '{d}.new' '{d}'\n",
                l = log.display(),
                d = db.display()
            ),
        ),
        (
            "groupdel",
            format!(
                "#!/bin/sh\necho \"groupdel $1\" >> '{l}'\ngrep -vx \"group:$1\" '{d}' > '{d}.new'; mv '{d}.new' '{d}'\n",
                l = log.display(),
                d = db.display()
            ),
        ),
    ];
    for (name, body) in stubs {
        let p = bin.join(name);
        std::fs::write(&p, body).unwrap();
        Command::new("chmod").arg("+x").arg(&p).status().unwrap();
    }
    if !db.exists() {
        std::fs::write(&db, "").unwrap();
    }
    let text = String::from_utf8(script.to_vec())
        .unwrap()
        .replace("/var/lib/statecull", &root.join("var/lib/statecull").display().to_string())
        .replace("/run/statecull", &root.join("run/statecull").display().to_string());
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let out = Command::new("sh")
        .arg("-c")
        .arg(&text)
        .arg("postinst")
        .arg(arg)
        .env("PATH", path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::read_to_string(&log).unwrap_or_default()
}

#[test]
fn purge_removes_only_the_accounts_the_installation_created() {
    let cli = &all()[0];
    let (post, postrm) = (&cli.scripts["postinst"], &cli.scripts["postrm"]);
    // A fresh machine: all three are created, recorded, and removed on purge.
    let root = scratch("accounts");
    let log = run(post, "configure", &root);
    assert!(log.contains("sysusers statecull.conf"), "{log}");
    let created = std::fs::read_to_string(root.join("var/lib/statecull/accounts-created")).unwrap();
    assert_eq!(
        created,
        "passwd:statecull-broker\npasswd:statecull\ngroup:statecull-broker\ngroup:statecull\n"
    );
    // An upgrade's configure records nothing twice.
    run(post, "configure", &root);
    assert_eq!(
        std::fs::read_to_string(root.join("var/lib/statecull/accounts-created")).unwrap(),
        created
    );
    run(postrm, "remove", &root);
    assert!(root.join("var/lib/statecull/accounts-created").exists(), "remove is not purge");
    let log = run(postrm, "purge", &root);
    assert!(
        log.contains(
            "userdel statecull-broker\nuserdel statecull\ngroupdel statecull-broker\ngroupdel \
             statecull\n"
        ),
        "{log}"
    );
    assert_eq!(std::fs::read_to_string(root.join("accounts")).unwrap(), "");
    assert!(!root.join("var/lib/statecull").exists());
    std::fs::remove_dir_all(&root).unwrap();
    // The administrator made the group (and the engine's user) first: purge keeps them.
    let root = scratch("accounts-kept");
    std::fs::write(root.join("accounts"), "group:statecull\npasswd:statecull\n").unwrap();
    run(post, "configure", &root);
    let log = run(postrm, "purge", &root);
    assert!(
        log.contains("userdel statecull-broker") && !log.contains("userdel statecull\n"),
        "{log}"
    );
    assert!(log.contains("groupdel statecull-broker") && !log.contains("groupdel statecull\n"));
    assert_eq!(
        std::fs::read_to_string(root.join("accounts")).unwrap(),
        "group:statecull\npasswd:statecull\n"
    );
    std::fs::remove_dir_all(&root).unwrap();
    // Only the group was there: the engine's user is kept too, since userdel would take
    // the administrator's group with it.
    let root = scratch("group-kept");
    std::fs::write(root.join("accounts"), "group:statecull\n").unwrap();
    run(post, "configure", &root);
    let log = run(postrm, "purge", &root);
    assert!(!log.contains("userdel statecull\n") && !log.contains("groupdel statecull\n"));
    assert!(log.contains("userdel statecull-broker\n"), "{log}");
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn the_changelog_date_is_rfc_2822() {
    assert_eq!(rfc2822(0), "Thu, 01 Jan 1970 00:00:00 +0000");
    assert_eq!(rfc2822(1_700_000_000), "Tue, 14 Nov 2023 22:13:20 +0000");
    assert_eq!(rfc2822(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
}

/// The engine's postinst and postrm with the sysctl paths redirected into a scratch
/// directory, `getent` answering gid 995 for statecull, and `sysctl`/`deb-systemd-helper`
/// logging their arguments.
fn run_engine(script: &[u8], arg: &str, root: &Path, range: &str) -> (String, String) {
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(root.join("sysctl.d")).unwrap();
    let log = root.join("log");
    std::fs::write(root.join("range"), format!("{range}\n")).unwrap();
    for (name, body) in [
        (
            "getent",
            "#!/bin/sh\n[ \"$1 $2\" = \"group statecull\" ] && echo statecull:x:995:\n".to_owned(),
        ),
        ("sysctl", format!("#!/bin/sh\necho \"sysctl $*\" >> '{}'\n", log.display())),
        ("deb-systemd-helper", format!("#!/bin/sh\necho \"dsh $*\" >> '{}'\n", log.display())),
    ] {
        let p = bin.join(name);
        std::fs::write(&p, body).unwrap();
        Command::new("chmod").arg("+x").arg(&p).status().unwrap();
    }
    let conf = root.join("sysctl.d/60-statecull-ping.conf");
    let template = util::root().join("sandbox/profiles/sysctl.d/60-statecull-ping.conf");
    let text = String::from_utf8(script.to_vec())
        .unwrap()
        .replace("/etc/sysctl.d/60-statecull-ping.conf", &conf.display().to_string())
        .replace(
            "/usr/share/statecull/sysctl.d/60-statecull-ping.conf.in",
            &template.display().to_string(),
        )
        .replace("/proc/sys/net/ipv4/ping_group_range", &root.join("range").display().to_string());
    run_with_stubs(&text, &[arg], &bin, &log)
}

#[test]
fn the_engine_allows_its_group_to_ping_only_where_nobody_may() {
    let engine = &all()[2];
    let (post, postrm) = (&engine.scripts["postinst"], &engine.scripts["postrm"]);
    // Debian's default "1 0": the drop-in is written for gid 995 and loaded.
    let root = scratch("ping-empty");
    let conf = root.join("sysctl.d/60-statecull-ping.conf");
    let (log, _) = run_engine(post, "configure", &root, "1\t0");
    let text = std::fs::read_to_string(&conf).unwrap();
    assert!(text.starts_with("# Written by statecull-engine's postinst"), "{text}");
    assert!(text.contains("\nnet.ipv4.ping_group_range = 995 995\n"), "{text}");
    assert!(log.contains(&format!("sysctl -q -p {}", conf.display())), "{log}");
    assert!(log.contains("dsh enable statecull-engine.service"), "{log}");
    // Configured again (an upgrade): the file is the administrator's to change; kept.
    std::fs::write(&conf, "# edited\n").unwrap();
    run_engine(post, "configure", &root, "995 995");
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), "# edited\n");
    // Purge removes only the file postinst wrote.
    run_engine(postrm, "purge", &root, "1 0");
    assert!(conf.exists(), "an edited drop-in without the first line is not the package's");
    run_engine(post, "configure", &root, "1 0");
    std::fs::remove_file(&conf).unwrap();
    run_engine(post, "configure", &root, "1 0");
    run_engine(postrm, "purge", &root, "1 0");
    assert!(!conf.exists());
    std::fs::remove_dir_all(&root).unwrap();
    // A range that covers the gid needs nothing; another one is reported, not narrowed.
    let root = scratch("ping-set");
    let conf = root.join("sysctl.d/60-statecull-ping.conf");
    let (log, err) = run_engine(post, "configure", &root, "0 2147483647");
    assert!(!conf.exists() && !log.contains("sysctl") && err.is_empty(), "{log} {err}");
    let (log, err) = run_engine(post, "configure", &root, "100 200");
    assert!(!conf.exists() && !log.contains("sysctl"), "{log}");
    assert!(err.contains("\"100 200\", without the statecull gid 995"), "{err}");
    std::fs::remove_dir_all(&root).unwrap();
}

/// A unit script run as on a machine where systemd is PID 1 (`/run/systemd/system` is a
/// scratch directory), with deb-systemd-helper, deb-systemd-invoke, systemctl and sysctl
/// logging their arguments; `/etc/statecull/policy.toml` is `policy` in the scratch root.
fn run_unit_script(script: &[u8], args: &[&str], root: &Path) -> (String, String) {
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(root.join("run-systemd")).unwrap();
    let log = root.join("log");
    let _ = std::fs::remove_file(&log);
    for name in ["deb-systemd-helper", "deb-systemd-invoke", "systemctl", "sysctl"] {
        let p = bin.join(name);
        std::fs::write(&p, format!("#!/bin/sh\necho \"{name} $*\" >> '{}'\n", log.display()))
            .unwrap();
        Command::new("chmod").arg("+x").arg(&p).status().unwrap();
    }
    let text = String::from_utf8(script.to_vec())
        .unwrap()
        .replace("/run/systemd/system", &root.join("run-systemd").display().to_string())
        .replace("/etc/statecull/policy.toml", &root.join("policy").display().to_string())
        .replace(
            "/usr/bin/deb-systemd-helper",
            &bin.join("deb-systemd-helper").display().to_string(),
        )
        // Not the sysctl part (its own test covers it).
        .replace("/proc/sys/net/ipv4/ping_group_range", "/nonexistent");
    run_with_stubs(&text, args, &bin, &log)
}

/// Run a maintainer script (`text`, paths already pointed into the scratch root) with
/// `args`, the stub programs in `bin` first on PATH; what the stubs logged, and stderr.
fn run_with_stubs(text: &str, args: &[&str], bin: &Path, log: &Path) -> (String, String) {
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let out = Command::new("sh")
        .arg("-c")
        .arg(text)
        .arg("script")
        .args(args)
        .env("PATH", path)
        .env_remove("DPKG_ROOT")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    (
        std::fs::read_to_string(log).unwrap_or_default(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_broker_starts_at_once_and_the_engine_only_with_a_policy() {
    let all = all();
    let root = scratch("units");
    let (broker, engine) = (&all[1].scripts, &all[2].scripts);
    // First installation: the broker is enabled and started.
    let (log, _) = run_unit_script(&broker["postinst"], &["configure"], &root);
    assert!(log.contains("deb-systemd-helper enable statecull-broker.service"), "{log}");
    assert!(log.contains("deb-systemd-invoke start statecull-broker.service"), "{log}");
    // The engine without a policy: enabled, not started, and the operator is told what to do.
    let (log, err) = run_unit_script(&engine["postinst"], &["configure"], &root);
    assert!(log.contains("deb-systemd-helper enable statecull-engine.service"), "{log}");
    assert!(!log.contains("deb-systemd-invoke"), "{log}");
    assert!(err.contains("enabled, not started: write "), "{err}");
    // With a policy: started on installation, restarted on upgrade.
    std::fs::write(root.join("policy"), "").unwrap();
    let (log, _) = run_unit_script(&engine["postinst"], &["configure"], &root);
    assert!(log.contains("deb-systemd-invoke start statecull-engine.service"), "{log}");
    let (log, _) = run_unit_script(&engine["postinst"], &["configure", "0.0.9-1"], &root);
    assert!(log.contains("deb-systemd-invoke restart statecull-engine.service"), "{log}");
    // Removal stops; an upgrade's prerm does not.
    let (log, _) = run_unit_script(&engine["prerm"], &["upgrade", "0.2.0-1"], &root);
    assert!(log.is_empty(), "{log}");
    let (log, _) = run_unit_script(&engine["prerm"], &["remove"], &root);
    assert_eq!(log, "deb-systemd-invoke stop statecull-engine.service\n");
    let (log, _) = run_unit_script(&broker["postrm"], &["purge"], &root);
    assert!(log.contains("deb-systemd-helper purge statecull-broker.service"), "{log}");
    std::fs::remove_dir_all(&root).unwrap();
}
