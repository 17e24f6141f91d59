//! The libnv codec and the pf kill-request mapping (pf-kernel.md §3): the reference's worked
//! examples byte for byte, a literal port of libnv's packer as an oracle, round trips, every
//! unpacking rule, and the kernel's decoding of kill requests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proptest::collection::vec;
use proptest::prelude::*;
use statecull_pf::nv::{
    KernelErr, MAX_DEPTH, NvError, NvValue, Nvlist, kill_from_request, kill_request, killed_reply,
    nv_type, parse_killed_reply,
};
use statecull_pf::types::{PfKill, RuleAddr};

// ---------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------

fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
    assert_eq!(digits.len() % 2, 0, "odd hex digit count");
    digits
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
        .collect()
}

fn list(pairs: Vec<(&str, NvValue)>) -> Nvlist {
    let mut l = Nvlist::new();
    for (n, v) in pairs {
        l.add(n, v).unwrap();
    }
    l
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Builds nvlist bytes by hand (little-endian), patching every header's `size` at the end, so
/// that malformed pairs can be written while everything else stays consistent.
#[derive(Default)]
struct Raw {
    buf: Vec<u8>,
    headers: Vec<usize>,
}

impl Raw {
    fn header(mut self, flags: u8) -> Self {
        self.headers.push(self.buf.len());
        self.buf.extend_from_slice(&[0x6c, 0, flags]);
        self.buf.extend_from_slice(&[0; 16]);
        self
    }
    fn pair_bytes(
        mut self,
        ty: u8,
        namesize: u16,
        name: &[u8],
        datasize: u64,
        nitems: u64,
        payload: &[u8],
    ) -> Self {
        self.buf.push(ty);
        self.buf.extend_from_slice(&namesize.to_le_bytes());
        self.buf.extend_from_slice(&datasize.to_le_bytes());
        self.buf.extend_from_slice(&nitems.to_le_bytes());
        self.buf.extend_from_slice(name);
        self.buf.extend_from_slice(payload);
        self
    }
    fn pair(self, ty: u8, name: &str, datasize: u64, nitems: u64, payload: &[u8]) -> Self {
        let mut n = name.as_bytes().to_vec();
        n.push(0);
        let ns = u16::try_from(n.len()).unwrap();
        self.pair_bytes(ty, ns, &n, datasize, nitems, payload)
    }
    fn number(self, name: &str, v: u64) -> Self {
        self.pair(nv_type::NUMBER, name, 8, 0, &v.to_le_bytes())
    }
    fn marker(self, ty: u8) -> Self {
        self.pair(ty, "", 0, 0, &[])
    }
    fn up(self) -> Self {
        self.marker(nv_type::NVLIST_UP)
    }
    fn finish(mut self) -> Vec<u8> {
        let total = self.buf.len();
        for h in self.headers {
            let size = (total - h - 19) as u64;
            self.buf[h + 11..h + 19].copy_from_slice(&size.to_le_bytes());
        }
        self.buf
    }
}

fn unpack_err(bytes: &[u8]) -> NvError {
    match Nvlist::unpack(bytes) {
        Ok(l) => panic!("unpacked {l:?}, expected an error"),
        Err(e) => e,
    }
}

// ---------------------------------------------------------------------------------------
// A literal port of libnv's nvlist_size() and nvlist_xpack() (sys/contrib/libnv/nvlist.c),
// pointer-chasing included, used as an oracle for the recursive packer.
// ---------------------------------------------------------------------------------------

mod libnv {
    use statecull_pf::nv::{NvValue, Nvlist, nv_type};

    enum Data {
        Scalar { datasize: u64, nitems: u64, payload: Vec<u8> },
        Child(usize),
        Array(Vec<usize>),
    }

    struct Pair {
        name: String,
        ty: u8,
        list: usize,
        data: Data,
    }

    #[derive(Default)]
    struct List {
        pairs: Vec<usize>,
        parent: Option<usize>,
        array_next: Option<usize>,
        in_array: bool,
    }

    #[derive(Default)]
    struct Arena {
        lists: Vec<List>,
        pairs: Vec<Pair>,
    }

    impl Arena {
        fn add_list(&mut self, nvl: &Nvlist, parent: Option<usize>) -> usize {
            let id = self.lists.len();
            self.lists.push(List { parent, ..List::default() });
            for (name, value) in nvl.iter() {
                let pid = self.pairs.len();
                let ty = value.type_code();
                self.pairs.push(Pair {
                    name: name.to_owned(),
                    ty,
                    list: id,
                    data: Data::Array(vec![]),
                });
                self.lists[id].pairs.push(pid);
                let data = match value {
                    NvValue::Nvlist(c) => Data::Child(self.add_list(c, Some(pid))),
                    NvValue::NvlistArray(els) => {
                        let ids: Vec<usize> =
                            els.iter().map(|e| self.add_list(e, Some(pid))).collect();
                        for w in ids.windows(2) {
                            self.lists[w[0]].array_next = Some(w[1]);
                        }
                        for &i in &ids {
                            self.lists[i].in_array = true;
                        }
                        Data::Array(ids)
                    }
                    other => scalar(other),
                };
                self.pairs[pid].data = data;
            }
            id
        }

        fn first(&self, l: usize) -> Option<usize> {
            self.lists[l].pairs.first().copied()
        }
        fn next(&self, l: usize, p: usize) -> Option<usize> {
            let ps = &self.lists[l].pairs;
            let i = ps.iter().position(|&x| x == p).unwrap();
            ps.get(i + 1).copied()
        }
        /// nvlist_get_pararr(): (list, cookie).
        fn pararr(&self, l: usize) -> (Option<usize>, Option<usize>) {
            if let Some(n) = self.lists[l].array_next {
                return (Some(n), None);
            }
            match self.lists[l].parent {
                Some(p) => (Some(self.pairs[p].list), Some(p)),
                None => (None, None),
            }
        }

        fn size(&self, start: usize) -> u64 {
            let mut size = 19u64;
            let mut nvl = start;
            let mut nvp = self.first(nvl);
            'outer: while let Some(p) = nvp {
                let pair = &self.pairs[p];
                size += 19 + pair.name.len() as u64 + 1;
                match &pair.data {
                    Data::Child(c) => {
                        size += 19 + 20;
                        if let Some(t) = self.first(*c) {
                            nvl = *c;
                            nvp = Some(t);
                            continue;
                        }
                    }
                    Data::Array(els) => {
                        let n = els.len() as u64;
                        size += 20 * n + 19 * n;
                        if let Some((el, t)) =
                            els.iter().find_map(|&e| self.first(e).map(|t| (e, t)))
                        {
                            nvl = el;
                            nvp = Some(t);
                            continue;
                        }
                    }
                    Data::Scalar { datasize, .. } => size += datasize,
                }
                let mut cur = p;
                loop {
                    if let Some(n) = self.next(nvl, cur) {
                        nvp = Some(n);
                        break;
                    }
                    let (mut cookie, mut np);
                    loop {
                        let (l, ck) = self.pararr(nvl);
                        cookie = ck;
                        let Some(l) = l else { break 'outer };
                        nvl = l;
                        np = if self.lists[nvl].in_array && cookie.is_none() {
                            self.first(nvl)
                        } else {
                            cookie
                        };
                        if np.is_some() {
                            break;
                        }
                    }
                    if self.lists[nvl].in_array && cookie.is_none() {
                        nvp = np;
                        break;
                    }
                    cur = np.unwrap();
                }
            }
            size
        }
    }

    fn scalar(v: &NvValue) -> Data {
        let (datasize, nitems, payload): (usize, usize, Vec<u8>) = match v {
            NvValue::Null => (0, 0, vec![]),
            NvValue::Bool(b) => (1, 0, vec![u8::from(*b)]),
            NvValue::Number(n) => (8, 0, n.to_le_bytes().to_vec()),
            NvValue::String(s) => {
                let mut b = s.as_bytes().to_vec();
                b.push(0);
                (b.len(), 0, b)
            }
            NvValue::Binary(b) => (b.len(), 0, b.clone()),
            NvValue::BoolArray(a) => (a.len(), a.len(), a.iter().map(|b| u8::from(*b)).collect()),
            NvValue::NumberArray(a) => {
                (8 * a.len(), a.len(), a.iter().flat_map(|n| n.to_le_bytes()).collect())
            }
            NvValue::StringArray(a) => {
                let b: Vec<u8> = a
                    .iter()
                    .flat_map(|s| s.as_bytes().iter().copied().chain(std::iter::once(0)))
                    .collect();
                (b.len(), a.len(), b)
            }
            NvValue::Nvlist(_) | NvValue::NvlistArray(_) => unreachable!(),
        };
        Data::Scalar { datasize: datasize as u64, nitems: nitems as u64, payload }
    }

    struct Out {
        buf: Vec<u8>,
        left: u64,
    }

    impl Out {
        fn header(&mut self) {
            self.buf.extend_from_slice(&[0x6c, 0, 0]);
            self.buf.extend_from_slice(&0u64.to_le_bytes());
            self.buf.extend_from_slice(&(self.left - 19).to_le_bytes());
            self.left -= 19;
        }
        fn pair_header(&mut self, ty: u8, name: &str, datasize: u64, nitems: u64) {
            self.buf.push(ty);
            self.buf.extend_from_slice(&(u16::try_from(name.len() + 1).unwrap()).to_le_bytes());
            self.buf.extend_from_slice(&datasize.to_le_bytes());
            self.buf.extend_from_slice(&nitems.to_le_bytes());
            self.buf.extend_from_slice(name.as_bytes());
            self.buf.push(0);
            self.left -= 19 + name.len() as u64 + 1;
        }
        fn bytes(&mut self, b: &[u8]) {
            self.buf.extend_from_slice(b);
            self.left -= b.len() as u64;
        }
    }

    /// nvlist_size() of the root.
    pub(super) fn nvlist_size(nvl: &Nvlist) -> u64 {
        let mut a = Arena::default();
        let root = a.add_list(nvl, None);
        a.size(root)
    }

    /// nvlist_xpack() on a little-endian host.
    pub(super) fn pack(nvl: &Nvlist) -> Vec<u8> {
        let mut a = Arena::default();
        let root = a.add_list(nvl, None);
        let size = a.size(root);
        let mut o = Out { buf: vec![], left: size };
        o.header();
        let mut nvl = root;
        let mut nvp = a.first(nvl);
        'outer: while let Some(p) = nvp {
            let pair = &a.pairs[p];
            match &pair.data {
                Data::Scalar { datasize, nitems, payload } => {
                    o.pair_header(pair.ty, &pair.name, *datasize, *nitems);
                    o.bytes(payload);
                }
                Data::Child(c) => {
                    // nvpair_init_datasize()
                    o.pair_header(pair.ty, &pair.name, a.size(*c), 0);
                    o.header();
                    if let Some(t) = a.first(*c) {
                        nvl = *c;
                        nvp = Some(t);
                        continue;
                    }
                    up(&mut o);
                }
                Data::Array(els) => {
                    o.pair_header(pair.ty, &pair.name, 0, els.len() as u64);
                    let mut found = None;
                    for &e in els {
                        o.header();
                        if let Some(t) = a.first(e) {
                            found = Some((e, t));
                            break;
                        }
                        next(&mut o);
                    }
                    if let Some((e, t)) = found {
                        nvl = e;
                        nvp = Some(t);
                        continue;
                    }
                }
            }
            let mut cur = p;
            loop {
                if let Some(n) = a.next(nvl, cur) {
                    nvp = Some(n);
                    break;
                }
                let (mut cookie, mut np);
                loop {
                    if a.lists[nvl].in_array {
                        next(&mut o);
                    }
                    let (l, ck) = a.pararr(nvl);
                    cookie = ck;
                    let Some(l) = l else { break 'outer };
                    nvl = l;
                    if a.lists[nvl].in_array && cookie.is_none() {
                        np = a.first(nvl);
                        o.header();
                    } else if a.pairs[cookie.unwrap()].ty != nv_type::NVLIST_ARRAY {
                        up(&mut o);
                        np = cookie;
                    } else {
                        np = cookie;
                    }
                    if np.is_some() {
                        break;
                    }
                }
                if a.lists[nvl].in_array && cookie.is_none() {
                    nvp = np;
                    break;
                }
                cur = np.unwrap();
            }
        }
        assert_eq!(o.left, 0, "libnv port: size and packing disagree");
        o.buf
    }

    fn up(o: &mut Out) {
        o.pair_header(nv_type::NVLIST_UP, "", 0, 0);
    }
    fn next(o: &mut Out) {
        o.pair_header(nv_type::NVLIST_ARRAY_NEXT, "", 0, 0);
    }
}

// ---------------------------------------------------------------------------------------
// strategies
// ---------------------------------------------------------------------------------------

fn build(pairs: Vec<(String, NvValue)>) -> Nvlist {
    let mut l = Nvlist::new();
    for (n, v) in pairs {
        match l.add(&n, v) {
            Ok(()) | Err(NvError::Duplicate { .. }) => {}
            Err(e) => panic!("strategy built an invalid pair: {e}"),
        }
    }
    l
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![4 => "[a-z_]{1,8}", 1 => "[^\0]{1,4}"]
}

fn text() -> impl Strategy<Value = String> {
    "[^\0]{0,12}"
}

fn leaf() -> impl Strategy<Value = NvValue> {
    prop_oneof![
        Just(NvValue::Null),
        any::<bool>().prop_map(NvValue::Bool),
        any::<u64>().prop_map(NvValue::Number),
        text().prop_map(NvValue::String),
        vec(any::<u8>(), 1..20).prop_map(NvValue::Binary),
        vec(any::<bool>(), 1..6).prop_map(NvValue::BoolArray),
        vec(any::<u64>(), 1..6).prop_map(NvValue::NumberArray),
        vec(text(), 1..5).prop_map(NvValue::StringArray),
    ]
}

fn value() -> impl Strategy<Value = NvValue> {
    leaf().prop_recursive(4, 64, 6, |inner| {
        let sub = vec((name(), inner), 0..6).prop_map(build).boxed();
        prop_oneof![
            3 => sub.clone().prop_map(NvValue::Nvlist),
            1 => vec(sub, 1..4).prop_map(NvValue::NvlistArray),
        ]
    })
}

fn nvlist() -> impl Strategy<Value = Nvlist> {
    vec((name(), value()), 0..8).prop_map(build)
}

fn rule_addr() -> impl Strategy<Value = RuleAddr> {
    (any::<[u8; 16]>(), any::<[u8; 16]>(), any::<[u16; 2]>(), any::<bool>(), 0u8..=9)
        .prop_map(|(addr, mask, port, neg, port_op)| RuleAddr { addr, mask, port, neg, port_op })
}

fn pf_kill() -> impl Strategy<Value = PfKill> {
    (
        (any::<u64>(), any::<u32>(), any::<u8>(), any::<u8>(), any::<u8>()),
        (rule_addr(), rule_addr(), rule_addr()),
        ("[a-z0-9._]{0,15}", "[ -~]{0,63}", any::<bool>(), any::<bool>()),
    )
        .prop_map(
            |(
                (id, creatorid, direction, af, proto),
                (src, dst, rt_addr),
                (ifname, label, kill_match, nat),
            )| PfKill {
                id,
                creatorid,
                direction,
                af,
                proto,
                src,
                dst,
                rt_addr,
                ifname,
                label,
                kill_match,
                nat,
            },
        )
}

// ---------------------------------------------------------------------------------------
// the reference's examples (pf-kernel.md §3.1, §3.2)
// ---------------------------------------------------------------------------------------

#[test]
fn reference_nested_example_is_111_bytes() {
    let nvl = list(vec![("cmp", NvValue::Nvlist(list(vec![("id", NvValue::Number(5))])))]);
    let expected = hex(concat!(
        "6c 00 00 0000000000000000 5c00000000000000",
        "05 0400 3100000000000000 0000000000000000 636d7000",
        "6c 00 00 0000000000000000 3200000000000000",
        "03 0300 0800000000000000 0000000000000000 696400 0500000000000000",
        "ff 0100 0000000000000000 0000000000000000 00",
    ));
    let packed = nvl.pack().unwrap();
    assert_eq!(packed.len(), 111);
    assert_eq!(packed, expected);
    assert_eq!(le64(&packed, 19 + 3), 49, "NVLIST datasize = nvlist_size(child)");
    assert_eq!(le64(&packed, 42 + 11), 50, "child header size = bytes after it");
    assert_eq!(Nvlist::unpack(&expected).unwrap(), nvl);
    assert_eq!(libnv::pack(&nvl), expected);
}

#[test]
fn reference_killed_reply_is_53_bytes() {
    let expected = hex(concat!(
        "6c 00 00 0000000000000000 2200000000000000 03 0700 0800000000000000 ",
        "0000000000000000 6b696c6c656400 0300000000000000",
    ));
    let packed = killed_reply(3).pack().unwrap();
    assert_eq!(packed.len(), 53);
    assert_eq!(packed, expected);
    assert_eq!(parse_killed_reply(&Nvlist::unpack(&expected).unwrap()).unwrap(), 3);
}

fn reference_kill() -> PfKill {
    PfKill {
        af: statecull_pf::types::AF_INET,
        proto: 6,
        src: RuleAddr::prefix(&"192.0.2.7".parse().unwrap(), 32),
        kill_match: true,
        nat: false,
        ..PfKill::default()
    }
}

#[test]
fn libpfctl_style_kill_request_is_1869_bytes() {
    let k = reference_kill();
    let nvl = kill_request(&k);
    let names: Vec<&str> = nvl.iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        ["cmp", "af", "proto", "src", "dst", "rt_addr", "ifname", "label", "kill_match", "nat"]
    );
    let cmp: Vec<&str> = nvl.nvlist("cmp").unwrap().iter().map(|(n, _)| n).collect();
    assert_eq!(cmp, ["id", "creatorid", "direction"]);
    let src = nvl.nvlist("src").unwrap();
    let rule: Vec<&str> = src.iter().map(|(n, _)| n).collect();
    assert_eq!(rule, ["addr", "port", "neg", "port_op"]);
    let wrap: Vec<&str> = src.nvlist("addr").unwrap().iter().map(|(n, _)| n).collect();
    assert_eq!(wrap, ["type", "iflags", "addr", "mask"]);
    let a = src.nvlist("addr").unwrap().nvlist("addr").unwrap().binary("addr").unwrap();
    assert_eq!(a, [192, 0, 2, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    let m = src.nvlist("addr").unwrap().nvlist("mask").unwrap().binary("addr").unwrap();
    assert_eq!(&m[..4], [255; 4]);

    let packed = nvl.pack().unwrap();
    assert_eq!(packed.len(), 1869);
    assert_eq!(nvl.packed_len(), 1869);
    assert_eq!(packed, libnv::pack(&nvl));
    let back = Nvlist::unpack(&packed).unwrap();
    assert_eq!(back, nvl);
    assert_eq!(kill_from_request(&back).unwrap(), k);
}

#[test]
fn ports_travel_in_network_byte_order() {
    let mut k = reference_kill();
    k.dst.port = [443, 0x1234];
    k.dst.port_op = statecull_pf::types::port_op::EQ;
    let nvl = kill_request(&k);
    let ports = nvl.nvlist("dst").unwrap().number_array("port").unwrap();
    assert_eq!(ports, [u64::from(443u16.to_be()), u64::from(0x1234u16.to_be())]);
    #[cfg(target_endian = "little")]
    assert_eq!(ports, [0xbb01, 0x3412]);
    assert_eq!(kill_from_request(&nvl).unwrap().dst.port, [443, 0x1234]);
}

// ---------------------------------------------------------------------------------------
// libnv's NVLIST datasize
// ---------------------------------------------------------------------------------------

#[test]
fn nvlist_datasize_runs_past_the_child() {
    // {"a": {"x": 1}, "b": {"y": 2}}: nvlist_size(a) also counts b (pair, header, UP, y).
    let nvl = list(vec![
        ("a", NvValue::Nvlist(list(vec![("x", NvValue::Number(1))]))),
        ("b", NvValue::Nvlist(list(vec![("y", NvValue::Number(2))]))),
    ]);
    let p = nvl.pack().unwrap();
    assert_eq!(p.len(), 197);
    assert_eq!(le64(&p, 19 + 3), 19 + 29 + (21 + 19 + 29 + 20));
    assert_eq!(le64(&p, 108 + 3), 19 + 29);
    assert_eq!(p, libnv::pack(&nvl));
}

#[test]
fn empty_child_datasize_is_a_bare_header() {
    // nvlist_size() of an empty list never enters its loop: 19, whatever follows.
    let nvl = list(vec![("e", NvValue::Nvlist(Nvlist::new())), ("n", NvValue::Number(7))]);
    let p = nvl.pack().unwrap();
    assert_eq!(le64(&p, 19 + 3), 19);
    assert_eq!(p.len(), 19 + 21 + 19 + 20 + 29);
    assert_eq!(p, libnv::pack(&nvl));
    assert_eq!(Nvlist::unpack(&p).unwrap(), nvl);
}

#[test]
fn nvlist_inside_an_array_element() {
    let el0 = list(vec![("n", NvValue::Nvlist(list(vec![("z", NvValue::Null)])))]);
    let el1 = list(vec![("w", NvValue::Bool(true))]);
    let nvl = list(vec![
        ("arr", NvValue::NvlistArray(vec![el0, Nvlist::new(), el1])),
        ("t", NvValue::Null),
    ]);
    let p = nvl.pack().unwrap();
    assert_eq!(p, libnv::pack(&nvl));
    assert_eq!(Nvlist::unpack(&p).unwrap(), nvl);
    assert_eq!(p.len() as u64, libnv::nvlist_size(&nvl));
}

// ---------------------------------------------------------------------------------------
// building and reading
// ---------------------------------------------------------------------------------------

#[test]
fn add_refuses_what_libnv_cannot_carry() {
    let mut l = Nvlist::new();
    l.add("k", NvValue::Null).unwrap();
    assert!(
        matches!(l.add("k", NvValue::Number(1)), Err(NvError::Duplicate { name }) if name == "k")
    );
    assert!(l.add("K", NvValue::Null).is_ok(), "names are case-sensitive");
    assert!(matches!(l.add("", NvValue::Null), Err(NvError::InvalidName { .. })));
    assert!(matches!(l.add("a\0b", NvValue::Null), Err(NvError::InvalidName { .. })));
    assert!(l.add(&"x".repeat(2047), NvValue::Null).is_ok());
    assert!(matches!(l.add(&"y".repeat(2048), NvValue::Null), Err(NvError::InvalidName { .. })));
    for bad in [
        NvValue::String("a\0".into()),
        NvValue::Binary(vec![]),
        NvValue::BoolArray(vec![]),
        NvValue::NumberArray(vec![]),
        NvValue::StringArray(vec![]),
        NvValue::StringArray(vec!["ok".into(), "n\0o".into()]),
        NvValue::NvlistArray(vec![]),
    ] {
        assert!(matches!(l.add("v", bad), Err(NvError::InvalidValue { .. })));
    }
    assert!(l.get("v").is_none());
}

fn nested(depth: usize) -> Nvlist {
    let mut l = Nvlist::new();
    for _ in 0..depth {
        let mut outer = Nvlist::new();
        outer.add("a", NvValue::Nvlist(l)).unwrap();
        l = outer;
    }
    l
}

#[test]
fn depth_is_limited_when_building() {
    let deepest = nested(MAX_DEPTH);
    let p = deepest.pack().unwrap();
    assert_eq!(Nvlist::unpack(&p).unwrap(), deepest);
    let mut l = Nvlist::new();
    assert!(matches!(
        l.add("a", NvValue::Nvlist(deepest.clone())),
        Err(NvError::TooDeep { depth, .. }) if depth == MAX_DEPTH + 1
    ));
    assert!(matches!(
        l.add("a", NvValue::NvlistArray(vec![deepest])),
        Err(NvError::TooDeep { .. })
    ));
}

#[test]
fn typed_getters_name_the_key() {
    let l = list(vec![
        ("n", NvValue::Number(1)),
        ("b", NvValue::Bool(true)),
        ("s", NvValue::String("x".into())),
        ("bin", NvValue::Binary(vec![1])),
        ("na", NvValue::NumberArray(vec![1, 2])),
        ("l", NvValue::Nvlist(Nvlist::new())),
    ]);
    assert_eq!(l.number("n").unwrap(), 1);
    assert!(l.bool_("b").unwrap());
    assert_eq!(l.string("s").unwrap(), "x");
    assert_eq!(l.binary("bin").unwrap(), [1]);
    assert_eq!(l.number_array("na").unwrap(), [1, 2]);
    assert!(l.nvlist("l").unwrap().is_empty());
    let e = l.number("missing").unwrap_err();
    assert_eq!(e, NvError::MissingKey { name: "missing".into() });
    assert!(e.to_string().contains("\"missing\""));
    let e = l.string("n").unwrap_err();
    assert_eq!(e, NvError::WrongType { name: "n".into(), expected: "STRING", found: "NUMBER" });
    assert!(e.to_string().contains("\"n\""));
    assert!(matches!(l.bool_("s"), Err(NvError::WrongType { .. })));
    assert!(matches!(l.nvlist("b"), Err(NvError::WrongType { .. })));
    assert!(matches!(l.binary("na"), Err(NvError::WrongType { .. })));
    assert!(matches!(l.number_array("bin"), Err(NvError::WrongType { .. })));
}

#[test]
fn killed_reply_parsing() {
    assert_eq!(parse_killed_reply(&killed_reply(u32::MAX)).unwrap(), u32::MAX);
    let big = list(vec![("killed", NvValue::Number(1 << 32))]);
    assert!(matches!(parse_killed_reply(&big), Err(NvError::OutOfRange { .. })));
    assert!(matches!(parse_killed_reply(&Nvlist::new()), Err(NvError::MissingKey { .. })));
    let wrong = list(vec![("killed", NvValue::Bool(true))]);
    assert!(matches!(parse_killed_reply(&wrong), Err(NvError::WrongType { .. })));
}

// ---------------------------------------------------------------------------------------
// big-endian
// ---------------------------------------------------------------------------------------

#[test]
fn big_endian_killed_reply() {
    let p = killed_reply(3).pack_big_endian().unwrap();
    assert_eq!(
        p,
        hex(concat!(
            "6c 00 80 0000000000000000 0000000000000022 03 0007 0000000000000008 ",
            "0000000000000000 6b696c6c656400 0000000000000003",
        ))
    );
    assert_eq!(parse_killed_reply(&Nvlist::unpack(&p).unwrap()).unwrap(), 3);
}

#[test]
fn big_endian_kill_request() {
    let nvl = kill_request(&reference_kill());
    let be = nvl.pack_big_endian().unwrap();
    assert_eq!(be.len(), 1869);
    assert_eq!(Nvlist::unpack(&be).unwrap(), nvl);
}

// ---------------------------------------------------------------------------------------
// unpacking rules, one by one
// ---------------------------------------------------------------------------------------

fn cmp_example() -> Vec<u8> {
    list(vec![("cmp", NvValue::Nvlist(list(vec![("id", NvValue::Number(5))])))]).pack().unwrap()
}

#[test]
fn header_rules() {
    let good = cmp_example();
    assert!(Nvlist::unpack(&good).is_ok());

    let mut b = good.clone();
    b[0] = 0x6d;
    assert_eq!(unpack_err(&b), NvError::BadMagic { offset: 0, magic: 0x6d });
    let mut b = good.clone();
    b[42] = 0;
    assert_eq!(unpack_err(&b), NvError::BadMagic { offset: 42, magic: 0 });
    let mut b = good.clone();
    b[1] = 1;
    assert_eq!(unpack_err(&b), NvError::BadVersion { offset: 0, version: 1 });

    for flags in [0x01, 0x02, 0x03, 0x40, 0x81, 0xff] {
        let mut b = good.clone();
        b[2] = flags;
        assert!(
            matches!(unpack_err(&b), NvError::BadFlags { offset: 0, flags: f, .. } if f == flags),
            "root flags {flags:#x}"
        );
    }
    let mut b = good.clone();
    b[42 + 2] = 0x80;
    assert!(matches!(unpack_err(&b), NvError::BadFlags { offset: 42, flags: 0x80, .. }));
    let mut b = good.clone();
    b[42 + 2] = 0x02;
    assert!(matches!(unpack_err(&b), NvError::BadFlags { offset: 42, .. }));

    let mut b = good.clone();
    b[3] = 1;
    assert_eq!(unpack_err(&b), NvError::Descriptors { offset: 0, descriptors: 1 });
    let mut b = good.clone();
    b[42 + 3] = 2;
    assert_eq!(unpack_err(&b), NvError::Descriptors { offset: 42, descriptors: 2 });
}

#[test]
fn size_rules() {
    let good = cmp_example();
    let mut b = good.clone();
    b[11] += 1;
    assert_eq!(unpack_err(&b), NvError::SizeMismatch { offset: 0, size: 93, remaining: 92 });
    let mut b = good.clone();
    b[42 + 11] -= 1;
    assert_eq!(unpack_err(&b), NvError::SizeMismatch { offset: 42, size: 49, remaining: 50 });
    // One byte short: the root size no longer matches.
    assert!(matches!(unpack_err(&good[..110]), NvError::SizeMismatch { offset: 0, .. }));
    let mut b = good.clone();
    b.push(0);
    assert_eq!(unpack_err(&b), NvError::TrailingBytes { used: 111, count: 1 });
    // Shorter than a header.
    for n in 0..19 {
        assert!(matches!(unpack_err(&good[..n]), NvError::Truncated { offset: 0, .. }));
    }
    // Consistent sizes, but the last pair's payload is cut short.
    let b = Raw::default().header(0).pair(nv_type::NUMBER, "n", 8, 0, &[1, 2, 3]).finish();
    assert!(matches!(unpack_err(&b), NvError::Truncated { what: "nvpair payload", .. }));
    // A pair header cut short.
    let mut b = Raw::default().header(0).finish();
    b.extend_from_slice(&[nv_type::NUMBER, 2, 0]);
    b[11] = 3;
    assert!(matches!(unpack_err(&b), NvError::Truncated { what: "nvpair header", .. }));
    // The buffer ends inside a nested list (libnv would stop there silently).
    let b = Raw::default().header(0).pair(nv_type::NVLIST, "c", 19, 0, &[]).header(0).finish();
    assert_eq!(unpack_err(&b), NvError::Unterminated { depth: 1, marker: "NVLIST_UP" });
    // An empty root is fine.
    assert_eq!(Nvlist::unpack(&Raw::default().header(0).finish()).unwrap(), Nvlist::new());
}

#[test]
fn name_rules() {
    let ok = |name: &[u8], namesize: u16| {
        Raw::default().header(0).pair_bytes(nv_type::NULL, namesize, name, 0, 0, &[]).finish()
    };
    assert!(Nvlist::unpack(&ok(b"a\0", 2)).is_ok());
    for (name, size) in [
        (&b""[..], 0u16),
        (b"ab", 2),     // no NUL
        (b"a\0b\0", 4), // interior NUL
        (b"\0", 1),     // empty name
        (b"\xff\0", 2), // not UTF-8
    ] {
        assert!(
            matches!(unpack_err(&ok(name, size)), NvError::BadName { offset: 19, .. }),
            "name {name:?}"
        );
    }
    let mut long = vec![b'n'; 2047];
    long.push(0);
    let l = Nvlist::unpack(&ok(&long, 2048)).unwrap();
    assert_eq!(l.iter().next().unwrap().0.len(), 2047);
    let mut longer = vec![b'n'; 2048];
    longer.push(0);
    assert!(matches!(unpack_err(&ok(&longer, 2049)), NvError::BadName { .. }));
    // A namesize past the end of the buffer.
    assert!(matches!(unpack_err(&ok(b"a\0", 40)), NvError::Truncated { what: "nvpair name", .. }));
}

#[test]
fn type_rules() {
    for code in [0u8, 13, 100, 253] {
        let b = Raw::default().header(0).pair(code, "x", 0, 0, &[]).finish();
        assert_eq!(unpack_err(&b), NvError::UnknownType { offset: 19, code });
    }
    for code in [nv_type::DESCRIPTOR, nv_type::DESCRIPTOR_ARRAY] {
        let b = Raw::default().header(0).pair(code, "fd", 8, 1, &[0; 8]).finish();
        assert!(matches!(unpack_err(&b), NvError::UnsupportedType { code: c, .. } if c == code));
    }
}

fn payload_err(ty: u8, datasize: u64, nitems: u64, payload: &[u8]) -> NvError {
    let b = Raw::default().header(0).pair(ty, "p", datasize, nitems, payload).finish();
    unpack_err(&b)
}

fn payload_ok(ty: u8, datasize: u64, nitems: u64, payload: &[u8]) -> NvValue {
    let b = Raw::default().header(0).pair(ty, "p", datasize, nitems, payload).finish();
    Nvlist::unpack(&b).unwrap().get("p").unwrap().clone()
}

fn is_bad_payload(e: &NvError) -> bool {
    matches!(e, NvError::BadPayload { offset: 19, name, .. } if name == "p")
}

#[test]
fn payload_rules() {
    use nv_type::*;
    assert_eq!(payload_ok(NULL, 0, 0, &[]), NvValue::Null);
    assert!(is_bad_payload(&payload_err(NULL, 1, 0, &[0])));
    assert!(is_bad_payload(&payload_err(NULL, 0, 1, &[])), "nitems on a scalar");

    assert_eq!(payload_ok(BOOL, 1, 0, &[1]), NvValue::Bool(true));
    assert!(is_bad_payload(&payload_err(BOOL, 1, 0, &[2])));
    assert!(is_bad_payload(&payload_err(BOOL, 2, 0, &[0, 0])));
    assert!(is_bad_payload(&payload_err(BOOL, 0, 0, &[])));

    assert_eq!(payload_ok(NUMBER, 8, 0, &[9, 0, 0, 0, 0, 0, 0, 0]), NvValue::Number(9));
    assert!(is_bad_payload(&payload_err(NUMBER, 4, 0, &[0; 4])));
    assert!(is_bad_payload(&payload_err(NUMBER, 16, 0, &[0; 16])));

    assert_eq!(payload_ok(STRING, 3, 0, b"ab\0"), NvValue::String("ab".into()));
    assert_eq!(payload_ok(STRING, 1, 0, b"\0"), NvValue::String(String::new()));
    assert!(is_bad_payload(&payload_err(STRING, 0, 0, b"")));
    assert!(is_bad_payload(&payload_err(STRING, 3, 0, b"abc")), "no final NUL");
    assert!(is_bad_payload(&payload_err(STRING, 3, 0, b"a\0\0")), "interior NUL");
    assert!(is_bad_payload(&payload_err(STRING, 2, 0, b"\xff\0")), "not UTF-8");

    assert_eq!(payload_ok(BINARY, 2, 0, &[0, 7]), NvValue::Binary(vec![0, 7]));
    assert!(is_bad_payload(&payload_err(BINARY, 0, 0, &[])));

    assert_eq!(
        payload_ok(NUMBER_ARRAY, 16, 2, &[1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0]),
        NvValue::NumberArray(vec![1, 2])
    );
    assert!(is_bad_payload(&payload_err(NUMBER_ARRAY, 0, 0, &[])));
    assert!(is_bad_payload(&payload_err(NUMBER_ARRAY, 8, 2, &[0; 8])));
    assert!(is_bad_payload(&payload_err(NUMBER_ARRAY, 16, 1, &[0; 16])));
    assert!(is_bad_payload(&payload_err(NUMBER_ARRAY, 8, u64::MAX, &[0; 8])), "overflow");
    assert!(is_bad_payload(&payload_err(NUMBER_ARRAY, 0, 1 << 61, &[])), "8·nitems wraps to 0");

    assert_eq!(payload_ok(BOOL_ARRAY, 2, 2, &[1, 0]), NvValue::BoolArray(vec![true, false]));
    assert!(is_bad_payload(&payload_err(BOOL_ARRAY, 2, 2, &[1, 2])));
    assert!(is_bad_payload(&payload_err(BOOL_ARRAY, 2, 1, &[1, 0])));
    assert!(is_bad_payload(&payload_err(BOOL_ARRAY, 0, 0, &[])));

    assert_eq!(
        payload_ok(STRING_ARRAY, 5, 3, b"a\0\0b\0"),
        NvValue::StringArray(vec!["a".into(), String::new(), "b".into()])
    );
    assert!(is_bad_payload(&payload_err(STRING_ARRAY, 5, 2, b"a\0\0b\0")), "bytes left over");
    assert!(is_bad_payload(&payload_err(STRING_ARRAY, 4, 3, b"a\0b\0")), "strings missing");
    assert!(is_bad_payload(&payload_err(STRING_ARRAY, 3, 1, b"abc")), "no final NUL");
    assert!(is_bad_payload(&payload_err(STRING_ARRAY, 0, 1, b"")));
    assert!(is_bad_payload(&payload_err(STRING_ARRAY, 2, 0, b"a\0")));

    // NVLIST: 0 < datasize <= left; libnv's exact value is not required.
    let child = |datasize: u64| {
        Raw::default().header(0).pair(NVLIST, "p", datasize, 0, &[]).header(0).up().finish()
    };
    assert_eq!(Nvlist::unpack(&child(19)).unwrap().nvlist("p").unwrap(), &Nvlist::new());
    assert_eq!(Nvlist::unpack(&child(39)).unwrap().len(), 1);
    assert!(is_bad_payload(&unpack_err(&child(0))));
    assert!(matches!(unpack_err(&child(40)), NvError::Truncated { what: "nvpair payload", .. }));
    let b = Raw::default().header(0).pair(NVLIST, "p", 19, 1, &[]).header(0).up().finish();
    assert!(is_bad_payload(&unpack_err(&b)), "nitems on NVLIST");

    // NVLIST_ARRAY
    let arr = |nitems: u64| {
        let mut r = Raw::default().header(0).pair(NVLIST_ARRAY, "p", 0, nitems, &[]);
        for _ in 0..nitems.min(3) {
            r = r.header(0).marker(NVLIST_ARRAY_NEXT);
        }
        r.finish()
    };
    assert_eq!(Nvlist::unpack(&arr(2)).unwrap().nvlist_array("p").unwrap().len(), 2);
    assert!(is_bad_payload(&unpack_err(&arr(0))));
    let mut huge = arr(1);
    huge[19 + 11..19 + 19].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    assert!(is_bad_payload(&unpack_err(&huge)));
}

#[test]
fn duplicate_names_are_refused() {
    let b = Raw::default().header(0).number("a", 1).number("b", 2).number("a", 3).finish();
    assert_eq!(unpack_err(&b), NvError::DuplicateName { offset: 19 + 29 + 29, name: "a".into() });
    let b = Raw::default()
        .header(0)
        .pair(nv_type::NVLIST, "c", 19, 0, &[])
        .header(0)
        .number("x", 1)
        .number("x", 1)
        .up()
        .finish();
    assert!(matches!(unpack_err(&b), NvError::DuplicateName { name, .. } if name == "x"));
    // The same name in different lists is fine.
    let b = Raw::default()
        .header(0)
        .number("x", 1)
        .pair(nv_type::NVLIST, "c", 19, 0, &[])
        .header(0)
        .number("x", 2)
        .up()
        .finish();
    assert_eq!(Nvlist::unpack(&b).unwrap().nvlist("c").unwrap().number("x").unwrap(), 2);
}

#[test]
fn marker_rules() {
    use nv_type::*;
    let b = Raw::default().header(0).up().finish();
    assert!(matches!(unpack_err(&b), NvError::BadMarker { offset: 19, marker: "NVLIST_UP", .. }));
    let b = Raw::default().header(0).marker(NVLIST_ARRAY_NEXT).finish();
    assert!(matches!(unpack_err(&b), NvError::BadMarker { marker: "NVLIST_ARRAY_NEXT", .. }));
    let b = Raw::default()
        .header(0)
        .pair(NVLIST, "c", 19, 0, &[])
        .header(0)
        .marker(NVLIST_ARRAY_NEXT)
        .finish();
    assert!(matches!(unpack_err(&b), NvError::BadMarker { offset: 59, .. }));
    let b = Raw::default().header(0).pair(NVLIST_ARRAY, "a", 0, 1, &[]).header(0).up().finish();
    assert!(matches!(unpack_err(&b), NvError::BadMarker { marker: "NVLIST_UP", .. }));
    let b = Raw::default()
        .header(0)
        .pair(NVLIST, "c", 19, 0, &[])
        .header(0)
        .pair(NVLIST_UP, "x", 0, 0, &[])
        .finish();
    assert!(matches!(unpack_err(&b), NvError::BadMarker { .. }), "marker with a name");
    let b = Raw::default()
        .header(0)
        .pair(NVLIST, "c", 19, 0, &[])
        .header(0)
        .pair(NVLIST_UP, "", 0, 1, &[])
        .finish();
    assert!(matches!(unpack_err(&b), NvError::BadMarker { .. }), "marker with nitems");
    let b = Raw::default()
        .header(0)
        .pair(NVLIST, "c", 19, 0, &[])
        .header(0)
        .pair(NVLIST_UP, "", 1, 0, &[0])
        .finish();
    assert!(matches!(unpack_err(&b), NvError::BadMarker { .. }), "marker with datasize");
    // Missing ARRAY_NEXT at the end of the last element.
    let b = Raw::default().header(0).pair(NVLIST_ARRAY, "a", 0, 1, &[]).header(0).finish();
    assert_eq!(unpack_err(&b), NvError::Unterminated { depth: 1, marker: "NVLIST_ARRAY_NEXT" });
}

fn raw_nested(depth: usize) -> Vec<u8> {
    let mut r = Raw::default().header(0);
    for _ in 0..depth {
        r = r.pair(nv_type::NVLIST, "a", 19, 0, &[]).header(0);
    }
    for _ in 0..depth {
        r = r.up();
    }
    r.finish()
}

#[test]
fn depth_is_limited_when_unpacking() {
    assert_eq!(Nvlist::unpack(&raw_nested(MAX_DEPTH)).unwrap(), nested(MAX_DEPTH));
    assert_eq!(
        unpack_err(&raw_nested(MAX_DEPTH + 1)),
        NvError::NestingTooDeep { offset: 19 + MAX_DEPTH * (19 + 2 + 19) }
    );
    // Deep nesting in a big buffer: refused, not a stack overflow.
    assert!(matches!(unpack_err(&raw_nested(5000)), NvError::NestingTooDeep { .. }));
}

#[test]
fn errors_read_well() {
    let e = unpack_err(&raw_nested(MAX_DEPTH + 1));
    assert_eq!(e.to_string(), "nvpair at byte 659: lists nested deeper than 16");
    let e = payload_err(nv_type::BOOL, 1, 0, &[2]);
    assert_eq!(e.to_string(), "nvpair \"p\" (BOOL) at byte 19: value 2, must be 0 or 1");
}

// ---------------------------------------------------------------------------------------
// properties
// ---------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn pack_matches_the_libnv_port(nvl in nvlist()) {
        let packed = nvl.pack().unwrap();
        prop_assert_eq!(packed.len(), nvl.packed_len());
        prop_assert_eq!(packed.len() as u64, libnv::nvlist_size(&nvl));
        prop_assert_eq!(&packed, &libnv::pack(&nvl));
    }

    #[test]
    fn round_trips(nvl in nvlist()) {
        let le = nvl.pack().unwrap();
        let back = Nvlist::unpack(&le).unwrap();
        prop_assert_eq!(&back, &nvl);
        prop_assert_eq!(back.pack().unwrap(), le.clone());
        let be = nvl.pack_big_endian().unwrap();
        prop_assert_eq!(be.len(), le.len());
        prop_assert_eq!(Nvlist::unpack(&be).unwrap(), nvl);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..600)) {
        let _ = Nvlist::unpack(&bytes);
        // With a valid-looking root header in front.
        let mut b = vec![0x6c, 0, 0];
        b.extend_from_slice(&[0; 8]);
        b.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        b.extend_from_slice(&bytes);
        if let Ok(l) = Nvlist::unpack(&b) {
            prop_assert_eq!(Nvlist::unpack(&l.pack().unwrap()).unwrap(), l);
        }
    }

    #[test]
    fn mutated_packings_never_panic(
        nvl in nvlist(),
        edits in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut b = nvl.pack().unwrap();
        for (i, v) in edits {
            let i = i.index(b.len());
            b[i] = v;
        }
        if let Ok(l) = Nvlist::unpack(&b) {
            let again = l.pack().unwrap();
            prop_assert_eq!(again.len(), b.len());
            prop_assert_eq!(Nvlist::unpack(&again).unwrap(), l.clone());
            let _ = kill_from_request(&l);
        }
        let _ = Nvlist::unpack(&b[..cut.index(b.len() + 1)]);
    }

    #[test]
    fn kill_requests_round_trip(k in pf_kill()) {
        let nvl = kill_request(&k);
        let packed = nvl.pack().unwrap();
        prop_assert_eq!(packed.len(), 1869 + k.ifname.len() + k.label.len());
        let back = Nvlist::unpack(&packed).unwrap();
        // Everything round-trips but `nat`, which the kernel's decoder never reads.
        prop_assert_eq!(kill_from_request(&back).unwrap(), PfKill { nat: false, ..k });
    }
}

