//! Where a key is in the file: the key path and line every error names.

use std::fmt;

/// A configuration problem: which key, on which line, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "line {l}: `{}`: {}", self.key, self.message),
            None => write!(f, "`{}`: {}", self.key, self.message),
        }
    }
}

/// A path into the TOML document, like `tenants[0].timezone`.
#[derive(Debug, Clone)]
pub(super) enum Seg {
    Key(&'static str),
    Index(usize),
}

pub(super) fn path_text(path: &[Seg]) -> String {
    segs_text(path.iter().map(Seg::as_ref))
}

impl Seg {
    fn as_ref(&self) -> SegRef<'static> {
        match self {
            Seg::Key(k) => SegRef::Key(k),
            Seg::Index(i) => SegRef::Index(*i),
        }
    }
}

/// `tenants[0].timezone` from its steps.
pub(super) fn segs_text<'a>(path: impl Iterator<Item = SegRef<'a>>) -> String {
    let mut s = String::new();
    for seg in path {
        match seg {
            SegRef::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            SegRef::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// One step of a key path, borrowed (from `Seg` or `OwnedSeg`).
#[derive(Clone, Copy)]
pub(super) enum SegRef<'a> {
    Key(&'a str),
    Index(usize),
}

/// The 1-based line where the value at `path` (or its nearest present
/// ancestor) is written.
pub(super) fn line_of(src: &str, path: &[Seg]) -> Option<usize> {
    let path: Vec<SegRef> = path.iter().map(Seg::as_ref).collect();
    line_of_path(src, &path)
}

pub(super) fn line_of_path(src: &str, path: &[SegRef]) -> Option<usize> {
    enum Cur<'a> {
        Table(&'a toml_edit::Table),
        Item(&'a toml_edit::Item),
    }
    let doc = toml_edit::Document::parse(src).ok()?;
    let mut cur = Cur::Table(doc.as_table());
    let mut span = None;
    for seg in path {
        let next = match (&cur, seg) {
            (Cur::Table(t), SegRef::Key(k)) => t.get(k).map(Cur::Item),
            (Cur::Item(toml_edit::Item::ArrayOfTables(a)), SegRef::Index(i)) => {
                a.get(*i).map(Cur::Table)
            }
            (Cur::Item(it), SegRef::Key(k)) => it.get(*k).map(Cur::Item),
            (Cur::Item(it), SegRef::Index(i)) => it.get(*i).map(Cur::Item),
            (Cur::Table(_), SegRef::Index(_)) => None,
        };
        let Some(next) = next else { break };
        let s = match &next {
            Cur::Table(t) => t.span(),
            Cur::Item(it) => it.span(),
        };
        span = s.or(span);
        cur = next;
    }
    span.map(|r| line_at(src, r.start))
}

pub(super) fn line_at(src: &str, offset: usize) -> usize {
    src[..offset.min(src.len())].matches('\n').count() + 1
}

/// A deserializer's message in the config's words, not Rust's: "expected
/// usize" reads "expected a whole number".
pub(super) fn plain_types(m: &str) -> String {
    let mut out = m.to_owned();
    for (rust, plain) in [
        ("expected usize", "expected a whole number"),
        ("expected u64", "expected a whole number"),
        ("expected u32", "expected a whole number"),
        ("expected u16", "expected a whole number"),
        ("expected u8", "expected a whole number from 0 to 255"),
        ("expected i64", "expected a whole number"),
        ("expected i32", "expected a whole number"),
        ("expected f64", "expected a number"),
        ("expected f32", "expected a number"),
        ("expected a boolean", "expected true or false"),
        ("expected a sequence", "expected a list [...]"),
        ("expected a map", "expected a table"),
    ] {
        out = out.replace(rust, plain);
    }
    out
}

/// A key path with owned keys (from a parse error's position).
#[derive(Debug, Clone)]
pub(super) enum OwnedSeg {
    Key(String),
    Index(usize),
}

pub(super) fn owned_path_text(path: &[OwnedSeg]) -> String {
    segs_text(path.iter().map(OwnedSeg::as_ref))
}

pub(super) fn owned_line_of(src: &str, path: &[OwnedSeg]) -> Option<usize> {
    let path: Vec<SegRef> = path.iter().map(OwnedSeg::as_ref).collect();
    line_of_path(src, &path)
}

impl OwnedSeg {
    fn as_ref(&self) -> SegRef<'_> {
        match self {
            OwnedSeg::Key(k) => SegRef::Key(k),
            OwnedSeg::Index(i) => SegRef::Index(*i),
        }
    }
}

/// The path of the innermost key whose entry (key or value) covers
/// `offset` in `src`.
pub(super) fn key_path_at(src: &str, offset: usize) -> Option<Vec<OwnedSeg>> {
    pub(super) fn covers(span: Option<std::ops::Range<usize>>, offset: usize) -> bool {
        span.is_some_and(|r| r.start <= offset && offset < r.end.max(r.start + 1))
    }
    pub(super) fn walk_table(
        t: &toml_edit::Table,
        offset: usize,
        path: &mut Vec<OwnedSeg>,
    ) -> bool {
        for (k, item) in t.iter() {
            let (key, _) = t.get_key_value(k).expect("iterated key");
            if covers(key.span(), offset) {
                path.push(OwnedSeg::Key(k.to_owned()));
                return true;
            }
            path.push(OwnedSeg::Key(k.to_owned()));
            if walk_item(item, offset, path) {
                return true;
            }
            path.pop();
        }
        false
    }
    pub(super) fn walk_item(
        item: &toml_edit::Item,
        offset: usize,
        path: &mut Vec<OwnedSeg>,
    ) -> bool {
        match item {
            toml_edit::Item::Table(t) => walk_table(t, offset, path) || covers(t.span(), offset),
            toml_edit::Item::ArrayOfTables(a) => {
                for (i, t) in a.iter().enumerate() {
                    path.push(OwnedSeg::Index(i));
                    // A key in the entry, or else the entry itself (its
                    // header: where a missing key is reported).
                    if walk_table(t, offset, path) || covers(t.span(), offset) {
                        return true;
                    }
                    path.pop();
                }
                false
            }
            toml_edit::Item::Value(v) => {
                if !covers(v.span(), offset) {
                    return false;
                }
                if let toml_edit::Value::InlineTable(t) = v {
                    for (k, v) in t.iter() {
                        path.push(OwnedSeg::Key(k.to_owned()));
                        if covers(v.span(), offset) {
                            return true;
                        }
                        path.pop();
                    }
                }
                true
            }
            toml_edit::Item::None => false,
        }
    }
    let doc = toml_edit::Document::parse(src).ok()?;
    let mut path = Vec::new();
    walk_table(doc.as_table(), offset, &mut path).then_some(path)
}

/// `src` without the entry at `path`, if it can be removed.
pub(super) fn without(src: &str, path: &[OwnedSeg]) -> Option<String> {
    let mut doc: toml_edit::DocumentMut = src.parse().ok()?;
    let (last, parents) = path.split_last()?;
    let OwnedSeg::Key(last) = last else {
        return None;
    };
    let mut item: &mut toml_edit::Item = doc.as_item_mut();
    for seg in parents {
        item = match seg {
            OwnedSeg::Key(k) => item.get_mut(k.as_str())?,
            OwnedSeg::Index(i) => match item {
                // `[[tenants]]` entries: only a key directly in one is set
                // aside (a deeper one ends the reading).
                toml_edit::Item::ArrayOfTables(a) if parents.len() == 2 => {
                    a.get_mut(*i)?.remove(last)?;
                    return Some(doc.to_string());
                }
                other => other.get_mut(*i)?,
            },
        };
    }
    match item {
        toml_edit::Item::Table(t) => t.remove(last)?,
        toml_edit::Item::Value(toml_edit::Value::InlineTable(t)) => {
            toml_edit::Item::Value(t.remove(last)?)
        }
        _ => return None,
    };
    Some(doc.to_string())
}

/// The key a serde/TOML error is about, when its message names one.
pub(super) fn key_from_toml_error(e: &toml::de::Error) -> Option<String> {
    let m = e.message();
    for marker in ["unknown field `", "missing field `", "duplicate key `"] {
        if let Some(rest) = m.split_once(marker).map(|(_, r)| r) {
            if let Some((k, _)) = rest.split_once('`') {
                return Some(k.to_owned());
            }
        }
    }
    None
}
