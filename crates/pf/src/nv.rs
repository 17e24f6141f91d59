//! FreeBSD libnv nvlists: values, a byte-exact packer and a strict unpacker, and the pf
//! kill-request mapping carried by `DIOCKILLSTATESNV` / `DIOCCLRSTATESNV` (pf-kernel.md §3).
//!
//! # Wire format (pf-kernel.md §3.2, libnv `nvlist.c` / `nvpair.c`)
//!
//! * nvlist header, 19 bytes: magic `0x6c`, version 0, flags, u64 descriptors, u64 size
//!   (the bytes left in the **whole** buffer after this header);
//! * nvpair header, 19 bytes: u8 type, u16 namesize (with the NUL), u64 datasize, u64 nitems;
//!   then the NUL-terminated name, then the payload;
//! * a nested `NVLIST` is its pair header and name, the child's own nvlist header, the
//!   child's pairs and an `NVLIST_UP` marker (type 255, empty name: 20 bytes);
//! * an `NVLIST_ARRAY` of n lists is its pair header (datasize 0, nitems n) and name, then
//!   for each element its nvlist header, its pairs and an `NVLIST_ARRAY_NEXT` marker (type 254).
//!
//! [`Nvlist::pack`] reproduces `nvlist_pack()` on amd64 byte for byte (little-endian, flags 0),
//! including the odd `datasize` libnv writes for an `NVLIST` pair: `nvlist_size(child)`,
//! which walks on past the child's end into the enclosing lists. It is 19 + the child's
//! content + everything packed after the child, except the terminators (`NVLIST_UP`, and for
//! enclosing array elements their `ARRAY_NEXT` markers and the headers of later elements) that
//! `nvlist_size()` had already counted before it started. An **empty** child is the exception:
//! `nvlist_size()` never enters its loop and returns 19.
//!
//! # Unpacking
//!
//! [`Nvlist::unpack`] accepts what the FreeBSD kernel's `nvlist_unpack(buf, len, 0)` accepts,
//! minus some things no libnv packer produces. Like libnv it checks: magic; flags (only
//! `NV_FLAG_BIG_ENDIAN` 0x80 may be set, because pf passes flags 0); descriptors 0 (the
//! kernel passes no fds); `size` equal to the bytes left, at every level; type codes;
//! namesize 1..=2048 with exactly one NUL, at the end; the payload rules of each type
//! (NULL 0; BOOL 1 byte 0/1; NUMBER 8; STRING len+1 with only the final NUL; BINARY > 0;
//! NUMBER_ARRAY 8·nitems, nitems > 0; BOOL_ARRAY nitems bytes; STRING_ARRAY nitems strings
//! filling datasize exactly; NVLIST 0 < datasize ≤ left; NVLIST_ARRAY nitems > 0 and
//! 19·nitems ≤ left); unique names. It is **stricter** than libnv in that it also refuses:
//! a version other than 0; nested headers whose flags differ from the root's; a non-zero
//! `nitems` on a scalar type; BOOL_ARRAY bytes other than 0/1; empty names (libnv allows
//! `""`, [`Nvlist::add`] does not); names and strings that are not UTF-8; descriptor types
//! (6, 12: meaningless without fds); `NVLIST_UP` / `ARRAY_NEXT` markers with a name or a
//! size, or where they do not close the current list; a buffer that ends before every
//! nested list is closed (libnv stops at the end of the buffer wherever it is); nesting
//! deeper than [`MAX_DEPTH`]. The `datasize` of `NVLIST` and `NVLIST_ARRAY` pairs is only
//! bounds-checked, as in libnv, so it need not be libnv's exact value.
//!
//! Big-endian buffers (`NV_FLAG_BIG_ENDIAN`) are swapped, including `nitems` (very old libnv
//! forgot to swap that one).
//!
//! Nothing here panics on any input, and every length is checked before it is used.

use std::collections::HashSet;

use crate::types::{IFNAMSIZ, PF_ADDR_ADDRMASK, PF_RULE_LABEL_SIZE, PfKill, RuleAddr, port_op};

/// Deepest nesting accepted and built: the root is depth 0, its child lists depth 1, and so
/// on. libnv itself has no limit; a kill request nests 3 deep (`src` → `addr` → `addr`). 16
/// keeps the recursive packer and unpacker far from any stack limit.
pub const MAX_DEPTH: usize = 16;

/// `NV_NAME_MAX`: the largest namesize, NUL included.
pub const NV_NAME_MAX: usize = 2048;

/// Bytes in an nvlist header.
pub const NVLIST_HEADER_LEN: usize = 19;
/// Bytes in an nvpair header.
pub const NVPAIR_HEADER_LEN: usize = 19;

const NVLIST_HEADER_MAGIC: u8 = 0x6c;
const NVLIST_HEADER_VERSION: u8 = 0;
/// `NV_FLAG_BIG_ENDIAN`: the producer was big-endian.
pub const NV_FLAG_BIG_ENDIAN: u8 = 0x80;
/// An `NVLIST_UP` or `NVLIST_ARRAY_NEXT` marker: pair header and the empty name.
const MARKER_LEN: usize = NVPAIR_HEADER_LEN + 1;

/// Type codes (`sys/sys/nv.h`, `nv_impl.h`).
pub mod nv_type {
    pub const NULL: u8 = 1;
    pub const BOOL: u8 = 2;
    pub const NUMBER: u8 = 3;
    pub const STRING: u8 = 4;
    pub const NVLIST: u8 = 5;
    pub const DESCRIPTOR: u8 = 6;
    pub const BINARY: u8 = 7;
    pub const BOOL_ARRAY: u8 = 8;
    pub const NUMBER_ARRAY: u8 = 9;
    pub const STRING_ARRAY: u8 = 10;
    pub const NVLIST_ARRAY: u8 = 11;
    pub const DESCRIPTOR_ARRAY: u8 = 12;
    /// Internal marker: the next element of an nvlist array follows.
    pub const NVLIST_ARRAY_NEXT: u8 = 254;
    /// Internal marker: the current nested nvlist ends.
    pub const NVLIST_UP: u8 = 255;
}