// ---------------------------------------------------------------------------------------
// the kernel's decoding of kill requests
// ---------------------------------------------------------------------------------------

/// `nvl` with `key` in the list at `path` removed (None) or replaced in place (Some).
fn edit(nvl: &Nvlist, path: &[&str], key: &str, value: Option<NvValue>) -> Nvlist {
    let mut out = Nvlist::new();
    let mut value = value;
    for (n, v) in nvl.iter() {
        if let Some((first, rest)) = path.split_first() {
            if n == *first {
                let NvValue::Nvlist(child) = v else { panic!("{n} is not a list") };
                out.add(n, NvValue::Nvlist(edit(child, rest, key, value.take()))).unwrap();
                continue;
            }
        } else if n == key {
            if let Some(v) = value.take() {
                out.add(n, v).unwrap();
            }
            continue;
        }
        out.add(n, v.clone()).unwrap();
    }
    if path.is_empty()
        && let Some(v) = value
    {
        out.add(key, v).unwrap();
    }
    out
}

fn decode_with(path: &[&str], key: &str, value: Option<NvValue>) -> Result<PfKill, KernelErr> {
    let nvl = edit(&kill_request(&reference_kill()), path, key, value);
    // Through the wire, as the kernel sees it.
    kill_from_request(&Nvlist::unpack(&nvl.pack().unwrap()).unwrap())
}

