//! `contrib/mwan3/mwan3.user`, run as mwan3's 16-mwan3-user runs it (`env -i` with only
//! ACTION, INTERFACE and DEVICE; here also the configuration file), with a stand-in
//! `statecull` that records its arguments: what each mwan3 event tells the engine.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

use std::path::{Path, PathBuf};
use std::process::Command;

use statecull_tests::TempDir;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/mwan3/mwan3.user")
}

struct Setup {
    dir: TempDir,
}

impl Setup {
    /// A configuration mapping wan/wanb/wwan to fibre/cable/lte, a stand-in CLI that exits
    /// with `cli_status`, and mwan3's state files.
    fn new(cli_status: u8) -> Self {
        let dir = TempDir::new("mwan3-user").unwrap();
        let d = dir.path();
        let cli = d.join("statecull");
        std::fs::write(
            &cli,
            format!(
                "#!/bin/sh\necho \"$*\" >> {}\necho ok\nexit {cli_status}\n",
                d.join("calls").display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&cli, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir_all(d.join("iface_state")).unwrap();
        std::fs::create_dir_all(d.join("track/wan")).unwrap();
        std::fs::write(
            d.join("mwan3.conf"),
            format!(
                "gateways=\"wan=fibre wanb=cable wwan=lte\"\nstatecull={}\ncontrol=/run/x/engine.sock\n\
                 mwan3_state_dir={}\nmwan3track_dir={}\nsyslog=false\n",
                cli.display(),
                d.join("iface_state").display(),
                d.join("track").display()
            ),
        )
        .unwrap();
        Setup { dir }
    }

    fn state(&self, file: &str, value: &str) {
        std::fs::write(self.dir.path().join(file), value).unwrap();
    }

    /// Run the hook; its exit status and the CLI calls it made (one line each).
    fn run(&self, action: &str, interface: &str) -> (i32, Vec<String>) {
        let calls = self.dir.path().join("calls");
        let _ = std::fs::remove_file(&calls);
        let mut cmd = Command::new("/bin/sh");
        cmd.env_clear()
            .arg(script())
            .env("ACTION", action)
            .env("STATECULL_MWAN3_CONF", self.dir.path().join("mwan3.conf"));
        if !interface.is_empty() {
            cmd.env("INTERFACE", interface).env("DEVICE", "eth9");
        }
        let out = cmd.output().unwrap();
        let made = std::fs::read_to_string(&calls).unwrap_or_default();
        (out.status.code().unwrap_or(-1), made.lines().map(str::to_owned).collect())
    }
}

const C: &str = "gateway --control /run/x/engine.sock";

#[test]
fn each_mwan3_event_tells_the_engine() {
    let s = Setup::new(0);
    // mwan3track's disconnected: it wrote "offline" before the hotplug call.
    s.state("track/wan/STATUS", "offline\n");
    assert_eq!(s.run("disconnected", "wan"), (0, vec![format!("{C} fibre down --routed")]));
    // mwan3 stopping sends "disconnected" for interfaces still "online": not a failure.
    s.state("track/wan/STATUS", "online\n");
    assert_eq!(s.run("disconnected", "wan"), (0, vec![]));
    assert_eq!(s.run("ifdown", "wanb"), (0, vec![format!("{C} cable down --routed")]));
    assert_eq!(
        s.run("connected", "wwan"),
        (0, vec![format!("{C} lte up"), format!("{C} lte routed")])
    );
    // ifup: only once mwan3 routes over the interface (initial_state online).
    s.state("iface_state/wan", "online\n");
    assert_eq!(
        s.run("ifup", "wan"),
        (0, vec![format!("{C} fibre up"), format!("{C} fibre routed")])
    );
    s.state("iface_state/wan", "offline\n");
    assert_eq!(s.run("ifup", "wan"), (0, vec![]));
    assert_eq!(s.run("ifup", "wanb"), (0, vec![]), "no state file: wait for connected");
    // Other actions and interfaces are left alone; no interface is an error.
    assert_eq!(s.run("disconnecting", "wan"), (0, vec![]));
    assert_eq!(s.run("disconnected", "lan"), (0, vec![]));
    assert_eq!(s.run("disconnected", ""), (2, vec![]));
}

#[test]
fn a_failing_cli_is_an_error_and_stops_before_routed() {
    let s = Setup::new(1);
    assert_eq!(s.run("connected", "wan"), (1, vec![format!("{C} fibre up")]));
    assert_eq!(s.run("ifdown", "wan").0, 1);
}
