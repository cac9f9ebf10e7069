//! Etsy statsd 0.9.0's keys: the name and tags of a line (split by the one statsd
//! grammar, [`crate::protocol::statsd`]) become the stored key as `stats.js`
//! `handlePacket` builds it, with `keyNameSanitize` applied. Pure functions over bytes.

use crate::protocol::jsnum::is_js_space;

/// How tags become part of the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TagMode {
    /// Etsy 0.9.0: `;tag` in the order sent, so `#b:2,a:1` and `#a:1,b:2` are two keys.
    #[default]
    Etsy,
    /// DogStatsD identity: the same `;k=v` form with tags sorted bytewise (after
    /// sanitising), as gostatsd does, so tag order does not split a series.
    Sorted,
}

/// The key `__proto__`: in Etsy a counter or gauge with this key is silently lost and a
/// timer or set crashes it (JavaScript object semantics); the engine drops it and counts
/// it (`rejected_proto_key`).
pub const PROTO_KEY: &[u8] = b"__proto__";

/// Bytes sanitising keeps as they are: `[A-Za-z0-9_.;=-]`.
const KEPT: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.' | b';' | b'=');
        b += 1;
    }
    t
};

/// Whether a line's name is its own stored key: no tags, and every byte one sanitising
/// keeps (the common case; then [`build_key`] would copy it unchanged).
#[inline]
pub fn is_own_key(name: &[u8], tags: &[u8]) -> bool {
    tags.is_empty() && name.iter().fold(true, |ok, &b| ok & KEPT[b as usize])
}

/// Scratch space for [`build_key`], reused across lines.
#[derive(Default)]
pub struct KeyScratch {
    tags: Vec<u8>,
    ranges: Vec<(u32, u32)>,
}

/// Builds the stored key into `out` (cleared first): the sanitised name, then each tag
/// as `;tag` with its first `;` made `_` and its first `:` made `=`, sanitised.
/// Sanitising works per character except for whitespace runs, and `;` is not
/// whitespace, so sanitising each part equals sanitising the joined key as Etsy does.
pub fn build_key(
    name: &[u8],
    tags: &[u8],
    mode: TagMode,
    out: &mut Vec<u8>,
    scratch: &mut KeyScratch,
) {
    out.clear();
    sanitize_mapped(name, None, None, out);
    if tags.is_empty() {
        return;
    }
    match mode {
        TagMode::Etsy => {
            for tag in tags.split(|&b| b == b',') {
                out.push(b';');
                push_tag(tag, out);
            }
        }
        TagMode::Sorted => {
            let KeyScratch { tags: buf, ranges } = scratch;
            buf.clear();
            ranges.clear();
            for tag in tags.split(|&b| b == b',') {
                let start = buf.len();
                push_tag(tag, buf);
                ranges.push((start as u32, buf.len() as u32));
            }
            let text = &buf[..];
            ranges.sort_by(|a, b| {
                text[a.0 as usize..a.1 as usize].cmp(&text[b.0 as usize..b.1 as usize])
            });
            for &(s, e) in ranges.iter() {
                out.push(b';');
                out.extend_from_slice(&text[s as usize..e as usize]);
            }
        }
    }
}

/// One tag: its first `;` read as `_` and its first `:` as `=`, then sanitised.
fn push_tag(tag: &[u8], out: &mut Vec<u8>) {
    let semi = memchr::memchr(b';', tag);
    let colon = memchr::memchr(b':', tag);
    sanitize_mapped(tag, semi, colon, out);
}