/// Everything that can go wrong building, reading or unpacking an nvlist.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NvError {
    /// `add` with a name libnv could not carry or we refuse.
    #[error("invalid nvlist name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    /// `add` with a value libnv could not pack or unpack.
    #[error("invalid value for {name:?}: {reason}")]
    InvalidValue { name: String, reason: &'static str },
    /// `add` of a name already present.
    #[error("duplicate nvlist name {name:?}")]
    Duplicate { name: String },
    /// `add` that would nest lists deeper than [`MAX_DEPTH`].
    #[error("adding {name:?} would nest nvlists {depth} deep (at most {MAX_DEPTH})")]
    TooDeep { name: String, depth: usize },
    /// A typed getter for a missing key.
    #[error("nvlist has no key {name:?}")]
    MissingKey { name: String },
    /// A typed getter for a key of another type.
    #[error("nvlist key {name:?} is {found}, not {expected}")]
    WrongType { name: String, expected: &'static str, found: &'static str },
    /// A number that does not fit where it is going.
    #[error("nvlist key {name:?} is {value}, more than {max}")]
    OutOfRange { name: String, value: u64, max: u64 },

    /// The buffer ends before a field does.
    #[error("nvlist truncated at byte {offset}: {what} needs {needed} bytes, {left} left")]
    Truncated { offset: usize, what: &'static str, needed: u64, left: usize },
    /// An nvlist header whose magic is not 0x6c.
    #[error("nvlist header at byte {offset}: magic 0x{magic:02x}, expected 0x6c")]
    BadMagic { offset: usize, magic: u8 },
    /// An nvlist header whose version is not 0.
    #[error("nvlist header at byte {offset}: version {version}, expected 0")]
    BadVersion { offset: usize, version: u8 },
    /// An nvlist header with flags other than 0 or `NV_FLAG_BIG_ENDIAN`.
    #[error("nvlist header at byte {offset}: flags 0x{flags:02x} refused: {reason}")]
    BadFlags { offset: usize, flags: u8, reason: &'static str },
    /// An nvlist header announcing file descriptors (none can travel through an ioctl).
    #[error("nvlist header at byte {offset}: {descriptors} descriptors announced, must be 0")]
    Descriptors { offset: usize, descriptors: u64 },
    /// An nvlist header whose size is not the number of bytes left after it.
    #[error("nvlist header at byte {offset}: size {size}, but {remaining} bytes follow it")]
    SizeMismatch { offset: usize, size: u64, remaining: usize },
    /// The root header covers less than the buffer.
    #[error("{count} trailing byte(s) after the {used}-byte nvlist")]
    TrailingBytes { used: usize, count: usize },
    /// An nvpair type code that libnv does not define.
    #[error("nvpair at byte {offset}: unknown type code {code}")]
    UnknownType { offset: usize, code: u8 },
    /// A known type code this codec does not carry.
    #[error("nvpair {name:?} at byte {offset}: type {code} (descriptor) is not supported")]
    UnsupportedType { offset: usize, name: String, code: u8 },
    /// A bad nvpair name on the wire.
    #[error("nvpair at byte {offset}: bad name: {reason}")]
    BadName { offset: usize, reason: String },
    /// A payload whose sizes or bytes break its type's rules.
    #[error("nvpair {name:?} ({kind}) at byte {offset}: {reason}")]
    BadPayload { offset: usize, name: String, kind: &'static str, reason: String },
    /// The same name twice in one list.
    #[error("nvpair at byte {offset}: duplicate name {name:?}")]
    DuplicateName { offset: usize, name: String },
    /// A marker that does not close the current list, or carries a name or a size.
    #[error("nvpair at byte {offset}: {marker} marker {reason}")]
    BadMarker { offset: usize, marker: &'static str, reason: &'static str },
    /// The buffer ends inside a nested list.
    #[error("nvlist ends inside a list nested {depth} deep (missing {marker} marker)")]
    Unterminated { depth: usize, marker: &'static str },
    /// Lists nested deeper than [`MAX_DEPTH`].
    #[error("nvpair at byte {offset}: lists nested deeper than {MAX_DEPTH}")]
    NestingTooDeep { offset: usize },
}

/// One value. Arrays and binaries are never empty and strings hold no NUL (libnv cannot
/// carry either); [`Nvlist::add`] enforces it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NvValue {
    Null,
    Bool(bool),
    Number(u64),
    String(String),
    Nvlist(Nvlist),
    Binary(Vec<u8>),
    BoolArray(Vec<bool>),
    NumberArray(Vec<u64>),
    StringArray(Vec<String>),
    NvlistArray(Vec<Nvlist>),
}

impl NvValue {
    /// libnv's type code.
    pub fn type_code(&self) -> u8 {
        match self {
            NvValue::Null => nv_type::NULL,
            NvValue::Bool(_) => nv_type::BOOL,
            NvValue::Number(_) => nv_type::NUMBER,
            NvValue::String(_) => nv_type::STRING,
            NvValue::Nvlist(_) => nv_type::NVLIST,
            NvValue::Binary(_) => nv_type::BINARY,
            NvValue::BoolArray(_) => nv_type::BOOL_ARRAY,
            NvValue::NumberArray(_) => nv_type::NUMBER_ARRAY,
            NvValue::StringArray(_) => nv_type::STRING_ARRAY,
            NvValue::NvlistArray(_) => nv_type::NVLIST_ARRAY,
        }
    }

    /// libnv's name for the type (`NULL`, `NUMBER`, ...).
    pub fn type_name(&self) -> &'static str {
        type_name(self.type_code())
    }

    /// How many list levels this value adds below the list holding it.
    fn depth(&self) -> usize {
        match self {
            NvValue::Nvlist(l) => 1 + l.depth(),
            NvValue::NvlistArray(ls) => 1 + ls.iter().map(Nvlist::depth).max().unwrap_or(0),
            _ => 0,
        }
    }

    /// Can libnv carry this value (its own content; nested lists are valid by construction)?
    fn check(&self) -> Result<(), &'static str> {
        match self {
            NvValue::String(s) if s.contains('\0') => Err("string contains a NUL byte"),
            NvValue::Binary(b) if b.is_empty() => Err("empty binary"),
            NvValue::BoolArray(v) if v.is_empty() => Err("empty bool array"),
            NvValue::NumberArray(v) if v.is_empty() => Err("empty number array"),
            NvValue::StringArray(v) if v.is_empty() => Err("empty string array"),
            NvValue::StringArray(v) if v.iter().any(|s| s.contains('\0')) => {
                Err("string array element contains a NUL byte")
            }
            NvValue::NvlistArray(v) if v.is_empty() => Err("empty nvlist array"),
            _ => Ok(()),
        }
    }
}

fn type_name(code: u8) -> &'static str {
    match code {
        nv_type::NULL => "NULL",
        nv_type::BOOL => "BOOL",
        nv_type::NUMBER => "NUMBER",
        nv_type::STRING => "STRING",
        nv_type::NVLIST => "NVLIST",
        nv_type::DESCRIPTOR => "DESCRIPTOR",
        nv_type::BINARY => "BINARY",
        nv_type::BOOL_ARRAY => "BOOL_ARRAY",
        nv_type::NUMBER_ARRAY => "NUMBER_ARRAY",
        nv_type::STRING_ARRAY => "STRING_ARRAY",
        nv_type::NVLIST_ARRAY => "NVLIST_ARRAY",
        nv_type::DESCRIPTOR_ARRAY => "DESCRIPTOR_ARRAY",
        nv_type::NVLIST_ARRAY_NEXT => "NVLIST_ARRAY_NEXT",
        nv_type::NVLIST_UP => "NVLIST_UP",
        _ => "unknown",
    }
}

