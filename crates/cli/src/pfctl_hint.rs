//! pfctl's spelling of a kill (`pfctl -k gateway -k 198.51.100.1`), recognised on a command
//! line clap refused, and the statecull command that does the same. Pure: arguments in, a
//! sentence out.

/// The statecull equivalent of pfctl's `-k` arguments in `args` (the whole command line),
/// or `None` when there is no `-k` in it. pfctl(8): `-k host [-k host]` kills the states
/// from the first host (to the second); `-k label -k L`, `-k gateway -k IP`, `-k id -k ID`
/// and `-k key -k KEY` name what to match.
pub fn pfctl_hint(args: &[String]) -> Option<String> {
    let mut values: Vec<&str> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "-k" {
            values.push(it.next().map_or("", String::as_str));
        } else if let Some(v) = a.strip_prefix("-k")
            && !v.is_empty()
            && !a.starts_with("--")
        {
            values.push(v);
        }
    }
    let first = *values.first()?;
    let second = values.get(1).copied();
    let kill = "statecull broker kill";
    let hint = match (first, second) {
        ("gateway", Some(ip)) if !ip.is_empty() => format!(
            "pfctl's `-k gateway -k {ip}` is `{kill} --gateway {ip}` (pf's route-to gateway; on \
             Linux conntrack, whose states carry no gateway, select the WAN by --mark or \
             --nat-addr)"
        ),
        ("label", Some(l)) if !l.is_empty() => {
            format!("pfctl's `-k label -k {l}` is `{kill} --label {l}` (pf)")
        }
        ("id" | "key", _) => format!(
            "pfctl's `-k {first}` has no statecull equivalent: statecull kills by selector \
             (`{kill} --src PREFIX --dst PREFIX --proto P --dport PORT ...`, see `{kill} --help`)"
        ),
        ("gateway" | "label", _) => {
            format!(
                "pfctl's `-k {first}` takes a second -k with the value; `{kill} --{first} VALUE`"
            )
        }
        ("", _) => format!("pfctl's -k needs a value; `{kill} --help` lists the selectors"),
        (host, Some(to)) if !to.is_empty() => format!(
            "pfctl's `-k {host} -k {to}` (the states from {host} to {to}) is `{kill} --src {host} \
             --dst {to}`"
        ),
        (host, _) => {
            format!("pfctl's `-k {host}` (the states from {host}) is `{kill} --src {host}`")
        }
    };
    Some(hint)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hint(line: &str) -> Option<String> {
        pfctl_hint(&line.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
    }

    #[test]
    fn gateway_kill_is_the_gateway_selector() {
        let h = hint("statecull broker -k gateway -k 198.51.100.1").expect("a hint");
        assert!(h.contains("`statecull broker kill --gateway 198.51.100.1`"), "{h}");
        assert!(h.contains("--mark or --nat-addr"), "{h}");
        let h = hint("statecull broker kill -kgateway -k198.51.100.1").expect("a hint");
        assert!(h.contains("--gateway 198.51.100.1`"), "{h}");
    }

    #[test]
    fn hosts_are_source_and_destination() {
        let h = hint("statecull broker kill -k 192.0.2.10").expect("a hint");
        assert!(h.ends_with("is `statecull broker kill --src 192.0.2.10`"), "{h}");
        let h = hint("statecull -k 192.0.2.0/24 -k 203.0.113.5").expect("a hint");
        assert!(h.contains("`statecull broker kill --src 192.0.2.0/24 --dst 203.0.113.5`"), "{h}");
    }

    #[test]
    fn labels_ids_and_missing_values() {
        let h = hint("statecull broker kill -k label -k voip").expect("a hint");
        assert!(h.contains("--label voip`"), "{h}");
        let h = hint("statecull broker kill -k id -k 12345").expect("a hint");
        assert!(h.contains("no statecull equivalent"), "{h}");
        let h = hint("statecull broker kill -k gateway").expect("a hint");
        assert!(h.contains("--gateway VALUE"), "{h}");
        let h = hint("statecull broker kill -k").expect("a hint");
        assert!(h.contains("needs a value"), "{h}");
    }

    #[test]
    fn no_k_no_hint() {
        assert_eq!(hint("statecull broker kill --kill 1"), None);
        assert_eq!(hint("statecull broker kill -x 1"), None);
    }
}
