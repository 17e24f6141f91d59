//! Names of gateways, groups and protected flows: their syntax (letters, digits and
//! `_ - . : @ +`, at most [`MAX_NAME_LEN`] characters, not starting with `-`, so that a
//! name is safe on a command line and in a metric label) and their uniqueness within a
//! kind, ignoring case (a CLI user types `wan1` for `WAN1`).

use std::collections::HashMap;
use std::ops::Range;

use toml::Spanned;

use crate::PolicyError;

use super::{Loader, MAX_NAME_LEN};

impl Loader<'_> {
    pub(super) fn name(
        &self,
        raw: Option<&Spanned<String>>,
        table: &Range<usize>,
        at: &str,
        what: &str,
        example: &str,
    ) -> Result<(String, Range<usize>), PolicyError> {
        let Some(raw) = raw else {
            return Err(self.err(
                table,
                at,
                format!("every {what} needs a name, e.g. name = {example:?}"),
            ));
        };
        let field = format!("{at}.name");
        let name = raw.get_ref();
        let why = if name.is_empty() {
            Some("is empty")
        } else if name.chars().count() > MAX_NAME_LEN {
            Some("is longer than 32 characters")
        } else if name.starts_with('-') {
            Some("starts with '-' (it would read as an option on the command line)")
        } else if !name.chars().all(|c| c.is_alphanumeric() || "_-.:@+".contains(c)) {
            Some("has a character other than letters, digits and _ - . : @ +")
        } else {
            None
        };
        match why {
            Some(why) => Err(self.err(
                &raw.span(),
                &field,
                format!(
                    "{what} name {name:?} {why}; a name uses letters, digits and _ - . : @ +, at \
                     most {MAX_NAME_LEN} characters, e.g. {example:?}"
                ),
            )),
            None => Ok((name.clone(), raw.span())),
        }
    }
}

/// Names seen so far of one kind, unique ignoring case (a CLI user types `wan1` for `WAN1`).
pub(super) struct Names {
    what: &'static str,
    /// Lowercased name → the name as written and the byte offset of its first use (its
    /// line is worked out only for an error).
    seen: HashMap<String, (String, usize)>,
}

impl Names {
    pub(super) fn new(what: &'static str) -> Self {
        Self { what, seen: HashMap::new() }
    }

    pub(super) fn insert(
        &mut self,
        loader: &Loader<'_>,
        name: &str,
        span: &Range<usize>,
        field: &str,
    ) -> Result<(), PolicyError> {
        loader.step(1);
        let key = name.to_lowercase();
        if let Some((first, first_offset)) = self.seen.get(&key) {
            let first_line = loader.line(*first_offset);
            let how = if first == name { "is already used" } else { "differs only in case from" };
            return Err(loader.err(
                span,
                field,
                format!(
                    "{} name {name:?} {how}{} on line {first_line}; names must be unique \
                     (ignoring case)",
                    self.what,
                    if first == name { String::new() } else { format!(" {first:?}") },
                ),
            ));
        }
        self.seen.insert(key, (name.to_owned(), span.start));
        Ok(())
    }
}
