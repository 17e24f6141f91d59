//! The few things the importer asks of a parsed `config.xml`: children by tag, trimmed
//! text, the two spellings of a boolean, and the path and line of a node for messages.

use roxmltree::Node;

/// The element children of `node` named `tag`, in document order.
pub(crate) fn children<'a, 'i>(
    node: Node<'a, 'i>,
    tag: &'a str,
) -> impl Iterator<Item = Node<'a, 'i>> + 'a {
    node.children().filter(move |c| c.is_element() && c.tag_name().name() == tag)
}

/// The first element child of `node` named `tag`.
pub(crate) fn child<'a, 'i>(node: Node<'a, 'i>, tag: &'a str) -> Option<Node<'a, 'i>> {
    children(node, tag).next()
}

/// The element reached from `node` by the tags in `path`, each the first of its name.
pub(crate) fn descend<'a, 'i>(node: Node<'a, 'i>, path: &[&'a str]) -> Option<Node<'a, 'i>> {
    path.iter().try_fold(node, |n, tag| child(n, tag))
}

/// The trimmed text of the child `tag`, `None` when it is absent or empty.
pub(crate) fn text<'a>(node: Node<'a, '_>, tag: &str) -> Option<&'a str> {
    let c = node.children().find(|c| c.is_element() && c.tag_name().name() == tag)?;
    own_text(c)
}

/// The trimmed text of `node` itself, `None` when empty.
pub(crate) fn own_text<'a>(node: Node<'a, '_>) -> Option<&'a str> {
    node.text().map(str::trim).filter(|t| !t.is_empty())
}

/// A boolean setting. pfSense (and OPNsense's legacy sections) write a set flag as the
/// element's presence (`<disabled/>`, `<disabled></disabled>`, `<enable>1</enable>`);
/// OPNsense's MVC models write `<disabled>0</disabled>` or `1`. So: present and not "0".
pub(crate) fn flag(node: Node<'_, '_>, tag: &str) -> bool {
    match node.children().find(|c| c.is_element() && c.tag_name().name() == tag) {
        None => false,
        Some(c) => own_text(c) != Some("0"),
    }
}

/// Where `node` is: `/pfsense/gateways/gateway_item[2]/interface (line 41)`. An index is
/// written only when the element has siblings of the same name; it is 1-based.
pub(crate) fn path(node: Node<'_, '_>) -> String {
    let mut parts = Vec::new();
    let mut cur = Some(node);
    while let Some(n) = cur {
        if n.is_element() {
            let name = n.tag_name().name();
            let same = |s: &Node<'_, '_>| s.is_element() && s.tag_name().name() == name;
            let before = n.prev_siblings().skip(1).filter(same).count();
            let after = n.next_siblings().skip(1).filter(same).count();
            if before + after > 0 {
                parts.push(format!("{name}[{}]", before + 1));
            } else {
                parts.push(name.to_owned());
            }
        }
        cur = n.parent();
    }
    parts.reverse();
    let line = node.document().text_pos_at(node.range().start).row;
    format!("/{} (line {line})", parts.join("/"))
}

/// The path of the child `tag` of `node` if it exists, else of `node`.
pub(crate) fn path_of(node: Node<'_, '_>, tag: &str) -> String {
    path(child(node, tag).unwrap_or(node))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_index_only_repeated_siblings_and_name_the_line() {
        let doc = roxmltree::Document::parse(
            "<pfsense>\n<gateways>\n<gateway_item><name>A</name></gateway_item>\n\
             <gateway_item><name>B</name><disabled/></gateway_item>\n</gateways>\n</pfsense>",
        )
        .unwrap();
        let gws = descend(doc.root_element(), &["gateways"]).unwrap();
        let second = children(gws, "gateway_item").nth(1).unwrap();
        assert_eq!(path_of(second, "name"), "/pfsense/gateways/gateway_item[2]/name (line 4)");
        assert_eq!(path(gws), "/pfsense/gateways (line 2)");
        assert!(flag(second, "disabled"));
        assert!(!flag(second, "enable"));
        assert_eq!(text(second, "name"), Some("B"));
    }

    #[test]
    fn mvc_booleans_are_values_and_legacy_ones_are_presence() {
        let doc =
            roxmltree::Document::parse("<g><a>0</a><b>1</b><c/><d></d><e> 0 </e></g>").unwrap();
        let g = doc.root_element();
        assert!(!flag(g, "a"));
        assert!(flag(g, "b"));
        assert!(flag(g, "c"));
        assert!(flag(g, "d"));
        assert!(!flag(g, "e"));
        assert!(!flag(g, "missing"));
    }
}