#[test]
fn missing_required_keys_are_einval() {
    let required: &[(&[&str], &str)] = &[
        (&[], "cmp"),
        (&["cmp"], "id"),
        (&["cmp"], "creatorid"),
        (&["cmp"], "direction"),
        (&[], "af"),
        (&[], "proto"),
        (&[], "src"),
        (&[], "dst"),
        (&["src"], "addr"),
        (&["src"], "port"),
        (&["src"], "neg"),
        (&["src"], "port_op"),
        (&["dst", "addr"], "type"),
        (&["dst", "addr"], "iflags"),
        (&["dst", "addr"], "addr"),
        (&["dst", "addr"], "mask"),
        (&["src", "addr", "mask"], "addr"),
        (&["rt_addr", "addr", "addr"], "addr"),
        (&[], "ifname"),
        (&[], "label"),
        (&[], "kill_match"),
    ];
    for (path, key) in required {
        assert_eq!(decode_with(path, key, None), Err(KernelErr::Einval), "{path:?} {key}");
    }
}

#[test]
fn optional_and_unknown_keys() {
    let k = reference_kill();
    assert_eq!(decode_with(&[], "rt_addr", None).unwrap(), k);
    // `nat` is never read by pf_nvstate_kill_to_kstate_kill: present, true or mistyped, the
    // request is the same (a kill over the nvlist ioctl always matches the wire key).
    assert_eq!(decode_with(&[], "nat", None).unwrap(), k);
    assert!(!k.nat);
    assert_eq!(decode_with(&[], "nat", Some(NvValue::Bool(true))).unwrap(), k);
    assert_eq!(decode_with(&[], "nat", Some(NvValue::Number(1))).unwrap(), k);
    assert_eq!(decode_with(&[], "rt_addr", Some(NvValue::Number(1))).unwrap(), k);
    assert_eq!(decode_with(&[], "future", Some(NvValue::Number(1))).unwrap(), k);
    assert_eq!(decode_with(&["src"], "future", Some(NvValue::Null)).unwrap(), k);
}