/// An nvlist: (name, value) pairs in insertion order, names unique (case-sensitive, as with
/// libnv's default flags), nesting at most [`MAX_DEPTH`] deep.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Nvlist {
    pairs: Vec<(String, NvValue)>,
}

impl Nvlist {
    pub fn new() -> Self {
        Self::default()
    }

    /// Append a pair. Refuses an empty name, a name of more than 2047 bytes or with a NUL,
    /// a name already present, a value libnv cannot carry (empty array or binary, string with
    /// a NUL) and nesting deeper than [`MAX_DEPTH`].
    pub fn add(&mut self, name: &str, value: NvValue) -> Result<(), NvError> {
        let invalid = |reason| NvError::InvalidName { name: name.to_owned(), reason };
        if name.is_empty() {
            return Err(invalid("empty"));
        }
        if name.len() >= NV_NAME_MAX {
            return Err(invalid("longer than 2047 bytes"));
        }
        if name.contains('\0') {
            return Err(invalid("contains a NUL byte"));
        }
        value.check().map_err(|reason| NvError::InvalidValue { name: name.to_owned(), reason })?;
        if self.get(name).is_some() {
            return Err(NvError::Duplicate { name: name.to_owned() });
        }
        let depth = value.depth();
        if depth > MAX_DEPTH {
            return Err(NvError::TooDeep { name: name.to_owned(), depth });
        }
        self.pairs.push((name.to_owned(), value));
        Ok(())
    }

    /// Append a pair known to be valid (constant, unique name; checked value).
    fn put(&mut self, name: &'static str, value: NvValue) {
        self.pairs.push((name.to_owned(), value));
    }

    pub fn get(&self, name: &str) -> Option<&NvValue> {
        self.pairs.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// The pairs, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &NvValue)> {
        self.pairs.iter().map(|(n, v)| (n.as_str(), v))
    }

    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    fn typed<'a, T>(
        &'a self,
        name: &str,
        expected: &'static str,
        pick: impl FnOnce(&'a NvValue) -> Option<T>,
    ) -> Result<T, NvError> {
        let v = self.get(name).ok_or_else(|| NvError::MissingKey { name: name.to_owned() })?;
        pick(v).ok_or_else(|| NvError::WrongType {
            name: name.to_owned(),
            expected,
            found: v.type_name(),
        })
    }

    pub fn number(&self, name: &str) -> Result<u64, NvError> {
        self.typed(name, "NUMBER", |v| match v {
            NvValue::Number(n) => Some(*n),
            _ => None,
        })
    }

    pub fn bool_(&self, name: &str) -> Result<bool, NvError> {
        self.typed(name, "BOOL", |v| match v {
            NvValue::Bool(b) => Some(*b),
            _ => None,
        })
    }

    pub fn string(&self, name: &str) -> Result<&str, NvError> {
        self.typed(name, "STRING", |v| match v {
            NvValue::String(s) => Some(s.as_str()),
            _ => None,
        })
    }

    pub fn nvlist(&self, name: &str) -> Result<&Nvlist, NvError> {
        self.typed(name, "NVLIST", |v| match v {
            NvValue::Nvlist(l) => Some(l),
            _ => None,
        })
    }

    pub fn binary(&self, name: &str) -> Result<&[u8], NvError> {
        self.typed(name, "BINARY", |v| match v {
            NvValue::Binary(b) => Some(b.as_slice()),
            _ => None,
        })
    }

    pub fn number_array(&self, name: &str) -> Result<&[u64], NvError> {
        self.typed(name, "NUMBER_ARRAY", |v| match v {
            NvValue::NumberArray(a) => Some(a.as_slice()),
            _ => None,
        })
    }

    pub fn bool_array(&self, name: &str) -> Result<&[bool], NvError> {
        self.typed(name, "BOOL_ARRAY", |v| match v {
            NvValue::BoolArray(a) => Some(a.as_slice()),
            _ => None,
        })
    }

    pub fn string_array(&self, name: &str) -> Result<&[String], NvError> {
        self.typed(name, "STRING_ARRAY", |v| match v {
            NvValue::StringArray(a) => Some(a.as_slice()),
            _ => None,
        })
    }

    pub fn nvlist_array(&self, name: &str) -> Result<&[Nvlist], NvError> {
        self.typed(name, "NVLIST_ARRAY", |v| match v {
            NvValue::NvlistArray(a) => Some(a.as_slice()),
            _ => None,
        })
    }

    /// Levels of lists below this one (0 for a flat list).
    fn depth(&self) -> usize {
        self.pairs.iter().map(|(_, v)| v.depth()).max().unwrap_or(0)
    }

    /// `nvlist_size()` of a root list: the packed length.
    pub fn packed_len(&self) -> usize {
        NVLIST_HEADER_LEN + self.pairs.iter().map(|(n, v)| pair_len(n, v)).sum::<usize>()
    }

    /// `nvlist_pack()` on amd64: little-endian, flags 0.
    pub fn pack(&self) -> Result<Vec<u8>, NvError> {
        self.pack_with(false)
    }

    /// What a big-endian host's `nvlist_pack()` writes (`NV_FLAG_BIG_ENDIAN` in every
    /// header, every integer big-endian). For testing the unpacker.
    pub fn pack_big_endian(&self) -> Result<Vec<u8>, NvError> {
        self.pack_with(true)
    }

    fn pack_with(&self, big_endian: bool) -> Result<Vec<u8>, NvError> {
        let total = self.packed_len();
        let mut w = Writer { buf: Vec::with_capacity(total), big_endian, total };
        w.list_header();
        w.list(self, 0)?;
        Ok(w.buf)
    }

