//! Where something is, in the terms an operator reads: a byte offset to a 1-based line
//! number, and a byte offset to the dotted path of the key written there
//! (`gateway[2].states.mark`).
//!
//! Checks of our own know their key's path as they go; the path is worked out from the
//! text only for serde's errors, which carry a span and nothing else. Lines are found by a
//! binary search over the newlines, indexed once per load and only when an error (or a
//! message naming another line) needs one: a line lookup per pair of gateways once made
//! loading a large policy cubic.

use std::fmt::Write as _;
use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::Loader;

impl Loader<'_> {
    /// The 1-based line of byte `offset`.
    pub(super) fn line(&self, offset: usize) -> usize {
        let newlines = self.newlines.get_or_init(|| {
            self.step(self.text.len());
            self.text.bytes().enumerate().filter(|(_, b)| *b == b'\n').map(|(i, _)| i).collect()
        });
        self.step(newlines.len().max(1).ilog2() as usize + 1);
        newlines.partition_point(|&nl| nl < offset) + 1
    }
}

#[derive(Clone)]
enum Seg {
    Key(String),
    /// 1-based.
    Index(usize),
}

/// The dotted path (`gateway[2].states.mark`) of the key or value at `offset`: the node of
/// the (leniently parsed) document that starts last at or before the offset, the deepest
/// one on ties. Serde errors point at a key, a value or a table header, so that node is the
/// one the error is about; for syntax errors it is the last thing that parsed.
pub(super) fn locate(text: &str, offset: usize) -> Option<String> {
    let (root, _errors) = DeTable::parse_recoverable(text);
    let mut best: Option<(usize, Vec<Seg>)> = None;
    let mut path = Vec::new();
    walk_table(root.get_ref(), &mut path, offset, &mut best);
    let (_, segs) = best?;
    let mut out = String::new();
    for seg in segs {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&k);
            }
            Seg::Index(i) => {
                let _ = write!(out, "[{i}]");
            }
        }
    }
    (!out.is_empty()).then_some(out)
}

fn consider(
    span: &Range<usize>,
    path: &[Seg],
    offset: usize,
    best: &mut Option<(usize, Vec<Seg>)>,
) {
    if span.start > offset || path.is_empty() {
        return;
    }
    let better = match best {
        None => true,
        Some((start, p)) => span.start > *start || (span.start == *start && path.len() > p.len()),
    };
    if better {
        *best = Some((span.start, path.to_vec()));
    }
}

fn walk_table(
    table: &DeTable<'_>,
    path: &mut Vec<Seg>,
    offset: usize,
    best: &mut Option<(usize, Vec<Seg>)>,
) {
    for (key, value) in table {
        path.push(Seg::Key(key.get_ref().to_string()));
        consider(&key.span(), path, offset, best);
        walk_value(value, path, offset, best);
        path.pop();
    }
}

fn walk_value(
    value: &Spanned<DeValue<'_>>,
    path: &mut Vec<Seg>,
    offset: usize,
    best: &mut Option<(usize, Vec<Seg>)>,
) {
    consider(&value.span(), path, offset, best);
    match value.get_ref() {
        DeValue::Table(t) => walk_table(t, path, offset, best),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                path.push(Seg::Index(i + 1));
                walk_value(item, path, offset, best);
                path.pop();
            }
        }
        _ => {}
    }
}