#[test]
fn mistyped_required_keys_are_einval() {
    let cases: &[(&[&str], &str, NvValue)] = &[
        (&[], "cmp", NvValue::Number(0)),
        (&["cmp"], "id", NvValue::String("5".into())),
        (&[], "af", NvValue::Bool(true)),
        (&[], "proto", NvValue::NumberArray(vec![6])),
        (&[], "src", NvValue::Binary(vec![0])),
        (&["src"], "port", NvValue::Number(80)),
        (&[], "ifname", NvValue::Number(0)),
        (&[], "label", NvValue::StringArray(vec![String::new()])),
        (&[], "kill_match", NvValue::Number(1)),
        (&["src", "addr", "addr"], "addr", NvValue::String("x".into())),
    ];
    for (path, key, v) in cases {
        assert_eq!(decode_with(path, key, Some(v.clone())), Err(KernelErr::Einval), "{key}");
    }
}

#[test]
fn out_of_range_numbers_are_erange() {
    let cases: &[(&[&str], &str, u64)] = &[
        (&["cmp"], "creatorid", 1 << 32),
        (&["cmp"], "direction", 256),
        (&[], "af", 256),
        (&[], "proto", 256),
        (&[], "proto", u64::MAX),
        (&["src"], "neg", 256),
        (&["src"], "port_op", 256),
        (&["dst", "addr"], "type", 256),
        (&["dst", "addr"], "iflags", 256),
    ];
    for (path, key, v) in cases {
        assert_eq!(
            decode_with(path, key, Some(NvValue::Number(*v))),
            Err(KernelErr::Erange),
            "{key} = {v}"
        );
    }
    assert_eq!(
        decode_with(&["src"], "port", Some(NvValue::NumberArray(vec![1, 65536]))),
        Err(KernelErr::Erange)
    );
    // Limits themselves are fine.
    let k = decode_with(&["cmp"], "creatorid", Some(NvValue::Number(u32::MAX.into()))).unwrap();
    assert_eq!(k.creatorid, u32::MAX);
    let k = decode_with(&["cmp"], "id", Some(NvValue::Number(u64::MAX))).unwrap();
    assert_eq!(k.id, u64::MAX);
}