    /// `nvlist_unpack(bytes, len, 0)`, strictly (see the module documentation).
    pub fn unpack(bytes: &[u8]) -> Result<Nvlist, NvError> {
        let mut r = Reader { buf: bytes, pos: 0, big_endian: false, flags: 0 };
        r.list_header(true)?;
        r.list(End::Root, 0)
    }
}

/// Packed length of one pair, with everything nested in it.
fn pair_len(name: &str, value: &NvValue) -> usize {
    let payload = match value {
        NvValue::Null => 0,
        NvValue::Bool(_) => 1,
        NvValue::Number(_) => 8,
        NvValue::String(s) => s.len() + 1,
        NvValue::Binary(b) => b.len(),
        NvValue::BoolArray(v) => v.len(),
        NvValue::NumberArray(v) => 8 * v.len(),
        NvValue::StringArray(v) => v.iter().map(|s| s.len() + 1).sum(),
        NvValue::Nvlist(l) => l.packed_len() + MARKER_LEN,
        NvValue::NvlistArray(ls) => ls.iter().map(|l| l.packed_len() + MARKER_LEN).sum(),
    };
    NVPAIR_HEADER_LEN + name.len() + 1 + payload
}

struct Writer {
    buf: Vec<u8>,
    big_endian: bool,
    /// The final length, known in advance: every header's `size` depends on it.
    total: usize,
}

impl Writer {
    fn u16(&mut self, v: u16) {
        let b = if self.big_endian { v.to_be_bytes() } else { v.to_le_bytes() };
        self.buf.extend_from_slice(&b);
    }

    fn u64(&mut self, v: u64) {
        let b = if self.big_endian { v.to_be_bytes() } else { v.to_le_bytes() };
        self.buf.extend_from_slice(&b);
    }

    /// `nvlist_pack_header()`: size = bytes left in the whole buffer after this header.
    fn list_header(&mut self) {
        let size = self.total.saturating_sub(self.buf.len() + NVLIST_HEADER_LEN);
        self.buf.push(NVLIST_HEADER_MAGIC);
        self.buf.push(NVLIST_HEADER_VERSION);
        self.buf.push(if self.big_endian { NV_FLAG_BIG_ENDIAN } else { 0 });
        self.u64(0);
        self.u64(size as u64);
    }

    fn pair_header(
        &mut self,
        code: u8,
        name: &str,
        datasize: usize,
        nitems: usize,
    ) -> Result<(), NvError> {
        let namesize = u16::try_from(name.len() + 1).map_err(|_| NvError::InvalidName {
            name: name.to_owned(),
            reason: "longer than 2047 bytes",
        })?;
        self.buf.push(code);
        self.u16(namesize);
        self.u64(datasize as u64);
        self.u64(nitems as u64);
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        Ok(())
    }

    fn marker(&mut self, code: u8) {
        self.buf.push(code);
        self.u16(1);
        self.u64(0);
        self.u64(0);
        self.buf.push(0);
    }

    /// The pairs of `list`. `pending` is the number of terminator bytes packed after this
    /// list's end that `nvlist_size()` of anything inside it does not count (it counted them
    /// where their list started).
    fn list(&mut self, list: &Nvlist, pending: usize) -> Result<(), NvError> {
        for (name, value) in &list.pairs {
            let code = value.type_code();
            match value {
                NvValue::Null => self.pair_header(code, name, 0, 0)?,
                NvValue::Bool(b) => {
                    self.pair_header(code, name, 1, 0)?;
                    self.buf.push(u8::from(*b));
                }
                NvValue::Number(n) => {
                    self.pair_header(code, name, 8, 0)?;
                    self.u64(*n);
                }
                NvValue::String(s) => {
                    self.pair_header(code, name, s.len() + 1, 0)?;
                    self.buf.extend_from_slice(s.as_bytes());
                    self.buf.push(0);
                }
                NvValue::Binary(b) => {
                    self.pair_header(code, name, b.len(), 0)?;
                    self.buf.extend_from_slice(b);
                }
                NvValue::BoolArray(v) => {
                    self.pair_header(code, name, v.len(), v.len())?;
                    self.buf.extend(v.iter().map(|b| u8::from(*b)));
                }
                NvValue::NumberArray(v) => {
                    self.pair_header(code, name, 8 * v.len(), v.len())?;
                    for n in v {
                        self.u64(*n);
                    }
                }
                NvValue::StringArray(v) => {
                    let size = v.iter().map(|s| s.len() + 1).sum();
                    self.pair_header(code, name, size, v.len())?;
                    for s in v {
                        self.buf.extend_from_slice(s.as_bytes());
                        self.buf.push(0);
                    }
                }
                NvValue::Nvlist(child) => {
                    // nvpair_init_datasize(): nvlist_size(child).
                    let child_start = self.buf.len() + NVPAIR_HEADER_LEN + name.len() + 1;
                    let child_pending = pending + MARKER_LEN;
                    let datasize = if child.is_empty() {
                        NVLIST_HEADER_LEN
                    } else {
                        self.total.saturating_sub(child_start + child_pending)
                    };
                    self.pair_header(code, name, datasize, 0)?;
                    self.list_header();
                    self.list(child, child_pending)?;
                    self.marker(nv_type::NVLIST_UP);
                }
                NvValue::NvlistArray(elems) => {
                    // nvpair_create_nvlist_array(): datasize 0, nitems n.
                    self.pair_header(code, name, 0, elems.len())?;
                    let n = elems.len();
                    for (k, elem) in elems.iter().enumerate() {
                        // This element's ARRAY_NEXT, and the header and ARRAY_NEXT of each
                        // later element, were counted at the array pair.
                        let later = n - 1 - k;
                        let elem_pending =
                            pending + MARKER_LEN + later * (NVLIST_HEADER_LEN + MARKER_LEN);
                        self.list_header();
                        self.list(elem, elem_pending)?;
                        self.marker(nv_type::NVLIST_ARRAY_NEXT);
                    }
                }
            }
        }
        Ok(())
    }
}

/// How the list being read ends.
#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    /// At the end of the buffer.
    Root,
    /// With `NVLIST_UP`.
    Up,
    /// With `NVLIST_ARRAY_NEXT`.
    ArrayNext,
}

