//! pkg(8) package archives, written without FreeBSD: a tar archive (ustar headers, as
//! libarchive writes them for pkg) compressed with zstd, whose first two entries are
//! `+COMPACT_MANIFEST` and `+MANIFEST` (JSON, which is UCL), followed by the files under
//! their absolute paths, the way `pkg create` lays them out (libpkg/pkg_create.c,
//! packing.c). pkg reads any compression libarchive knows (`.pkg` is zstd since pkg 1.17;
//! xz, bzip2, gzip and plain tar are read too); zstd is what FreeBSD's own packages use and
//! what `ruzstd` writes in pure Rust.
//!
//! Pure: [`Package::archive`] turns a description into bytes; nothing here touches a disk.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// One regular file of a package.
#[derive(Debug, Clone)]
pub struct PkgFile {
    /// Absolute path where pkg installs it, e.g. `/usr/local/sbin/statecull-broker`.
    pub path: String,
    /// Permission bits (0555 for programs and rc.d scripts, 0644 for data).
    pub mode: u32,
    pub data: Vec<u8>,
}

/// A dependency on another package.
#[derive(Debug, Clone)]
pub struct PkgDep {
    pub name: String,
    pub origin: String,
    pub version: String,
}

/// Everything a package says about itself.
#[derive(Debug, Clone)]
pub struct Package {
    pub name: String,
    pub origin: String,
    pub version: String,
    pub comment: String,
    pub desc: String,
    pub maintainer: String,
    pub www: String,
    /// `FreeBSD:14:amd64`.
    pub abi: String,
    /// The older spelling pkg still records, `freebsd:14:x86:64`.
    pub arch: String,
    pub prefix: String,
    pub licenses: Vec<String>,
    pub categories: Vec<String>,
    pub deps: Vec<PkgDep>,
    pub files: Vec<PkgFile>,
    /// Directories the package owns (removed on deinstall when empty).
    pub directories: Vec<String>,
    /// `pre-install`, `post-install`, `pre-deinstall`, `post-deinstall`: sh scripts.
    pub scripts: BTreeMap<String, String>,
    pub users: Vec<String>,
    pub groups: Vec<String>,
}