#[test]
fn ports_arrays() {
    assert_eq!(
        decode_with(&["src"], "port", Some(NvValue::NumberArray(vec![0, 0, 0]))),
        Err(KernelErr::E2big)
    );
    // E2BIG is checked before the elements' range.
    assert_eq!(
        decode_with(&["src"], "port", Some(NvValue::NumberArray(vec![1 << 20, 0, 0]))),
        Err(KernelErr::E2big)
    );
    let k = decode_with(&["src"], "port", Some(NvValue::NumberArray(vec![80u16.to_be().into()])))
        .unwrap();
    assert_eq!(k.src.port, [80, 0], "one element leaves port[1] zero");
}

#[test]
fn strings_must_fit_their_buffers() {
    assert!(decode_with(&[], "ifname", Some(NvValue::String("i".repeat(15)))).is_ok());
    assert_eq!(
        decode_with(&[], "ifname", Some(NvValue::String("i".repeat(16)))),
        Err(KernelErr::Einval)
    );
    assert!(decode_with(&[], "label", Some(NvValue::String("l".repeat(63)))).is_ok());
    assert_eq!(
        decode_with(&[], "label", Some(NvValue::String("l".repeat(64)))),
        Err(KernelErr::Einval)
    );
    // kill_request sends an over-long name as is; the kernel refuses it.
    let k = PfKill { ifname: "x".repeat(16), ..reference_kill() };
    assert_eq!(kill_from_request(&kill_request(&k)), Err(KernelErr::Einval));
    // A C string stops at its NUL.
    let k = PfKill { ifname: "em0\0junk".into(), ..reference_kill() };
    assert_eq!(kill_from_request(&kill_request(&k)).unwrap().ifname, "em0");
}

