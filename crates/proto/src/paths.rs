//! Where statecull's files live unless told otherwise, decided once per target OS.
//!
//! FreeBSD (and pfSense, OPNsense) follow hier(7) and the ports tree: runtime files under
//! `/var/run`, configuration of third-party software under `/usr/local/etc`. Linux follows
//! the FHS and systemd: `/run` and `/etc`. Every default path of every statecull program
//! (the broker's socket, the engine's control socket, the policy and broker configuration,
//! and the help texts showing them) comes from here, so a binary built for one OS shows and
//! uses that OS's paths. The rc.d scripts (`sandbox/profiles/rc.d`) and systemd units
//! (`sandbox/profiles/systemd`) spell the same paths; a test keeps them in step.
//!
//! The directory macros exist so that other crates can build help texts at compile time
//! with `concat!`; code uses the constants.

/// The runtime directory holding both sockets, as a literal (for `concat!`).
#[cfg(target_os = "freebsd")]
#[macro_export]
macro_rules! run_dir {
    () => {
        "/var/run/statecull"
    };
}

/// The runtime directory holding both sockets, as a literal (for `concat!`).
#[cfg(not(target_os = "freebsd"))]
#[macro_export]
macro_rules! run_dir {
    () => {
        "/run/statecull"
    };
}

/// The configuration directory (policy, broker configuration), as a literal (for `concat!`).
#[cfg(target_os = "freebsd")]
#[macro_export]
macro_rules! config_dir {
    () => {
        "/usr/local/etc/statecull"
    };
}

/// The configuration directory (policy, broker configuration), as a literal (for `concat!`).
#[cfg(not(target_os = "freebsd"))]
#[macro_export]
macro_rules! config_dir {
    () => {
        "/etc/statecull"
    };
}

/// The broker's socket, as a literal (for `concat!` in help texts).
#[macro_export]
macro_rules! broker_socket {
    () => {
        concat!($crate::run_dir!(), "/broker.sock")
    };
}

/// The engine's control socket, as a literal (for `concat!` in help texts).
#[macro_export]
macro_rules! control_socket {
    () => {
        concat!($crate::run_dir!(), "/engine.sock")
    };
}

/// The policy file, as a literal (for `concat!` in help texts).
#[macro_export]
macro_rules! policy_file {
    () => {
        concat!($crate::config_dir!(), "/policy.toml")
    };
}

/// The broker's configuration file, as a literal (for `concat!` in help texts).
#[macro_export]
macro_rules! broker_config {
    () => {
        concat!($crate::config_dir!(), "/broker.toml")
    };
}

/// The default paths of one operating system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Runtime directory of both sockets.
    pub run_dir: &'static str,
    /// Configuration directory.
    pub config_dir: &'static str,
    /// Where the broker listens (the broker's default and its clients').
    pub broker_socket: &'static str,
    /// Where the engine listens for `statecull status|plan|gateway|events`.
    pub control_socket: &'static str,
    /// The engine's policy, as the service scripts pass it.
    pub policy_file: &'static str,
    /// The broker's configuration, as the service scripts pass it.
    pub broker_config: &'static str,
}

/// FreeBSD, pfSense, OPNsense: hier(7) and the ports tree's `PREFIX=/usr/local`.
pub const FREEBSD: Layout = Layout {
    run_dir: "/var/run/statecull",
    config_dir: "/usr/local/etc/statecull",
    broker_socket: "/var/run/statecull/broker.sock",
    control_socket: "/var/run/statecull/engine.sock",
    policy_file: "/usr/local/etc/statecull/policy.toml",
    broker_config: "/usr/local/etc/statecull/broker.toml",
};

/// Linux: the FHS and systemd (`RuntimeDirectory=statecull`).
pub const LINUX: Layout = Layout {
    run_dir: "/run/statecull",
    config_dir: "/etc/statecull",
    broker_socket: "/run/statecull/broker.sock",
    control_socket: "/run/statecull/engine.sock",
    policy_file: "/etc/statecull/policy.toml",
    broker_config: "/etc/statecull/broker.toml",
};

/// The layout this binary was built for (what the constants below and the macros spell).
pub const THIS_OS: Layout = Layout {
    run_dir: run_dir!(),
    config_dir: config_dir!(),
    broker_socket: broker_socket!(),
    control_socket: control_socket!(),
    policy_file: policy_file!(),
    broker_config: broker_config!(),
};

/// Runtime directory of both sockets on this OS.
pub const RUN_DIR: &str = THIS_OS.run_dir;
/// Configuration directory on this OS.
pub const CONFIG_DIR: &str = THIS_OS.config_dir;
/// Where the broker listens (the broker's default and its clients').
pub const BROKER_SOCKET: &str = THIS_OS.broker_socket;
/// Where the engine listens for `statecull status|plan|gateway|events`.
pub const CONTROL_SOCKET: &str = THIS_OS.control_socket;
/// The engine's policy, as the service scripts pass it.
pub const POLICY_FILE: &str = THIS_OS.policy_file;
/// The broker's configuration, as the service scripts pass it.
pub const BROKER_CONFIG: &str = THIS_OS.broker_config;

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn this_os_is_the_target_os_layout() {
        let expected = if cfg!(target_os = "freebsd") { FREEBSD } else { LINUX };
        assert_eq!(THIS_OS, expected);
        assert_eq!(BROKER_SOCKET, expected.broker_socket);
        assert_eq!(CONTROL_SOCKET, expected.control_socket);
    }

    #[test]
    fn each_layout_is_consistent() {
        for l in [FREEBSD, LINUX] {
            for socket in [l.broker_socket, l.control_socket] {
                assert_eq!(Path::new(socket).parent(), Some(Path::new(l.run_dir)), "{l:?}");
            }
            for file in [l.policy_file, l.broker_config] {
                assert_eq!(Path::new(file).parent(), Some(Path::new(l.config_dir)), "{l:?}");
            }
        }
        assert!(FREEBSD.run_dir.starts_with("/var/run/"));
        assert!(FREEBSD.config_dir.starts_with("/usr/local/etc/"));
        assert!(LINUX.run_dir.starts_with("/run/"));
        assert!(LINUX.config_dir.starts_with("/etc/"));
    }
}
