//! Landlock: the filesystem and TCP ports are closed, abstract Unix sockets and signals are
//! scoped to the sandbox.
//!
//! # Why the ruleset is written for ABI 6
//!
//! The `landlock` crate knows ABIs up to 10 and, in best-effort mode, enforces the
//! intersection of what we ask and what the kernel has. We ask for everything ABI 6 defines
//! (Linux 6.12): all 16 filesystem rights, TCP bind/connect (ABI 4) and both scopes (ABI 6).
//! ABIs 7 and 8 add no access right (audit logging, thread sync). ABI 9's `ResolveUnix`
//! would forbid connecting to *pathname* Unix sockets, which the engine must do to reach a
//! restarted broker and dpinger's status sockets, and which `Plan` does not describe yet;
//! ABI 10's UDP rights are not needed (no UDP socket exists, and none can be created:
//! seccomp). Asking for rights we have not tested against the daemons would make a kernel
//! upgrade break them, which is what the crate's documentation warns against.

use landlock::{
    ABI, Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, LandlockStatus,
    PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope,
};

use crate::{Plan, Role, SandboxError};

/// The ABI whose rights are requested (see the module documentation).
pub const TARGET_ABI: ABI = ABI::V6;

/// What Landlock enforces after [`apply`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The kernel's ABI (0 when Landlock is not available).
    pub kernel_abi: i32,
    /// Fully enforced: every requested restriction is in force.
    pub fully_enforced: bool,
    /// One line for the report.
    pub description: String,
}

fn ll_err(step: &str, e: impl std::fmt::Display) -> SandboxError {
    SandboxError::Landlock { step: step.to_owned(), reason: e.to_string() }
}

/// What an ABI lacks of what we ask, for the report.
fn missing(abi: i32) -> Vec<&'static str> {
    let mut m = Vec::new();
    if abi < 2 {
        m.push("cross-directory rename/link (ABI 2)");
    }
    if abi < 3 {
        m.push("truncate (ABI 3)");
    }
    if abi < 4 {
        m.push("TCP bind/connect (ABI 4)");
    }
    if abi < 5 {
        m.push("device ioctls (ABI 5)");
    }
    if abi < 6 {
        m.push("abstract Unix socket and signal scoping (ABI 6)");
    }
    m
}

/// Build and enforce the role's ruleset on the calling thread (and its future threads).
/// Needs `no_new_privs` (set before) and a single-threaded process (checked before).
pub fn apply(plan: &Plan) -> Result<Outcome, SandboxError> {
    let abi = TARGET_ABI;
    let read_file: BitFlags<AccessFs> = AccessFs::ReadFile.into();
    let read_dir: BitFlags<AccessFs> = AccessFs::ReadFile | AccessFs::ReadDir;
    // Open every readable path first: a missing one is an error, not a silently smaller
    // sandbox, and is reported with its name.
    let mut rules = Vec::new();
    if plan.role == Role::Engine {
        for p in &plan.readable_paths {
            let meta = std::fs::metadata(p).map_err(|e| SandboxError::ReadablePath {
                path: p.clone(),
                reason: e.to_string(),
            })?;
            let fd = PathFd::new(p).map_err(|e| SandboxError::ReadablePath {
                path: p.clone(),
                reason: e.to_string(),
            })?;
            rules.push(PathBeneath::new(fd, if meta.is_dir() { read_dir } else { read_file }));
        }
    }
    let created = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(abi))
        .map_err(|e| ll_err("handling filesystem access", e))?
        .handle_access(AccessNet::from_all(abi))
        .map_err(|e| ll_err("handling TCP bind/connect", e))?
        .scope(Scope::from_all(abi))
        .map_err(|e| ll_err("scoping abstract Unix sockets and signals", e))?
        .create()
        .map_err(|e| ll_err("creating the ruleset", e))?
        .add_rules(rules.into_iter().map(Ok::<_, landlock::RulesetError>))
        .map_err(|e| ll_err("adding the readable paths", e))?;
    let status = created.restrict_self().map_err(|e| ll_err("enforcing the ruleset", e))?;
    let kernel_abi = match status.landlock {
        LandlockStatus::Available { effective_abi, kernel_abi } => {
            kernel_abi.unwrap_or(effective_abi as i32)
        }
        LandlockStatus::NotEnabled | LandlockStatus::NotImplemented => 0,
    };
    let what = match plan.role {
        Role::Engine if !plan.readable_paths.is_empty() => format!(
            "filesystem denied except reading {}",
            plan.readable_paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        _ => "filesystem denied".to_owned(),
    };
    let fully_enforced = status.ruleset == RulesetStatus::FullyEnforced;
    let description = match (status.ruleset, status.landlock) {
        (RulesetStatus::FullyEnforced, _) => format!(
            "ABI {} ruleset on a kernel with ABI {kernel_abi}, fully enforced: {what}, TCP bind/connect denied, abstract Unix sockets and signals scoped to the sandbox",
            abi as i32
        ),
        (RulesetStatus::PartiallyEnforced, _) => format!(
            "kernel ABI {kernel_abi}, partially enforced: {what} with the rights this kernel has; NOT enforced: {}",
            missing(kernel_abi).join(", ")
        ),
        (RulesetStatus::NotEnforced, LandlockStatus::NotEnabled) => {
            "not supported by this kernel (built in but not enabled at boot: add landlock to the lsm= kernel parameter)".to_owned()
        }
        (RulesetStatus::NotEnforced, LandlockStatus::NotImplemented) => {
            "not supported by this kernel (not built in: CONFIG_SECURITY_LANDLOCK)".to_owned()
        }
        (RulesetStatus::NotEnforced, LandlockStatus::Available { .. }) => {
            return Err(ll_err(
                "enforcing the ruleset",
                format!("the kernel has Landlock ABI {kernel_abi} but nothing was enforced"),
            ));
        }
    };
    Ok(Outcome { kernel_abi, fully_enforced, description })
}