#[test]
fn constants_are_validated() {
    assert_eq!(decode_with(&["src"], "port_op", Some(NvValue::Number(10))), Err(KernelErr::Einval));
    assert!(decode_with(&["src"], "port_op", Some(NvValue::Number(9))).is_ok());
    for ty in [1u64, 4, 5, 6, 255] {
        assert_eq!(
            decode_with(&["src", "addr"], "type", Some(NvValue::Number(ty))),
            Err(KernelErr::Einval),
            "type {ty}"
        );
    }
    // For a type the kernel accepts, its own later errors come first.
    let nvl = edit(
        &edit(&kill_request(&reference_kill()), &["src", "addr"], "type", Some(NvValue::Number(1))),
        &["src"],
        "port",
        Some(NvValue::NumberArray(vec![0, 0, 0])),
    );
    assert_eq!(kill_from_request(&nvl), Err(KernelErr::E2big));
    // Short binaries are zero-padded; long ones refused.
    let short = NvValue::Binary(vec![10, 0, 0, 1]);
    let k = decode_with(&["src", "addr", "addr"], "addr", Some(short)).unwrap();
    assert_eq!(k.src.addr, [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(
        decode_with(&["src", "addr", "mask"], "addr", Some(NvValue::Binary(vec![0xff; 17]))),
        Err(KernelErr::Einval)
    );
    // Any non-zero neg negates.
    assert!(decode_with(&["dst"], "neg", Some(NvValue::Number(7))).unwrap().dst.neg);
}

#[test]
fn errnos_are_freebsds() {
    assert_eq!(KernelErr::Einval.errno(), 22);
    assert_eq!(KernelErr::Erange.errno(), 34);
    assert_eq!(KernelErr::E2big.errno(), 7);
    assert_eq!(KernelErr::Ebadmsg.errno(), 89);
    let e = Nvlist::unpack(&[0]).unwrap_err();
    assert_eq!(KernelErr::from(e), KernelErr::Ebadmsg);
}
