//! Reading a pkg(8) archive back, independently of the writer: zstd through `ruzstd`'s
//! decoder, tar through the `tar` crate, and checks of what pkg relies on: the two
//! manifests first, every listed file present with its sha256, nothing unlisted, flatsize,
//! and programs that are FreeBSD ELF executables.

use std::collections::BTreeMap;
use std::io::Read;

use serde_json::Value;

use super::pkg::file_sum;

/// One tar entry.
#[derive(Debug, Clone)]
pub struct Entry {
    pub path: String,
    pub mode: u32,
    pub uname: String,
    pub gname: String,
    pub data: Vec<u8>,
}

/// A package read back.
#[derive(Debug)]
pub struct ReadPackage {
    pub compact: Value,
    pub manifest: Value,
    /// Entries after the two manifests, in archive order.
    pub entries: Vec<Entry>,
}

impl ReadPackage {
    #[cfg(test)]
    pub fn entry(&self, path: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.path == path)
    }

    pub fn str_field(&self, key: &str) -> Result<&str, String> {
        self.manifest
            .get(key)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("+MANIFEST has no string {key:?}"))
    }
}

/// Decompress and split a package; the first two entries must be the manifests.
pub fn read(bytes: &[u8]) -> Result<ReadPackage, String> {
    let mut tar = Vec::new();
    ruzstd::decoding::StreamingDecoder::new(bytes)
        .map_err(|e| format!("not a zstd stream: {e}"))?
        .read_to_end(&mut tar)
        .map_err(|e| format!("zstd: {e}"))?;
    let mut archive = tar::Archive::new(tar.as_slice());
    let mut entries = Vec::new();
    for e in archive.entries().map_err(|e| format!("tar: {e}"))? {
        let mut e = e.map_err(|e| format!("tar entry: {e}"))?;
        let header = e.header();
        if header.entry_type() != tar::EntryType::Regular {
            return Err(format!("unexpected tar entry type {:?}", header.entry_type()));
        }
        let path = String::from_utf8(e.path_bytes().into_owned())
            .map_err(|_| "a path is not UTF-8".to_owned())?;
        let mode = header.mode().map_err(|e| format!("{path}: mode: {e}"))?;
        let uname = header.username().ok().flatten().unwrap_or_default().to_owned();
        let gname = header.groupname().ok().flatten().unwrap_or_default().to_owned();
        let mut data = Vec::new();
        e.read_to_end(&mut data).map_err(|e| format!("{path}: {e}"))?;
        entries.push(Entry { path, mode, uname, gname, data });
    }
    let mut it = entries.into_iter();
    let first = it.next().ok_or("empty archive")?;
    let second = it.next().ok_or("only one entry")?;
    if first.path != "+COMPACT_MANIFEST" || second.path != "+MANIFEST" {
        return Err(format!(
            "the first entries are {:?} and {:?}, not +COMPACT_MANIFEST and +MANIFEST",
            first.path, second.path
        ));
    }
    let parse = |e: &Entry| {
        serde_json::from_slice::<Value>(&e.data).map_err(|err| format!("{}: {err}", e.path))
    };
    Ok(ReadPackage { compact: parse(&first)?, manifest: parse(&second)?, entries: it.collect() })
}

/// What pkg needs of a package: fields, sums, sizes, and the compact manifest agreeing with
/// the full one.
pub fn check(p: &ReadPackage) -> Result<(), String> {
    for key in ["name", "origin", "version", "comment", "desc", "maintainer", "www", "abi", "arch"]
    {
        if p.str_field(key)?.is_empty() {
            return Err(format!("+MANIFEST: {key} is empty"));
        }
    }
    // pkg URL-decodes desc and scripts: only text that decodes to itself is safe.
    let scripts = p.manifest.get("scripts").and_then(Value::as_object);
    let texts = scripts.into_iter().flat_map(|m| m.values().filter_map(Value::as_str));
    for t in texts.chain([p.str_field("desc")?]) {
        if t.contains('%') || !t.is_ascii() {
            return Err(format!(
                "{:?}...: '%' or non-ASCII text, which pkg would URL-decode",
                t.get(..20)
            ));
        }
    }
    let prefix = p.str_field("prefix")?;
    let files = p.manifest.get("files").and_then(Value::as_object).ok_or("+MANIFEST: no files")?;
    let mut unlisted: BTreeMap<&str, &Entry> =
        p.entries.iter().map(|e| (e.path.as_str(), e)).collect();
    let mut flat = 0u64;
    for (path, sum) in files {
        if !path.starts_with(&format!("{prefix}/")) {
            return Err(format!("{path} is outside the prefix {prefix}"));
        }
        let e =
            unlisted.remove(path.as_str()).ok_or_else(|| format!("{path}: not in the archive"))?;
        let actual = file_sum(&e.data);
        if sum.as_str() != Some(actual.as_str()) {
            return Err(format!("{path}: manifest sum {sum} but the archive holds {actual}"));
        }
        if (e.uname.as_str(), e.gname.as_str()) != ("root", "wheel") {
            return Err(format!("{path}: owned by {}:{}, not root:wheel", e.uname, e.gname));
        }
        flat += e.data.len() as u64;
    }
    if let Some(extra) = unlisted.keys().next() {
        return Err(format!("{extra}: in the archive but not in +MANIFEST"));
    }
    if p.manifest.get("flatsize").and_then(Value::as_u64) != Some(flat) {
        return Err(format!("flatsize is not {flat}, the sum of the file sizes"));
    }
    let mut full = p.manifest.clone();
    if let Some(obj) = full.as_object_mut() {
        for key in ["files", "directories", "scripts"] {
            obj.remove(key);
        }
    }
    if full != p.compact {
        return Err(
            "+COMPACT_MANIFEST is not +MANIFEST without files, directories and scripts".into()
        );
    }
    Ok(())
}