/// `1$<hex>`: pkg's file checksum, type 1 (`PKG_HASH_TYPE_SHA256_HEX`, libpkg/pkg_checksum.c).
pub fn file_sum(data: &[u8]) -> String {
    format!("1${}", hex(&Sha256::digest(data)))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Package {
    /// The file name pkg gives it: `name-version.pkg`.
    pub fn file_name(&self) -> String {
        format!("{}-{}.pkg", self.name, self.version)
    }

    /// Sum of the installed files' sizes.
    pub fn flatsize(&self) -> u64 {
        self.files.iter().map(|f| f.data.len() as u64).sum()
    }

    /// `+MANIFEST` (full) or `+COMPACT_MANIFEST` (without files, directories and scripts,
    /// what `pkg` reads first and repositories index).
    pub fn manifest(&self, compact: bool) -> Value {
        let deps: serde_json::Map<String, Value> = self
            .deps
            .iter()
            .map(|d| (d.name.clone(), json!({ "origin": d.origin, "version": d.version })))
            .collect();
        let mut m = json!({
            "name": self.name,
            "origin": self.origin,
            "version": self.version,
            "comment": self.comment,
            "maintainer": self.maintainer,
            "www": self.www,
            "abi": self.abi,
            "arch": self.arch,
            "prefix": self.prefix,
            "flatsize": self.flatsize(),
            "licenselogic": "single",
            "licenses": self.licenses,
            "desc": self.desc,
            "categories": self.categories,
            "deps": deps,
            "users": self.users,
            "groups": self.groups,
        });
        if !compact && let Some(obj) = m.as_object_mut() {
            let files: serde_json::Map<String, Value> = self
                .files
                .iter()
                .map(|f| (f.path.clone(), Value::from(file_sum(&f.data))))
                .collect();
            let dirs: serde_json::Map<String, Value> =
                self.directories.iter().map(|d| (d.clone(), Value::from("y"))).collect();
            obj.insert("files".into(), Value::Object(files));
            obj.insert("directories".into(), Value::Object(dirs));
            obj.insert("scripts".into(), json!(self.scripts));
        }
        m
    }

    /// The package archive: tar (manifests first) compressed with zstd. `mtime` is the
    /// time stamp of every entry (SOURCE_DATE_EPOCH for reproducible packages).
    pub fn archive(&self, mtime: u64) -> Result<Vec<u8>, String> {
        let mut tar = TarWriter { out: Vec::new(), mtime };
        tar.file("+COMPACT_MANIFEST", 0o644, self.manifest(true).to_string().as_bytes())?;
        tar.file("+MANIFEST", 0o644, self.manifest(false).to_string().as_bytes())?;
        for f in &self.files {
            tar.file(&f.path, f.mode, &f.data)?;
        }
        let tar = tar.finish();
        Ok(ruzstd::encoding::compress_to_vec(
            tar.as_slice(),
            ruzstd::encoding::CompressionLevel::Fastest,
        ))
    }
}

/// A ustar writer for regular files owned by root:wheel. Paths may be absolute (pkg's
/// archives store `/usr/local/...`), which general-purpose tar writers refuse.
struct TarWriter {
    out: Vec<u8>,
    mtime: u64,
}

impl TarWriter {
    fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> Result<(), String> {
        let mut h = [0u8; 512];
        let (prefix, name) = split_path(path)?;
        h[..name.len()].copy_from_slice(name.as_bytes());
        octal(&mut h[100..108], u64::from(mode & 0o7777));
        octal(&mut h[108..116], 0); // uid
        octal(&mut h[116..124], 0); // gid
        octal(&mut h[124..136], data.len() as u64);
        octal(&mut h[136..148], self.mtime);
        h[156] = b'0'; // regular file
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[265..269].copy_from_slice(b"root");
        h[297..302].copy_from_slice(b"wheel");
        h[345..345 + prefix.len()].copy_from_slice(prefix.as_bytes());
        // The checksum is computed with its own field as eight spaces.
        h[148..156].fill(b' ');
        let sum: u64 = h.iter().map(|&b| u64::from(b)).sum();
        let digits = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(digits.as_bytes());
        self.out.extend_from_slice(&h);
        self.out.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.out.resize(self.out.len() + pad, 0);
        Ok(())
    }

    fn finish(mut self) -> Vec<u8> {
        self.out.resize(self.out.len() + 1024, 0);
        self.out
    }
}

/// ustar keeps a path as a prefix (≤ 155 bytes) and a name (≤ 100 bytes) split at a '/'.
fn split_path(path: &str) -> Result<(&str, &str), String> {
    if !path.is_ascii() || path.contains('\0') {
        return Err(format!("{path:?}: package paths must be ASCII without NUL"));
    }
    if path.len() <= 100 {
        return Ok(("", path));
    }
    path.char_indices()
        .filter(|&(i, c)| c == '/' && i <= 155 && path.len() - i - 1 <= 100 && i + 1 < path.len())
        .map(|(i, _)| (&path[..i], &path[i + 1..]))
        .next()
        .ok_or_else(|| format!("{path:?} is too long for a ustar header"))
}

/// NUL-terminated octal, right-aligned with leading zeros, filling the field.
fn octal(field: &mut [u8], value: u64) {
    let width = field.len() - 1;
    let text = format!("{value:0width$o}");
    let text = text.as_bytes();
    let start = text.len().saturating_sub(width);
    field[..width].copy_from_slice(&text[start..]);
    field[width] = 0;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_paths_split_at_a_slash() {
        let long = format!("/usr/local/share/doc/{}/file", "d".repeat(90));
        let (prefix, name) = split_path(&long).unwrap();
        assert_eq!(format!("{prefix}/{name}"), long);
        assert!(prefix.len() <= 155 && name.len() <= 100);
        assert!(split_path(&"x".repeat(101)).is_err());
        assert!(split_path("/usr/local/\u{e9}").is_err());
    }

    #[test]
    fn sums_are_pkg_sha256_hex() {
        // sha256("") is well known.
        assert_eq!(
            file_sum(b""),
            "1$e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