struct PairHeader<'a> {
    offset: usize,
    code: u8,
    datasize: usize,
    nitems: u64,
    name: &'a str,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    big_endian: bool,
    /// The root header's flags, which every nested header must repeat.
    flags: u8,
}

impl<'a> Reader<'a> {
    fn left(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], NvError> {
        let out = self.pos.checked_add(n).and_then(|end| self.buf.get(self.pos..end)).ok_or(
            NvError::Truncated { offset: self.pos, what, needed: n as u64, left: self.left() },
        )?;
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], NvError> {
        let s = self.take(N, what)?;
        s.first_chunk::<N>().copied().ok_or(NvError::Truncated {
            offset: self.pos,
            what,
            needed: N as u64,
            left: 0,
        })
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, NvError> {
        let [b] = self.array::<1>(what)?;
        Ok(b)
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, NvError> {
        let b = self.array::<2>(what)?;
        Ok(if self.big_endian { u16::from_be_bytes(b) } else { u16::from_le_bytes(b) })
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, NvError> {
        let b = self.array::<8>(what)?;
        Ok(if self.big_endian { u64::from_be_bytes(b) } else { u64::from_le_bytes(b) })
    }

    /// `nvlist_unpack_header()`.
    fn list_header(&mut self, root: bool) -> Result<(), NvError> {
        let offset = self.pos;
        if self.left() < NVLIST_HEADER_LEN {
            return Err(NvError::Truncated {
                offset,
                what: "nvlist header",
                needed: NVLIST_HEADER_LEN as u64,
                left: self.left(),
            });
        }
        let magic = self.u8("nvlist magic")?;
        if magic != NVLIST_HEADER_MAGIC {
            return Err(NvError::BadMagic { offset, magic });
        }
        let version = self.u8("nvlist version")?;
        if version != NVLIST_HEADER_VERSION {
            return Err(NvError::BadVersion { offset, version });
        }
        let flags = self.u8("nvlist flags")?;
        if root {
            if flags != 0 && flags != NV_FLAG_BIG_ENDIAN {
                return Err(NvError::BadFlags {
                    offset,
                    flags,
                    reason: "the root accepts only 0x00, or 0x80 (NV_FLAG_BIG_ENDIAN)",
                });
            }
            self.flags = flags;
            self.big_endian = flags == NV_FLAG_BIG_ENDIAN;
        } else if flags != self.flags {
            return Err(NvError::BadFlags {
                offset,
                flags,
                reason: "a nested header must repeat the root header's flags",
            });
        }
        let descriptors = self.u64("nvlist descriptors")?;
        let size = self.u64("nvlist size")?;
        let remaining = self.left();
        if size != remaining as u64 {
            if root && size < remaining as u64 {
                let used = self.pos.saturating_add(usize::try_from(size).unwrap_or(usize::MAX));
                let count = self.buf.len().saturating_sub(used);
                return Err(NvError::TrailingBytes { used, count });
            }
            return Err(NvError::SizeMismatch { offset, size, remaining });
        }
        if descriptors != 0 {
            return Err(NvError::Descriptors { offset, descriptors });
        }
        Ok(())
    }

    /// `nvpair_unpack_header()`.
    fn pair_header(&mut self) -> Result<PairHeader<'a>, NvError> {
        let offset = self.pos;
        if self.left() < NVPAIR_HEADER_LEN {
            return Err(NvError::Truncated {
                offset,
                what: "nvpair header",
                needed: NVPAIR_HEADER_LEN as u64,
                left: self.left(),
            });
        }
        let code = self.u8("nvpair type")?;
        if !matches!(
            code,
            nv_type::NULL
                ..=nv_type::DESCRIPTOR_ARRAY | nv_type::NVLIST_ARRAY_NEXT | nv_type::NVLIST_UP
        ) {
            return Err(NvError::UnknownType { offset, code });
        }
        let namesize = usize::from(self.u16("nvpair namesize")?);
        let datasize = self.u64("nvpair datasize")?;
        let nitems = self.u64("nvpair nitems")?;
        if namesize == 0 || namesize > NV_NAME_MAX {
            return Err(NvError::BadName {
                offset,
                reason: format!("namesize {namesize} outside 1..={NV_NAME_MAX}"),
            });
        }
        let raw = self.take(namesize, "nvpair name")?;
        let Some((&last, body)) = raw.split_last() else {
            return Err(NvError::BadName { offset, reason: "namesize 0".to_owned() });
        };
        if last != 0 || body.contains(&0) {
            return Err(NvError::BadName {
                offset,
                reason: format!("the {namesize} name bytes must end with their only NUL"),
            });
        }
        let name = std::str::from_utf8(body)
            .map_err(|e| NvError::BadName { offset, reason: format!("not UTF-8: {e}") })?;
        let left = self.left();
        let datasize =
            usize::try_from(datasize).ok().filter(|&d| d <= left).ok_or(NvError::Truncated {
                offset: self.pos,
                what: "nvpair payload",
                needed: datasize,
                left,
            })?;
        Ok(PairHeader { offset, code, datasize, nitems, name })
    }

    /// The pairs of one list, up to and including its terminator. `depth` is the list's own.
    fn list(&mut self, end: End, depth: usize) -> Result<Nvlist, NvError> {
        let mut list = Nvlist::new();
        let mut seen: HashSet<&'a str> = HashSet::new();
        loop {
            if self.left() == 0 {
                return match end {
                    End::Root => Ok(list),
                    End::Up => Err(NvError::Unterminated { depth, marker: "NVLIST_UP" }),
                    End::ArrayNext => {
                        Err(NvError::Unterminated { depth, marker: "NVLIST_ARRAY_NEXT" })
                    }
                };
            }
            let h = self.pair_header()?;
            let closes = match h.code {
                nv_type::NVLIST_UP => Some(End::Up),
                nv_type::NVLIST_ARRAY_NEXT => Some(End::ArrayNext),
                _ => None,
            };
            if let Some(kind) = closes {
                let marker = type_name(h.code);
                if !h.name.is_empty() || h.datasize != 0 || h.nitems != 0 {
                    return Err(NvError::BadMarker {
                        offset: h.offset,
                        marker,
                        reason: "must have an empty name, datasize 0 and nitems 0",
                    });
                }
                if kind != end {
                    return Err(NvError::BadMarker {
                        offset: h.offset,
                        marker,
                        reason: match end {
                            End::Root => "outside any nested list",
                            End::Up => "inside a nested nvlist (expected NVLIST_UP)",
                            End::ArrayNext => "inside an nvlist array element",
                        },
                    });
                }
                return Ok(list);
            }
            if h.name.is_empty() {
                return Err(NvError::BadName { offset: h.offset, reason: "empty name".to_owned() });
            }
            if !seen.insert(h.name) {
                return Err(NvError::DuplicateName { offset: h.offset, name: h.name.to_owned() });
            }
            let value = self.payload(&h, depth)?;
            list.pairs.push((h.name.to_owned(), value));
        }
    }

    fn payload(&mut self, h: &PairHeader<'a>, depth: usize) -> Result<NvValue, NvError> {
        let kind = type_name(h.code);
        let bad = |reason: String| NvError::BadPayload {
            offset: h.offset,
            name: h.name.to_owned(),
            kind,
            reason,
        };
        if matches!(h.code, nv_type::DESCRIPTOR | nv_type::DESCRIPTOR_ARRAY) {
            return Err(NvError::UnsupportedType {
                offset: h.offset,
                name: h.name.to_owned(),
                code: h.code,
            });
        }
        let is_array = matches!(
            h.code,
            nv_type::BOOL_ARRAY
                | nv_type::NUMBER_ARRAY
                | nv_type::STRING_ARRAY
                | nv_type::NVLIST_ARRAY
        );
        if !is_array && h.nitems != 0 {
            return Err(bad(format!("nitems {} on a scalar type (must be 0)", h.nitems)));
        }
        let ds = h.datasize;
        match h.code {
            nv_type::NULL => {
                if ds != 0 {
                    return Err(bad(format!("datasize {ds}, must be 0")));
                }
                Ok(NvValue::Null)
            }
            nv_type::BOOL => {
                if ds != 1 {
                    return Err(bad(format!("datasize {ds}, must be 1")));
                }
                match self.u8("BOOL payload")? {
                    0 => Ok(NvValue::Bool(false)),
                    1 => Ok(NvValue::Bool(true)),
                    b => Err(bad(format!("value {b}, must be 0 or 1"))),
                }
            }
            nv_type::NUMBER => {
                if ds != 8 {
                    return Err(bad(format!("datasize {ds}, must be 8")));
                }
                Ok(NvValue::Number(self.u64("NUMBER payload")?))
            }
            nv_type::STRING => {
                if ds == 0 {
                    return Err(bad("datasize 0 (a string has at least its NUL)".to_owned()));
                }
                let raw = self.take(ds, "STRING payload")?;
                Ok(NvValue::String(c_string(raw).map_err(bad)?))
            }
            nv_type::BINARY => {
                if ds == 0 {
                    return Err(bad("datasize 0 (libnv binaries are never empty)".to_owned()));
                }
                Ok(NvValue::Binary(self.take(ds, "BINARY payload")?.to_vec()))
            }
            nv_type::BOOL_ARRAY => {
                let n = array_len(h.nitems, 1, ds).map_err(bad)?;
                let raw = self.take(n, "BOOL_ARRAY payload")?;
                let mut out = Vec::with_capacity(n);
                for (i, b) in raw.iter().enumerate() {
                    match b {
                        0 => out.push(false),
                        1 => out.push(true),
                        _ => return Err(bad(format!("element {i} is {b}, must be 0 or 1"))),
                    }
                }
                Ok(NvValue::BoolArray(out))
            }
            nv_type::NUMBER_ARRAY => {
                let n = array_len(h.nitems, 8, ds).map_err(bad)?;
                let mut out = Vec::with_capacity(n);
                for _ in 0..n {
                    out.push(self.u64("NUMBER_ARRAY element")?);
                }
                Ok(NvValue::NumberArray(out))
            }
            nv_type::STRING_ARRAY => {
                if h.nitems == 0 || ds == 0 {
                    return Err(bad(format!(
                        "nitems {} and datasize {ds} must both be positive",
                        h.nitems
                    )));
                }
                let raw = self.take(ds, "STRING_ARRAY payload")?;
                let mut rest = raw;
                let mut out = Vec::new();
                let mut count: u64 = 0;
                while count < h.nitems {
                    let Some(nul) = rest.iter().position(|&b| b == 0) else {
                        return Err(bad(format!(
                            "{count} of {} strings fill datasize {ds}; the rest are missing",
                            h.nitems
                        )));
                    };
                    let (s, tail) = rest.split_at(nul);
                    out.push(
                        std::str::from_utf8(s)
                            .map_err(|e| bad(format!("not UTF-8: {e}")))?
                            .to_owned(),
                    );
                    rest = tail.get(1..).unwrap_or_default();
                    count += 1;
                }
                if !rest.is_empty() {
                    return Err(bad(format!(
                        "{} byte(s) of datasize {ds} left after {} strings",
                        rest.len(),
                        h.nitems
                    )));
                }
                Ok(NvValue::StringArray(out))
            }
            nv_type::NVLIST => {
                if ds == 0 {
                    return Err(bad("datasize 0".to_owned()));
                }
                if depth >= MAX_DEPTH {
                    return Err(NvError::NestingTooDeep { offset: h.offset });
                }
                self.list_header(false)?;
                Ok(NvValue::Nvlist(self.list(End::Up, depth + 1)?))
            }
            nv_type::NVLIST_ARRAY => {
                let fits = usize::try_from(h.nitems)
                    .ok()
                    .and_then(|n| n.checked_mul(NVLIST_HEADER_LEN))
                    .is_some_and(|need| need <= self.left());
                if h.nitems == 0 || !fits {
                    return Err(bad(format!(
                        "nitems {} must be positive and fit {} bytes left",
                        h.nitems,
                        self.left()
                    )));
                }
                if depth >= MAX_DEPTH {
                    return Err(NvError::NestingTooDeep { offset: h.offset });
                }
                let mut out = Vec::new();
                let mut count: u64 = 0;
                while count < h.nitems {
                    self.list_header(false)?;
                    out.push(self.list(End::ArrayNext, depth + 1)?);
                    count += 1;
                }
                Ok(NvValue::NvlistArray(out))
            }
            _ => Err(NvError::UnsupportedType {
                offset: h.offset,
                name: h.name.to_owned(),
                code: h.code,
            }),
        }
    }
}

/// libnv's array rule: nitems > 0 and datasize = size · nitems. The element count.
fn array_len(nitems: u64, size: usize, datasize: usize) -> Result<usize, String> {
    let n =
        usize::try_from(nitems).ok().filter(|&n| n > 0 && n.checked_mul(size) == Some(datasize));
    n.ok_or_else(|| {
        format!("nitems {nitems} × {size} bytes must equal datasize {datasize} and be positive")
    })
}

/// A string payload: datasize bytes, the last the only NUL, UTF-8.
fn c_string(raw: &[u8]) -> Result<String, String> {
    let Some((&last, body)) = raw.split_last() else {
        return Err("empty".to_owned());
    };
    if last != 0 || body.contains(&0) {
        return Err(format!("the {} bytes must end with their only NUL", raw.len()));
    }
    std::str::from_utf8(body).map(str::to_owned).map_err(|e| format!("not UTF-8: {e}"))
}

// ---------------------------------------------------------------------------------------
// pf kill requests (pf-kernel.md §3.1)
// ---------------------------------------------------------------------------------------

/// An errno the kernel's nvlist decoding returns (FreeBSD values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KernelErr {
    /// A required key is missing or of the wrong type, a string is too long, a value is not
    /// one of the allowed constants.
    #[error("EINVAL")]
    Einval,
    /// A number does not fit its field.
    #[error("ERANGE")]
    Erange,
    /// An array has more elements than its field.
    #[error("E2BIG")]
    E2big,
    /// The packed nvlist does not unpack (what `pf_ioctl.c` answers when `nvlist_unpack()`
    /// fails).
    #[error("EBADMSG")]
    Ebadmsg,
}

impl KernelErr {
    /// FreeBSD's errno (`sys/sys/errno.h`): EBADMSG is 89 there (74 is Linux's).
    pub fn errno(self) -> i32 {
        match self {
            KernelErr::Einval => 22,
            KernelErr::Erange => 34,
            KernelErr::E2big => 7,
            KernelErr::Ebadmsg => 89,
        }
    }
}

/// Any unpacking failure is `EBADMSG` to pf.
impl From<NvError> for KernelErr {
    fn from(_: NvError) -> Self {
        KernelErr::Ebadmsg
    }
}

/// The text of a C string up to its first NUL, as `nvlist_add_string()` of a `char[]` sees it.
fn c_prefix(s: &str) -> &str {
    s.split('\0').next().unwrap_or_default()
}

/// `pfctl_nv_add_addr()`: `{ "addr": binary 16 }`.
fn nv_addr(addr: &[u8; 16]) -> Nvlist {
    let mut nvl = Nvlist::new();
    nvl.put("addr", NvValue::Binary(addr.to_vec()));
    nvl
}

/// `pfctl_nv_add_rule_addr()` for an ADDRMASK address.
fn nv_rule_addr(r: &RuleAddr) -> Nvlist {
    let mut wrap = Nvlist::new();
    wrap.put("type", NvValue::Number(u64::from(PF_ADDR_ADDRMASK)));
    wrap.put("iflags", NvValue::Number(0));
    wrap.put("addr", NvValue::Nvlist(nv_addr(&r.addr)));
    wrap.put("mask", NvValue::Nvlist(nv_addr(&r.mask)));
    let mut nvl = Nvlist::new();
    nvl.put("addr", NvValue::Nvlist(wrap));
    // pf keeps ports in network byte order; libpfctl sends the u16 as stored, i.e. htons(p).
    let ports = r.port.map(|p| u64::from(p.to_be())).to_vec();
    nvl.put("port", NvValue::NumberArray(ports));
    nvl.put("neg", NvValue::Number(u64::from(r.neg)));
    nvl.put("port_op", NvValue::Number(u64::from(r.port_op)));
    nvl
}

/// The request nvlist for `DIOCKILLSTATESNV` / `DIOCCLRSTATESNV`, with every key in
/// libpfctl's order: `cmp{id,creatorid,direction}`, `af`, `proto`, `src`, `dst`, `rt_addr`,
/// `ifname`, `label`, `kill_match`, `nat`. Strings are cut at a NUL, as a C `char[]` would be;
/// an over-long `ifname`/`label` is sent as is (the kernel answers `EINVAL`).
pub fn kill_request(k: &PfKill) -> Nvlist {
    let mut cmp = Nvlist::new();
    cmp.put("id", NvValue::Number(k.id));
    cmp.put("creatorid", NvValue::Number(u64::from(k.creatorid)));
    cmp.put("direction", NvValue::Number(u64::from(k.direction)));
    let mut nvl = Nvlist::new();
    nvl.put("cmp", NvValue::Nvlist(cmp));
    nvl.put("af", NvValue::Number(u64::from(k.af)));
    nvl.put("proto", NvValue::Number(u64::from(k.proto)));
    nvl.put("src", NvValue::Nvlist(nv_rule_addr(&k.src)));
    nvl.put("dst", NvValue::Nvlist(nv_rule_addr(&k.dst)));
    nvl.put("rt_addr", NvValue::Nvlist(nv_rule_addr(&k.rt_addr)));
    nvl.put("ifname", NvValue::String(c_prefix(&k.ifname).to_owned()));
    nvl.put("label", NvValue::String(c_prefix(&k.label).to_owned()));
    nvl.put("kill_match", NvValue::Bool(k.kill_match));
    nvl.put("nat", NvValue::Bool(k.nat));
    nvl
}

/// `PF_ADDR_RANGE`, the last of the `PF_ADDR_*` types.
const PF_ADDR_TYPE_MAX: u8 = 5;

/// `pf_nvuintN()`: a required number ≤ `max`.
fn k_uint(nvl: &Nvlist, name: &str, max: u64) -> Result<u64, KernelErr> {
    match nvl.get(name) {
        Some(NvValue::Number(n)) if *n <= max => Ok(*n),
        Some(NvValue::Number(_)) => Err(KernelErr::Erange),
        _ => Err(KernelErr::Einval),
    }
}

fn k_u8(nvl: &Nvlist, name: &str) -> Result<u8, KernelErr> {
    u8::try_from(k_uint(nvl, name, u64::from(u8::MAX))?).map_err(|_| KernelErr::Erange)
}

/// `pf_nvstring()`: a required string shorter than `size` (room for the NUL).
fn k_string(nvl: &Nvlist, name: &str, size: usize) -> Result<String, KernelErr> {
    match nvl.get(name) {
        Some(NvValue::String(s)) if s.len() < size => Ok(s.clone()),
        _ => Err(KernelErr::Einval),
    }
}

/// `pf_nvbool()`.
fn k_bool(nvl: &Nvlist, name: &str) -> Result<bool, KernelErr> {
    match nvl.get(name) {
        Some(NvValue::Bool(b)) => Ok(*b),
        _ => Err(KernelErr::Einval),
    }
}

/// A required nested nvlist (`nvlist_exists_nvlist()` or `EINVAL`).
fn k_nvlist<'a>(nvl: &'a Nvlist, name: &str) -> Result<&'a Nvlist, KernelErr> {
    match nvl.get(name) {
        Some(NvValue::Nvlist(l)) => Ok(l),
        _ => Err(KernelErr::Einval),
    }
}