/// How an ELF file says it is for FreeBSD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FreebsdElf {
    /// `e_ident[EI_OSABI] == ELFOSABI_FREEBSD` (9).
    pub osabi: bool,
    /// The `.note.tag` ABI note (`FreeBSD`, `NT_FREEBSD_ABI_TAG`): `__FreeBSD_version` of
    /// the C library it was linked against, e.g. 1400097.
    pub abi_tag: Option<u32>,
}

/// An x86-64 ELF executable marked for FreeBSD (by its OSABI byte or its ABI note).
pub fn freebsd_elf(data: &[u8]) -> Result<FreebsdElf, String> {
    let u16_at = |o: usize| data.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at =
        |o: usize| data.get(o..o + 4).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes);
    let u64_at =
        |o: usize| data.get(o..o + 8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
    if data.get(..4) != Some(b"\x7fELF") || data.get(4) != Some(&2) || data.get(5) != Some(&1) {
        return Err("not a 64-bit little-endian ELF file".into());
    }
    if u16_at(0x12) != Some(62) {
        return Err("not x86-64 (e_machine is not EM_X86_64)".into());
    }
    if !matches!(u16_at(0x10), Some(2 | 3)) {
        return Err("not an executable (e_type is neither EXEC nor DYN)".into());
    }
    let osabi = data.get(7) == Some(&9);
    let too_short = || "truncated ELF section headers".to_owned();
    let shoff = usize::try_from(u64_at(0x28).ok_or_else(too_short)?).map_err(|_| too_short())?;
    let shentsize = usize::from(u16_at(0x3a).ok_or_else(too_short)?);
    let shnum = usize::from(u16_at(0x3c).ok_or_else(too_short)?);
    let shstrndx = usize::from(u16_at(0x3e).ok_or_else(too_short)?);
    let section = |i: usize| -> Option<(u32, usize, usize)> {
        let h = shoff.checked_add(i.checked_mul(shentsize)?)?;
        let off = usize::try_from(u64_at(h + 0x18)?).ok()?;
        let size = usize::try_from(u64_at(h + 0x20)?).ok()?;
        Some((u32_at(h)?, off, size))
    };
    let (_, stroff, strsize) = section(shstrndx).ok_or_else(too_short)?;
    let strtab = data.get(stroff..stroff.saturating_add(strsize)).ok_or_else(too_short)?;
    let mut abi_tag = None;
    for i in 0..shnum {
        let (name, off, size) = section(i).ok_or_else(too_short)?;
        let name = strtab.get(name as usize..).unwrap_or_default();
        if !name.starts_with(b".note.tag\0") {
            continue;
        }
        let note = data.get(off..off.saturating_add(size)).ok_or_else(too_short)?;
        abi_tag = freebsd_abi_note(note);
    }
    if !osabi && abi_tag.is_none() {
        return Err("neither EI_OSABI = FreeBSD nor a FreeBSD .note.tag".into());
    }
    Ok(FreebsdElf { osabi, abi_tag })
}

/// The first `FreeBSD` note of type 1 (`NT_FREEBSD_ABI_TAG`) in a note section.
fn freebsd_abi_note(mut notes: &[u8]) -> Option<u32> {
    let word = |b: &[u8], o: usize| {
        b.get(o..o + 4).and_then(|w| w.try_into().ok()).map(u32::from_le_bytes)
    };
    let pad4 = |n: usize| n.div_ceil(4) * 4;
    while notes.len() >= 12 {
        let namesz = word(notes, 0)? as usize;
        let descsz = word(notes, 4)? as usize;
        let kind = word(notes, 8)?;
        let name = notes.get(12..12 + namesz)?;
        let desc_at = 12 + pad4(namesz);
        if kind == 1 && name == b"FreeBSD\0" {
            return word(notes, desc_at).filter(|_| descsz >= 4);
        }
        notes = notes.get(desc_at + pad4(descsz)..)?;
    }
    None
}
