//! Netlink framing: building messages with nested attributes, and walking received buffers
//! without copying. Used for ctnetlink (Linux conntrack) and for pf's generic netlink family
//! (FreeBSD), whose framing is the same: `nlmsghdr`, a 4-byte family header (`nfgenmsg` or
//! `genlmsghdr`), then 4-byte-aligned attributes.
//!
//! Pure code, no I/O, no `unsafe`. Every read is bounds-checked; a malformed kernel message is
//! an error, never a panic.
#![forbid(unsafe_code)]

/// A message that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed netlink message: {0}")]
pub struct NlError(pub String);

impl NlError {
    pub fn new(why: impl Into<String>) -> Self {
        Self(why.into())
    }
}

/// `sizeof(struct nlmsghdr)`.
pub const NLMSG_HDRLEN: usize = 16;
/// `sizeof(struct nfgenmsg)`.
pub const NFGENMSG_LEN: usize = 4;
/// `sizeof(struct genlmsghdr)`.
pub const GENLMSG_LEN: usize = 4;
/// `sizeof(struct nlattr)`.
pub const NLA_HDRLEN: usize = 4;
/// `NLA_F_NESTED`: set on nested attributes (strict kernel parsers require it).
pub const NLA_F_NESTED: u16 = 0x8000;
/// `NLA_F_NET_BYTEORDER`.
pub const NLA_F_NET_BYTEORDER: u16 = 0x4000;
const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | NLA_F_NET_BYTEORDER);

pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const NLMSG_OVERRUN: u16 = 4;

pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_MULTI: u16 = 0x2;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_DUMP: u16 = 0x300;
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_CREATE: u16 = 0x400;
/// Set by the kernel on a dump that was interrupted by a table change (resize).
pub const NLM_F_DUMP_INTR: u16 = 0x10;

/// Round up to the 4-byte netlink alignment.
pub const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Appends netlink messages to one buffer, so many can go out in one `sendmsg`.
#[derive(Debug, Default)]
pub struct MsgBuilder {
    buf: Vec<u8>,
}

/// Where a message or nested attribute started, to patch its length when it ends.
#[derive(Debug, Clone, Copy)]
#[must_use]
pub struct Mark(usize);

impl MsgBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_capacity(cap: usize) -> Self {
        Self { buf: Vec::with_capacity(cap) }
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    pub fn clear(&mut self) {
        self.buf.clear();
    }

    /// Drop everything after `mark` (a message that turned out not to be wanted).
    pub fn truncate(&mut self, mark: Mark) {
        self.buf.truncate(mark.0);
    }

    /// Start a netfilter message: `nlmsghdr` then `nfgenmsg` {family, version, res_id = 0}.
    pub fn begin(&mut self, msg_type: u16, flags: u16, seq: u32, family: u8, version: u8) -> Mark {
        self.begin_with(msg_type, flags, seq, [family, version, 0, 0])
    }

    /// Start a generic netlink message: `nlmsghdr` then `genlmsghdr` {cmd, version,
    /// reserved = 0}.
    pub fn begin_genl(
        &mut self,
        family_id: u16,
        flags: u16,
        seq: u32,
        cmd: u8,
        version: u8,
    ) -> Mark {
        self.begin_with(family_id, flags, seq, [cmd, version, 0, 0])
    }

