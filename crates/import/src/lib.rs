//! `statecull import pfsense|opnsense CONFIG.xml`: a pfSense or OPNsense `config.xml`
//! translated into a statecull policy (the TOML `statecull-policy` loads), plus warnings
//! for what does not translate. Pure: the caller reads the file and writes the result.
//!
//! * `xml`: children, text, booleans in both spellings, the path and line of a node;
//! * `config`: the parts of `config.xml` that matter (interfaces, gateways in pfSense's,
//!   OPNsense's legacy and OPNsense's MVC layout, gateway groups in both item formats,
//!   virtual IPs, outbound NAT, the state-killing settings), read into one neutral model;
//! * `dpinger`: each system's dpinger status socket path;
//! * `translate`: the model to policy decisions (thresholds, NAT addresses, placeholders
//!   for dynamic WANs, conflicts), every loss a warning; `groups`: gateway groups, the
//!   system's own state killing (on_down/on_recovery) and OPNsense's default gateway
//!   switching;
//! * `emit`: the policy text with a header saying where it came from and what to check.
//!
//! What is read and why is written next to each rule, with the file of pfSense or OPNsense
//! it follows. Nothing here has run against a real pfSense or OPNsense: the rules follow
//! their sources, the fixtures under `tests/fixtures` are written from their schemas.
#![forbid(unsafe_code)]

mod config;
mod dpinger;
mod emit;
mod groups;
mod translate;
mod xml;

use std::fmt;

/// Which firewall wrote the configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum System {
    PfSense,
    OpnSense,
}

impl System {
    /// The product name, for messages.
    pub fn name(self) -> &'static str {
        match self {
            System::PfSense => "pfSense",
            System::OpnSense => "OPNsense",
        }
    }

    /// The root element of its `config.xml`, and the word on the command line.
    pub fn word(self) -> &'static str {
        match self {
            System::PfSense => "pfsense",
            System::OpnSense => "opnsense",
        }
    }
}

/// How much a [`Warning`] matters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Said so the operator knows (a disabled gateway skipped, a default used); `--strict`
    /// does not fail on it.
    Note,
    /// Something did not translate, or the policy holds a value to replace by hand;
    /// `--strict` fails on it.
    Warning,
}

/// One thing the operator must know about the import, with the XML element it is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    pub severity: Severity,
    /// `/pfsense/gateways/gateway_item[2]/interface (line 41)`, or empty for the whole file.
    pub path: String,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let word = match self.severity {
            Severity::Note => "note",
            Severity::Warning => "warning",
        };
        if self.path.is_empty() {
            write!(f, "{word}: {}", self.message)
        } else {
            write!(f, "{word}: {}: {}", self.path, self.message)
        }
    }
}

/// The result of an import: the policy text and what the operator must know.
#[derive(Clone, Debug)]
pub struct Import {
    /// The policy (TOML), starting with a comment header.
    pub policy: String,
    /// In the order found.
    pub warnings: Vec<Warning>,
}

impl Import {
    /// The warnings `--strict` fails on.
    pub fn serious(&self) -> impl Iterator<Item = &Warning> {
        self.warnings.iter().filter(|w| w.severity == Severity::Warning)
    }
}

/// Why a configuration could not be imported at all.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// Not well-formed XML.
    #[error("{source_name}:{line}:{column}: not well-formed XML: {message}")]
    Xml { source_name: String, line: u32, column: u32, message: String },
    /// Well-formed, but not this system's configuration.
    #[error("{source_name}: {message}")]
    WrongFile { source_name: String, message: String },
    /// Contradictory or unusable content that no policy can be made from.
    #[error("{source_name}: {path}: {message}")]
    Invalid { source_name: String, path: String, message: String },
}

/// Translate `xml` (the contents of `config.xml`, named `source_name` in messages and in the
/// policy's header) written by `system`.
pub fn import(system: System, xml: &str, source_name: &str) -> Result<Import, ImportError> {
    if xml.trim_start().starts_with("---- BEGIN config.xml ----") {
        return Err(ImportError::WrongFile {
            source_name: source_name.to_owned(),
            message: "an encrypted configuration backup: decrypt it first (Diagnostics > Backup & \
                      Restore, or the system's own /cf/conf/config.xml or /conf/config.xml)"
                .to_owned(),
        });
    }
    let options = roxmltree::ParsingOptions { allow_dtd: false, ..Default::default() };
    let doc = roxmltree::Document::parse_with_options(xml, options).map_err(|e| {
        let pos = e.pos();
        ImportError::Xml {
            source_name: source_name.to_owned(),
            line: pos.row,
            column: pos.col,
            message: e.to_string(),
        }
    })?;
    let root = doc.root_element();
    let found = root.tag_name().name();
    if found != system.word() {
        let hint = match found {
            "pfsense" => " (this is a pfSense configuration: use `statecull import pfsense`)",
            "opnsense" => " (this is an OPNsense configuration: use `statecull import opnsense`)",
            _ => "",
        };
        return Err(ImportError::WrongFile {
            source_name: source_name.to_owned(),
            message: format!(
                "the root element is <{found}>, not <{}>: this is not {}'s config.xml{hint}",
                system.word(),
                system.name()
            ),
        });
    }
    let invalid = |path: String, message: String| ImportError::Invalid {
        source_name: source_name.to_owned(),
        path,
        message,
    };
    let cfg = config::read(system, root).map_err(|(p, m)| invalid(p, m))?;
    let out = translate::translate(&cfg).map_err(|(p, m)| invalid(p, m))?;
    let policy = emit::emit(&out, system, source_name);
    Ok(Import { policy, warnings: out.warnings })
}
