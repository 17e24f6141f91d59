//! A large valid policy, for the loading-scale test and benchmark: `n` gateways with marks,
//! NAT addresses (both families) and monitor targets, one group of all of them over every
//! tier, one group per pair of gateways, and a few protected flows.

use std::fmt::Write as _;

/// The policy text with `n` gateways (n ≤ 60,000: addresses are 10.A.B.254).
pub(crate) fn policy_text(n: usize) -> String {
    let mut t = String::with_capacity(n * 400);
    t.push_str("[routing]\nconfirm = \"signal\"\n\n");
    for i in 0..n {
        let (a, b) = (i / 250, i % 250);
        let _ = write!(
            t,
            "[[gateway]]\nname = \"gw{i}\"\ninterface = \"eth{i}\"\naddress = \"10.{a}.{b}.254\"\n\
             monitor = [\"10.{a}.{b}.254\", \"192.0.2.53\"]\nprobe_interval = \"1s\"\n\
             hold_down = \"5s\"\n\n[gateway.states]\nmark = \"{m:#x}/0xffff\"\n\
             nat_addr = [\"100.64.{a}.{b}\", \"2001:db8::{i:x}\"]\n\n",
            m = i + 1,
        );
    }
    t.push_str("[[group]]\nname = \"all\"\nmembers = [\n");
    for i in 0..n {
        let _ = writeln!(t, "  {{ gateway = \"gw{i}\", tier = {} }},", 1 + i % 15);
    }
    t.push_str("]\non_recovery = \"kill-unprotected\"\n\n");
    for k in 0..n / 2 {
        let _ = write!(
            t,
            "[[group]]\nname = \"pair{k}\"\nmembers = [{{ gateway = \"gw{}\", tier = 1 }}, \
             {{ gateway = \"gw{}\", tier = 2 }}]\n\n",
            2 * k,
            2 * k + 1
        );
    }
    t.push_str(
        "[[protect]]\nname = \"sip\"\nproto = \"udp\"\nports = [5060]\n\n\
         [[protect]]\nname = \"ssh\"\nproto = \"tcp\"\nports = [22]\nprefixes = [\"192.0.2.0/24\"]\n",
    );
    t
}
