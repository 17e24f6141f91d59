//! The confinement-related fields of Linux's `/proc/self/status`: what the kernel says is in
//! force, as opposed to what this process believes it applied.

/// The fields of `/proc/self/status` that describe confinement.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcStatus {
    /// Real, effective, saved and filesystem uid.
    pub uids: [u32; 4],
    /// Real, effective, saved and filesystem gid.
    pub gids: [u32; 4],
    pub groups: Vec<u32>,
    pub threads: u64,
    pub cap_inheritable: u64,
    pub cap_permitted: u64,
    pub cap_effective: u64,
    pub cap_bounding: u64,
    pub cap_ambient: u64,
    pub no_new_privs: bool,
    /// 0 disabled, 1 strict, 2 filter.
    pub seccomp: u8,
    /// Number of seccomp filters attached (kernels ≥ 5.9; 0 when the line is absent).
    pub seccomp_filters: u32,
}

fn ids(value: &str, field: &str) -> Result<[u32; 4], String> {
    let v: Vec<u32> = value
        .split_whitespace()
        .map(|s| s.parse::<u32>().map_err(|_| format!("{field}: bad id {s:?}")))
        .collect::<Result<_, _>>()?;
    <[u32; 4]>::try_from(v).map_err(|_| format!("{field}: expected 4 ids, found {value:?}"))
}

fn hex(value: &str, field: &str) -> Result<u64, String> {
    u64::from_str_radix(value.trim(), 16).map_err(|_| format!("{field}: bad mask {value:?}"))
}

impl ProcStatus {
    /// Parse the text of `/proc/<pid>/status`. Every field but `Seccomp_filters` must be
    /// present: a kernel that does not say is not trusted to have applied it.
    pub fn parse(text: &str) -> Result<ProcStatus, String> {
        let mut s = ProcStatus::default();
        let mut seen: Vec<&str> = Vec::new();
        for line in text.lines() {
            let Some((field, value)) = line.split_once(':') else { continue };
            let value = value.trim();
            match field {
                "Uid" => s.uids = ids(value, field)?,
                "Gid" => s.gids = ids(value, field)?,
                "Groups" => {
                    s.groups = value
                        .split_whitespace()
                        .map(|g| g.parse::<u32>().map_err(|_| format!("Groups: bad gid {g:?}")))
                        .collect::<Result<_, _>>()?;
                }
                "Threads" => {
                    s.threads =
                        value.parse().map_err(|_| format!("Threads: bad count {value:?}"))?;
                }
                "CapInh" => s.cap_inheritable = hex(value, field)?,
                "CapPrm" => s.cap_permitted = hex(value, field)?,
                "CapEff" => s.cap_effective = hex(value, field)?,
                "CapBnd" => s.cap_bounding = hex(value, field)?,
                "CapAmb" => s.cap_ambient = hex(value, field)?,
                "NoNewPrivs" => s.no_new_privs = value == "1",
                "Seccomp" => {
                    s.seccomp =
                        value.parse().map_err(|_| format!("Seccomp: bad mode {value:?}"))?;
                }
                "Seccomp_filters" => {
                    s.seccomp_filters =
                        value.parse().map_err(|_| format!("Seccomp_filters: bad {value:?}"))?;
                }
                _ => continue,
            }
            seen.push(field);
        }
        for required in [
            "Uid",
            "Gid",
            "Groups",
            "Threads",
            "CapInh",
            "CapPrm",
            "CapEff",
            "CapBnd",
            "CapAmb",
            "NoNewPrivs",
            "Seccomp",
        ] {
            if !seen.contains(&required) {
                return Err(format!("no {required}: line"));
            }
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFINED: &str = "Name:\tstatecull-engi\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t42\nUid:\t65534\t65534\t65534\t65534\nGid:\t65534\t65534\t65534\t65534\nFDSize:\t64\nGroups:\t65534 \nThreads:\t1\nCapInh:\t0000000000000000\nCapPrm:\t0000000000001000\nCapEff:\t0000000000001000\nCapBnd:\t0000000000001000\nCapAmb:\t0000000000000000\nNoNewPrivs:\t1\nSeccomp:\t2\nSeccomp_filters:\t2\nSpeculation_Store_Bypass:\tthread vulnerable\n";

    #[test]
    fn reads_the_confinement_fields() {
        let s = ProcStatus::parse(CONFINED).unwrap();
        assert_eq!(s.uids, [65534; 4]);
        assert_eq!(s.gids, [65534; 4]);
        assert_eq!(s.groups, vec![65534]);
        assert_eq!(s.threads, 1);
        assert_eq!(s.cap_effective, 1 << 12);
        assert_eq!(s.cap_bounding, 1 << 12);
        assert_eq!(s.cap_ambient, 0);
        assert!(s.no_new_privs);
        assert_eq!(s.seccomp, 2);
        assert_eq!(s.seccomp_filters, 2);
    }

    #[test]
    fn empty_groups_and_missing_fields() {
        let root = CONFINED.replace("Groups:\t65534 \n", "Groups:\t\n");
        assert_eq!(ProcStatus::parse(&root).unwrap().groups, Vec::<u32>::new());
        let no_nnp = CONFINED.replace("NoNewPrivs:\t1\n", "");
        assert!(ProcStatus::parse(&no_nnp).unwrap_err().contains("NoNewPrivs"));
        let bad = CONFINED.replace("Uid:\t65534\t65534\t65534\t65534", "Uid:\t1\t2");
        assert!(ProcStatus::parse(&bad).unwrap_err().contains("expected 4"));
        let bad = CONFINED.replace("CapEff:\t0000000000001000", "CapEff:\tzz");
        assert!(ProcStatus::parse(&bad).unwrap_err().contains("CapEff"));
    }

    #[test]
    fn reads_this_process() {
        if cfg!(target_os = "linux") {
            let text = std::fs::read_to_string("/proc/self/status").unwrap();
            let s = ProcStatus::parse(&text).unwrap();
            assert!(s.threads >= 1);
        }
    }
}
