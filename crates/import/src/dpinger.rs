//! Where pfSense and OPNsense put a gateway's dpinger status socket.
//!
//! * pfSense (`start_dpinger()` in `src/etc/inc/gwlb.inc`): the prefix is
//!   `/var/run/dpinger_NAME~SOURCE~MONITOR`, where SOURCE is the address dpinger binds
//!   (`-B`: the interface's IPv4 address, or for IPv6 its global address, or its link-local
//!   address with `%IF` when the monitor is link-local) and MONITOR the monitored address
//!   (link-local with `%IF`). If that prefix is longer than 95 bytes (a Unix socket path
//!   must fit `sun_path`), SOURCE is replaced by the first 8 hex digits of its MD5. The
//!   socket is the prefix plus `.sock`.
//! * OPNsense (`dpinger_configure_do()` in `src/etc/inc/plugins.inc.d/dpinger.inc`):
//!   `/var/run/dpinger_NAME.sock`, whatever the addresses.

/// pfSense's socket path for gateway `name` with dpinger bound to `source` probing
/// `monitor` (both as dpinger is given them, zone included).
pub(crate) fn pfsense_socket(name: &str, source: &str, monitor: &str) -> String {
    let prefix = format!("/var/run/dpinger_{name}~{source}~{monitor}");
    if prefix.len() > 95 {
        let digest = md5(source.as_bytes());
        let hex: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
        format!("/var/run/dpinger_{name}~{hex}~{monitor}.sock")
    } else {
        format!("{prefix}.sock")
    }
}

/// OPNsense's socket path for gateway `name`.
pub(crate) fn opnsense_socket(name: &str) -> String {
    format!("/var/run/dpinger_{name}.sock")
}

/// MD5 (RFC 1321), as PHP's `md5()` computes it; only for pfSense's shortened socket names.
fn md5(input: &[u8]) -> [u8; 16] {
    const S: [u32; 64] = [
        7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 5, 9, 14, 20, 5, 9, 14, 20, 5,
        9, 14, 20, 5, 9, 14, 20, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 6, 10,
        15, 21, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21,
    ];
    // K[i] = floor(abs(sin(i + 1)) * 2^32), as the RFC tabulates it.
    const K: [u32; 64] = [
        0xd76aa478, 0xe8c7b756, 0x242070db, 0xc1bdceee, 0xf57c0faf, 0x4787c62a, 0xa8304613,
        0xfd469501, 0x698098d8, 0x8b44f7af, 0xffff5bb1, 0x895cd7be, 0x6b901122, 0xfd987193,
        0xa679438e, 0x49b40821, 0xf61e2562, 0xc040b340, 0x265e5a51, 0xe9b6c7aa, 0xd62f105d,
        0x02441453, 0xd8a1e681, 0xe7d3fbc8, 0x21e1cde6, 0xc33707d6, 0xf4d50d87, 0x455a14ed,
        0xa9e3e905, 0xfcefa3f8, 0x676f02d9, 0x8d2a4c8a, 0xfffa3942, 0x8771f681, 0x6d9d6122,
        0xfde5380c, 0xa4beea44, 0x4bdecfa9, 0xf6bb4b60, 0xbebfbc70, 0x289b7ec6, 0xeaa127fa,
        0xd4ef3085, 0x04881d05, 0xd9d4d039, 0xe6db99e5, 0x1fa27cf8, 0xc4ac5665, 0xf4292244,
        0x432aff97, 0xab9423a7, 0xfc93a039, 0x655b59c3, 0x8f0ccc92, 0xffeff47d, 0x85845dd1,
        0x6fa87e4f, 0xfe2ce6e0, 0xa3014314, 0x4e0811a1, 0xf7537e82, 0xbd3af235, 0x2ad7d2bb,
        0xeb86d391,
    ];
    let mut message = input.to_vec();
    let bits = (input.len() as u64).wrapping_mul(8);
    message.push(0x80);
    while message.len() % 64 != 56 {
        message.push(0);
    }
    message.extend_from_slice(&bits.to_le_bytes());
    let mut state: [u32; 4] = [0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476];
    for block in message.chunks_exact(64) {
        let mut m = [0u32; 16];
        for (word, bytes) in m.iter_mut().zip(block.chunks_exact(4)) {
            *word = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        }
        let [mut a, mut b, mut c, mut d] = state;
        for i in 0..64 {
            let (f, g) = match i / 16 {
                0 => ((b & c) | (!b & d), i),
                1 => ((d & b) | (!d & c), (5 * i + 1) % 16),
                2 => (b ^ c ^ d, (3 * i + 5) % 16),
                _ => (c ^ (b | !d), (7 * i) % 16),
            };
            let f = f.wrapping_add(a).wrapping_add(K[i]).wrapping_add(m[g]);
            a = d;
            d = c;
            c = b;
            b = b.wrapping_add(f.rotate_left(S[i]));
        }
        for (s, v) in state.iter_mut().zip([a, b, c, d]) {
            *s = s.wrapping_add(v);
        }
    }
    let mut out = [0u8; 16];
    for (chunk, word) in out.chunks_exact_mut(4).zip(state) {
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(d: [u8; 16]) -> String {
        d.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn md5_matches_rfc_1321_vectors() {
        assert_eq!(hex(md5(b"")), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(hex(md5(b"abc")), "900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(hex(md5(b"message digest")), "f96b697d7cb7938d525a2f31aaf161d0");
        assert_eq!(
            hex(md5(
                b"12345678901234567890123456789012345678901234567890123456789012345678901234567890"
            )),
            "57edf4a22be3c955ac49da2e2107b67a"
        );
    }

    #[test]
    fn pfsense_names_sockets_by_source_and_monitor() {
        assert_eq!(
            pfsense_socket("WAN1", "198.51.100.1", "192.0.2.53"),
            "/var/run/dpinger_WAN1~198.51.100.1~192.0.2.53.sock"
        );
        // Long IPv6 pairs are shortened as gwlb.inc does: md5 of the source, 8 hex digits.
        let src = "2001:db8:aaaa:bbbb:cccc:dddd:eeee:1";
        let mon = "2001:db8:ffff:eeee:dddd:cccc:bbbb:2";
        let long = pfsense_socket("WAN6_DHCP6_LONGNAME", src, mon);
        // md5("2001:db8:aaaa:bbbb:cccc:dddd:eeee:1") = 2d3689f8..., computed independently.
        assert_eq!(long, format!("/var/run/dpinger_WAN6_DHCP6_LONGNAME~2d3689f8~{mon}.sock"));
        assert!(!long.contains(src));
    }

    #[test]
    fn opnsense_names_sockets_by_gateway_only() {
        assert_eq!(opnsense_socket("WAN_DHCP"), "/var/run/dpinger_WAN_DHCP.sock");
    }
}