/// `pf_nvaddr_to_addr()`: `{ "addr": binary ≤ 16 }` into a zeroed `pf_addr`.
fn k_addr(nvl: &Nvlist) -> Result<[u8; 16], KernelErr> {
    let mut out = [0u8; 16];
    match nvl.get("addr") {
        Some(NvValue::Binary(b)) if b.len() <= out.len() => {
            for (o, i) in out.iter_mut().zip(b) {
                *o = *i;
            }
            Ok(out)
        }
        _ => Err(KernelErr::Einval),
    }
}

/// `pf_nvrule_addr_to_rule_addr()`, with `pf_nvaddr_wrap_to_addr_wrap()` inlined.
fn k_rule_addr(nvl: &Nvlist) -> Result<RuleAddr, KernelErr> {
    let wrap = k_nvlist(nvl, "addr")?;
    let ty = k_u8(wrap, "type")?;
    let _iflags = k_u8(wrap, "iflags")?;
    // PF_ADDR_DYNIFTL needs an interface name, PF_ADDR_TABLE a table name.
    if ty == 2 {
        k_string(wrap, "ifname", IFNAMSIZ)?;
    }
    if ty == 3 {
        k_string(wrap, "tblname", 32)?;
    }
    let addr = k_addr(k_nvlist(wrap, "addr")?)?;
    let mask = k_addr(k_nvlist(wrap, "mask")?)?;
    if ty > PF_ADDR_TYPE_MAX {
        return Err(KernelErr::Einval);
    }
    // pf_nvuint16_array(nvl, "port", port, 2): E2BIG before ERANGE; one element leaves
    // port[1] zero.
    let ports = match nvl.get("port") {
        Some(NvValue::NumberArray(a)) => a,
        _ => return Err(KernelErr::Einval),
    };
    if ports.len() > 2 {
        return Err(KernelErr::E2big);
    }
    let mut port = [0u16; 2];
    for (p, raw) in port.iter_mut().zip(ports) {
        let net = u16::try_from(*raw).map_err(|_| KernelErr::Erange)?;
        *p = u16::from_be(net);
    }
    let neg = k_u8(nvl, "neg")? != 0;
    let op = k_u8(nvl, "port_op")?;
    if op > port_op::MAX {
        return Err(KernelErr::Einval);
    }
    // The kernel accepts all six PF_ADDR_* types; a kill by anything but an address and
    // mask is outside this model, which refuses the other five once the kernel's own
    // checks have passed (so the kernel's errors keep their precedence).
    if ty != PF_ADDR_ADDRMASK {
        return Err(KernelErr::Einval);
    }
    Ok(RuleAddr { addr, mask, port, neg, port_op: op })
}