/// [`sanitize_into`] reading the byte at `semi` as `_` and the one at `colon` as `=`.
fn sanitize_mapped(s: &[u8], semi: Option<usize>, colon: Option<usize>, out: &mut Vec<u8>) {
    let mut i = 0;
    let mut in_space = false;
    while i < s.len() {
        let mut b = s[i];
        if Some(i) == semi {
            b = b'_';
        } else if Some(i) == colon {
            b = b'=';
        }
        if b < 0x80 {
            i += 1;
            let space = matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c);
            if space {
                if !in_space {
                    out.push(b'_');
                }
                in_space = true;
                continue;
            }
            in_space = false;
            match b {
                b'/' => out.push(b'-'),
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' | b';' | b'=' => {
                    out.push(b)
                }
                _ => {}
            }
            continue;
        }
        // Multi-byte: whitespace or removed.
        let (c, len) = decode(&s[i..]);
        i += len;
        if c.is_some_and(is_js_space) {
            if !in_space {
                out.push(b'_');
            }
            in_space = true;
        } else {
            in_space = false;
        }
    }
}

/// Etsy's `keyNameSanitize`: runs of JavaScript whitespace become one `_`, `/` becomes
/// `-`, and every character outside `[A-Za-z0-9_.;=-]` is removed (bytes that are not
/// UTF-8 decode to U+FFFD in node, which is removed too, and which ends a whitespace run).
pub fn sanitize_into(s: &[u8], out: &mut Vec<u8>) {
    sanitize_mapped(s, None, None, out);
}

/// The char at the start of `s` (non-ASCII lead byte) and the bytes it spans; `None`
/// with the length of one maximal invalid subpart (node's U+FFFD) otherwise.
fn decode(s: &[u8]) -> (Option<char>, usize) {
    let valid = match std::str::from_utf8(&s[..s.len().min(4)]) {
        Ok(v) => v,
        Err(e) => std::str::from_utf8(&s[..e.valid_up_to()]).expect("valid prefix"),
    };
    match valid.chars().next() {
        Some(c) => (Some(c), c.len_utf8()),
        None => {
            let e = std::str::from_utf8(&s[..s.len().min(4)])
                .err()
                .and_then(|e| e.error_len())
                .unwrap_or(1);
            (None, e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(line: &str, mode: TagMode) -> String {
        let p = crate::protocol::statsd::split_line(line.as_bytes());
        let mut out = Vec::new();
        build_key(p.name, p.tags, mode, &mut out, &mut KeyScratch::default());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn own_keys_are_the_names_build_key_keeps() {
        for (name, tags) in [
            ("a.b-c_d;e=f", ""),
            ("a b", ""),
            ("a/b", ""),
            ("a.b", "t:1"),
            ("", ""),
            ("\u{e9}", ""),
        ] {
            let mut out = Vec::new();
            build_key(
                name.as_bytes(),
                tags.as_bytes(),
                TagMode::Etsy,
                &mut out,
                &mut KeyScratch::default(),
            );
            if is_own_key(name.as_bytes(), tags.as_bytes()) {
                assert_eq!(out, name.as_bytes(), "{name:?}");
            } else {
                assert!(
                    out != name.as_bytes() || !tags.is_empty() || name.is_empty(),
                    "{name:?}"
                );
            }
        }
    }

    #[test]
    fn keys_as_etsy_builds_them() {
        assert_eq!(
            key("test.weird name/with*chars:1|c", TagMode::Etsy),
            "test.weird_name-withchars"
        );
        assert_eq!(
            key("a:1|c|#url:http://x/y", TagMode::Etsy),
            "a;url=http--x-y"
        );
        assert_eq!(key("a:1|c|#b:2,a:1", TagMode::Etsy), "a;b=2;a=1");
        assert_eq!(key("a:1|c|#b:2,a:1", TagMode::Sorted), "a;a=1;b=2");
        assert_eq!(key("a:1|c|#x;y:z:w", TagMode::Etsy), "a;x_y=zw");
        assert_eq!(key("a:1|c|#t1|#t2", TagMode::Etsy), "a;t1");
        assert_eq!(key("a \t b\u{a0}\u{3000}c:1|c", TagMode::Etsy), "a_b_c");
        assert_eq!(key("a \u{fffd} b:1|c", TagMode::Etsy), "a__b");
        assert_eq!(key("nocolon", TagMode::Etsy), "nocolon");
        assert_eq!(key("a:1|c|#", TagMode::Etsy), "a");
        assert_eq!(key("a:1|c|#,", TagMode::Etsy), "a;;");
    }
}