    /// Start a message with an explicit 4-byte family header.
    pub fn begin_with(&mut self, msg_type: u16, flags: u16, seq: u32, header: [u8; 4]) -> Mark {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_len, patched in end()
        self.buf.extend_from_slice(&msg_type.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid: the kernel
        self.buf.extend_from_slice(&header);
        Mark(start)
    }

    /// Finish the message begun at `mark`.
    pub fn end(&mut self, mark: Mark) {
        self.patch_u32(mark.0, self.buf.len() - mark.0);
    }

    fn patch_u32(&mut self, at: usize, len: usize) {
        // Messages here are at most a few hundred bytes; a length that does not fit is a bug
        // in this module, and saturating keeps it visible to the kernel as EINVAL.
        let len = u32::try_from(len).unwrap_or(u32::MAX);
        self.buf[at..at + 4].copy_from_slice(&len.to_ne_bytes());
    }

    fn pad(&mut self) {
        let padded = align4(self.buf.len());
        self.buf.resize(padded, 0);
    }

    pub fn attr(&mut self, kind: u16, data: &[u8]) {
        let len = NLA_HDRLEN + data.len();
        let len16 = u16::try_from(len).unwrap_or(u16::MAX);
        self.buf.extend_from_slice(&len16.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.pad();
    }

    pub fn attr_u8(&mut self, kind: u16, v: u8) {
        self.attr(kind, &[v]);
    }

    pub fn attr_be16(&mut self, kind: u16, v: u16) {
        self.attr(kind, &v.to_be_bytes());
    }

    pub fn attr_be32(&mut self, kind: u16, v: u32) {
        self.attr(kind, &v.to_be_bytes());
    }

    /// A native-endian u32 (`NLA_U32`, e.g. `CTA_FILTER_*_FLAGS`).
    pub fn attr_u32(&mut self, kind: u16, v: u32) {
        self.attr(kind, &v.to_ne_bytes());
    }

    /// A native-endian u16 (`NLA_U16`).
    pub fn attr_u16(&mut self, kind: u16, v: u16) {
        self.attr(kind, &v.to_ne_bytes());
    }

    /// A native-endian u64 (`NLA_U64`).
    pub fn attr_u64(&mut self, kind: u16, v: u64) {
        self.attr(kind, &v.to_ne_bytes());
    }

    /// A NUL-terminated string (`NLA_STRING`).
    pub fn attr_str(&mut self, kind: u16, s: &str) {
        let mut v = Vec::with_capacity(s.len() + 1);
        v.extend_from_slice(s.as_bytes());
        v.push(0);
        self.attr(kind, &v);
    }

    pub fn nest_begin(&mut self, kind: u16) -> Mark {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf.extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        Mark(start)
    }

    pub fn nest_end(&mut self, mark: Mark) {
        let len = self.buf.len() - mark.0;
        let len16 = u16::try_from(len).unwrap_or(u16::MAX);
        self.buf[mark.0..mark.0 + 2].copy_from_slice(&len16.to_ne_bytes());
    }
}

/// One received netlink message.
#[derive(Debug, Clone, Copy)]
pub struct NlMsg<'a> {
    pub msg_type: u16,
    pub flags: u16,
    pub seq: u32,
    /// Everything after the `nlmsghdr`.
    pub payload: &'a [u8],
}

impl<'a> NlMsg<'a> {
    /// For `NLMSG_ERROR`: the (negative) errno, 0 for an ACK, and the sequence number of the
    /// request it answers.
    pub fn error(&self) -> Result<(i32, u32), NlError> {
        let p = self.payload;
        if p.len() < 4 + NLMSG_HDRLEN {
            return Err(NlError::new("truncated NLMSG_ERROR"));
        }
        let errno = i32::from_ne_bytes([p[0], p[1], p[2], p[3]]);
        let seq = u32::from_ne_bytes([p[12], p[13], p[14], p[15]]);
        Ok((errno, seq))
    }

    /// For netfilter messages: the `nfgenmsg` family and the attributes after it.
    pub fn nf_attrs(&self) -> Result<(u8, Attrs<'a>), NlError> {
        if self.payload.len() < NFGENMSG_LEN {
            return Err(NlError::new("netfilter message shorter than nfgenmsg"));
        }
        Ok((self.payload[0], Attrs::new(&self.payload[NFGENMSG_LEN..])))
    }

    /// For generic netlink messages: the `genlmsghdr` command and the attributes after it.
    pub fn genl_attrs(&self) -> Result<(u8, Attrs<'a>), NlError> {
        if self.payload.len() < GENLMSG_LEN {
            return Err(NlError::new("generic netlink message shorter than genlmsghdr"));
        }
        Ok((self.payload[0], Attrs::new(&self.payload[GENLMSG_LEN..])))
    }
}

/// Iterates over the messages in one received buffer.
#[derive(Debug, Clone)]
pub struct NlMsgs<'a> {
    buf: &'a [u8],
}

impl<'a> NlMsgs<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }
}

impl<'a> Iterator for NlMsgs<'a> {
    type Item = Result<NlMsg<'a>, NlError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.is_empty() {
            return None;
        }
        let b = self.buf;
        if b.len() < NLMSG_HDRLEN {
            self.buf = &[];
            return Some(Err(NlError::new("truncated netlink header")));
        }
        let len = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
        if len < NLMSG_HDRLEN || len > b.len() {
            self.buf = &[];
            return Some(Err(NlError::new(format!(
                "netlink message length {len} outside 16..={}",
                b.len()
            ))));
        }
        let msg = NlMsg {
            msg_type: u16::from_ne_bytes([b[4], b[5]]),
            flags: u16::from_ne_bytes([b[6], b[7]]),
            seq: u32::from_ne_bytes([b[8], b[9], b[10], b[11]]),
            payload: &b[NLMSG_HDRLEN..len],
        };
        self.buf = &b[align4(len).min(b.len())..];
        Some(Ok(msg))
    }
}