/// The kernel's `pf_nvstate_kill_to_kstate_kill()`, checks in its order: missing or
/// mistyped required keys → `EINVAL`; numbers too large for their field → `ERANGE`; a
/// `port` array of more than 2 → `E2BIG`; `ifname` ≥ 16 or `label` ≥ 64 bytes → `EINVAL`;
/// `port_op` > 9 → `EINVAL`; address types other than ADDRMASK → `EINVAL` (the kernel
/// takes 1..=5 too; this model does not). `rt_addr` is optional (absent or mistyped means
/// zero); unknown keys are ignored.
///
/// `nat` is one of the ignored keys: libpfctl sends it, but the kernel's decoder never reads
/// it (sys/netpfil/pf/pf_nv.c, `pf_nvstate_kill_to_kstate_kill` ends with `kill_match`), so
/// a kill over `DIOCKILLSTATESNV` always matches the wire key. Only pf netlink's
/// `PF_CS_NAT` reaches `psk_nat` ([`crate::nl::parse_kill_request`]).
///
/// `proto` is a C `int` in the kernel (`ERANGE` outside `INT_MIN..=INT_MAX`); an int
/// outside 0..=255 can match no state, and [`PfKill`] has no room for it, so it is `ERANGE`
/// here too.
pub fn kill_from_request(nvl: &Nvlist) -> Result<PfKill, KernelErr> {
    let cmp = k_nvlist(nvl, "cmp")?;
    let id = k_uint(cmp, "id", u64::MAX)?;
    let creatorid = u32::try_from(k_uint(cmp, "creatorid", u64::from(u32::MAX))?)
        .map_err(|_| KernelErr::Erange)?;
    let direction = k_u8(cmp, "direction")?;
    let af = k_u8(nvl, "af")?;
    let proto = match nvl.get("proto") {
        Some(NvValue::Number(n)) => u8::try_from(*n).map_err(|_| KernelErr::Erange)?,
        _ => return Err(KernelErr::Einval),
    };
    let src = k_rule_addr(k_nvlist(nvl, "src")?)?;
    let dst = k_rule_addr(k_nvlist(nvl, "dst")?)?;
    let rt_addr = match nvl.get("rt_addr") {
        Some(NvValue::Nvlist(l)) => k_rule_addr(l)?,
        _ => RuleAddr::default(),
    };
    let ifname = k_string(nvl, "ifname", IFNAMSIZ)?;
    let label = k_string(nvl, "label", PF_RULE_LABEL_SIZE)?;
    let kill_match = k_bool(nvl, "kill_match")?;
    Ok(PfKill {
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
        nat: false,
    })
}

/// The kernel's reply to a kill: `{ "killed": number }` (53 bytes packed).
pub fn killed_reply(killed: u32) -> Nvlist {
    let mut nvl = Nvlist::new();
    nvl.put("killed", NvValue::Number(u64::from(killed)));
    nvl
}

/// The count from a kill reply (a `u_int` in the kernel).
pub fn parse_killed_reply(nvl: &Nvlist) -> Result<u32, NvError> {
    let n = nvl.number("killed")?;
    u32::try_from(n).map_err(|_| NvError::OutOfRange {
        name: "killed".to_owned(),
        value: n,
        max: u64::from(u32::MAX),
    })
}