/// Iterates over the attributes in a payload, yielding (type without flags, value).
#[derive(Debug, Clone)]
pub struct Attrs<'a> {
    buf: &'a [u8],
}

impl<'a> Attrs<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }
}

impl<'a> Iterator for Attrs<'a> {
    type Item = Result<(u16, &'a [u8]), NlError>;

    fn next(&mut self) -> Option<Self::Item> {
        // Trailing bytes shorter than an attribute header are padding.
        if self.buf.len() < NLA_HDRLEN {
            return None;
        }
        let b = self.buf;
        let len = usize::from(u16::from_ne_bytes([b[0], b[1]]));
        let kind = u16::from_ne_bytes([b[2], b[3]]) & NLA_TYPE_MASK;
        if len < NLA_HDRLEN || len > b.len() {
            self.buf = &[];
            return Some(Err(NlError::new(format!(
                "attribute {kind} length {len} outside 4..={}",
                b.len()
            ))));
        }
        self.buf = &b[align4(len).min(b.len())..];
        Some(Ok((kind, &b[NLA_HDRLEN..len])))
    }
}

fn fixed<const N: usize>(v: &[u8], what: &str) -> Result<[u8; N], NlError> {
    v.try_into().map_err(|_| NlError::new(format!("{what}: {} bytes, expected {N}", v.len())))
}

pub fn get_u8(v: &[u8], what: &str) -> Result<u8, NlError> {
    Ok(fixed::<1>(v, what)?[0])
}

pub fn get_be16(v: &[u8], what: &str) -> Result<u16, NlError> {
    Ok(u16::from_be_bytes(fixed(v, what)?))
}

pub fn get_be32(v: &[u8], what: &str) -> Result<u32, NlError> {
    Ok(u32::from_be_bytes(fixed(v, what)?))
}

pub fn get_be64(v: &[u8], what: &str) -> Result<u64, NlError> {
    Ok(u64::from_be_bytes(fixed(v, what)?))
}

/// Native-endian integers (`NLA_U16`/`NLA_U32`/`NLA_U64` in generic netlink families).
pub fn get_u16(v: &[u8], what: &str) -> Result<u16, NlError> {
    Ok(u16::from_ne_bytes(fixed(v, what)?))
}

pub fn get_u32(v: &[u8], what: &str) -> Result<u32, NlError> {
    Ok(u32::from_ne_bytes(fixed(v, what)?))
}

pub fn get_u64(v: &[u8], what: &str) -> Result<u64, NlError> {
    Ok(u64::from_ne_bytes(fixed(v, what)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_pads_and_patches_lengths() {
        let mut b = MsgBuilder::new();
        let m = b.begin(0x0102, NLM_F_REQUEST, 7, 2, 1);
        let n = b.nest_begin(1);
        b.attr_u8(1, 6);
        b.nest_end(n);
        b.attr_be32(8, 0x01020304);
        b.end(m);
        let bytes = b.as_bytes();
        assert_eq!(bytes.len() % 4, 0);
        let msgs: Vec<_> = NlMsgs::new(bytes).collect::<Result<_, _>>().unwrap_or_default();
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].msg_type, 0x0102);
        assert_eq!(msgs[0].seq, 7);
        let (family, attrs) = msgs[0].nf_attrs().unwrap_or((0, Attrs::new(&[])));
        assert_eq!(family, 2);
        let attrs: Vec<_> = attrs.collect::<Result<_, _>>().unwrap_or_default();
        assert_eq!(attrs.len(), 2);
        assert_eq!(attrs[0].0, 1, "nested flag is masked off");
        assert_eq!(attrs[0].1.len(), 8, "u8 attribute padded to 8 bytes inside the nest");
        assert_eq!(attrs[1], (8, &[1u8, 2, 3, 4][..]));
    }

    #[test]
    fn hostile_lengths_are_errors() {
        // Message length 0, 15, and longer than the buffer.
        for len in [0u32, 15, 1000] {
            let mut buf = vec![0u8; 20];
            buf[..4].copy_from_slice(&len.to_ne_bytes());
            let r: Vec<_> = NlMsgs::new(&buf).collect();
            assert!(r.iter().any(Result::is_err), "length {len}");
        }
        // Attribute length 2 and longer than the buffer.
        for len in [2u16, 100] {
            let mut buf = vec![0u8; 8];
            buf[..2].copy_from_slice(&len.to_ne_bytes());
            assert!(Attrs::new(&buf).any(|a| a.is_err()), "attr length {len}");
        }
    }
}
