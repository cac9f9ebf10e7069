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
/// keeps (the common case; then [`build_key`] would copy it unchanged). Without
/// sanitising (Etsy's `keyNameSanitize: false`), a name that is valid UTF-8.
#[inline]
pub fn is_own_key(name: &[u8], tags: &[u8], sanitize: bool) -> bool {
    tags.is_empty()
        && if sanitize {
            all_kept(name)
        } else {
            std::str::from_utf8(name).is_ok()
        }
}

/// Whether sanitising keeps every byte of `s`. Sixteen bytes at a time where SSE2 is
/// (every x86-64), the last sixteen overlapping the ones before: a byte at a time
/// through [`KEPT`] took about 5 instructions a byte, a tenth of a statsd line's cost.
#[inline]
fn all_kept(s: &[u8]) -> bool {
    #[cfg(target_arch = "x86_64")]
    if s.len() >= 16 {
        let mut i = 0;
        while i + 16 < s.len() {
            // SAFETY: `i + 16 <= s.len()`: the 16 bytes read are inside `s`.
            if !unsafe { sse2::all_kept16(s.as_ptr().add(i)) } {
                return false;
            }
            i += 16;
        }
        // SAFETY: `s.len() >= 16`: the last 16 bytes are inside `s`.
        return unsafe { sse2::all_kept16(s.as_ptr().add(s.len() - 16)) };
    }
    s.iter().fold(true, |ok, &b| ok & KEPT[b as usize])
}

#[cfg(target_arch = "x86_64")]
mod sse2 {
    use std::arch::x86_64::*;

    /// Whether each of the 16 bytes at `p` is in `[A-Za-z0-9_.;=-]`.
    ///
    /// # Safety
    /// `p` must point at 16 readable bytes.
    #[inline(always)]
    pub unsafe fn all_kept16(p: *const u8) -> bool {
        // SAFETY: the caller's 16 bytes; SSE2 is part of x86-64 (unaligned load).
        unsafe {
            let v = _mm_loadu_si128(p as *const __m128i);
            let set = |b: u8| _mm_set1_epi8(b as i8);
            // `x <= n` unsigned as `min(x, n) == x`; `| 0x20` folds `A-Z` onto `a-z`.
            let below = |x: __m128i, n: u8| _mm_cmpeq_epi8(_mm_min_epu8(x, set(n)), x);
            let alpha = below(_mm_sub_epi8(_mm_or_si128(v, set(0x20)), set(b'a')), 25);
            let digit = below(_mm_sub_epi8(v, set(b'0')), 9);
            let eq = |b: u8| _mm_cmpeq_epi8(v, set(b));
            let other = _mm_or_si128(
                _mm_or_si128(eq(b'_'), eq(b'-')),
                _mm_or_si128(_mm_or_si128(eq(b'.'), eq(b';')), eq(b'=')),
            );
            let ok = _mm_or_si128(_mm_or_si128(alpha, digit), other);
            _mm_movemask_epi8(ok) == 0xffff
        }
    }
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
/// With `sanitize` off (Etsy's `keyNameSanitize: false`) the parts are kept as they are,
/// bytes that are not UTF-8 read as U+FFFD as node reads them.
pub fn build_key(
    name: &[u8],
    tags: &[u8],
    mode: TagMode,
    sanitize: bool,
    out: &mut Vec<u8>,
    scratch: &mut KeyScratch,
) {
    out.clear();
    if sanitize {
        sanitize_mapped(name, None, None, out);
    } else {
        push_lossy(name, false, out);
    }
    if tags.is_empty() {
        return;
    }
    match mode {
        TagMode::Etsy => {
            for tag in tags.split(|&b| b == b',') {
                out.push(b';');
                push_tag(tag, sanitize, out);
            }
        }
        TagMode::Sorted => {
            let KeyScratch { tags: buf, ranges } = scratch;
            buf.clear();
            ranges.clear();
            for tag in tags.split(|&b| b == b',') {
                let start = buf.len();
                push_tag(tag, sanitize, buf);
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

/// One tag: its first `;` read as `_` and its first `:` as `=`, then sanitised (or not).
fn push_tag(tag: &[u8], sanitize: bool, out: &mut Vec<u8>) {
    let semi = memchr::memchr(b';', tag);
    let colon = memchr::memchr(b':', tag);
    if sanitize {
        sanitize_mapped(tag, semi, colon, out);
    } else {
        push_lossy(tag, true, out);
    }
}

/// `s` as node's string of it, UTF-8 (maximal invalid subparts as U+FFFD), with its
/// first `;` made `_` and its first `:` made `=` when `map` (a tag, as Etsy's
/// `tag.replace(';', '_').replace(':', '=')`).
fn push_lossy(s: &[u8], map: bool, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(String::from_utf8_lossy(s).as_bytes());
    if map {
        let text = &mut out[start..];
        for (from, to) in [(b';', b'_'), (b':', b'=')] {
            if let Some(i) = memchr::memchr(from, text) {
                text[i] = to;
            }
        }
    }
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
        build_key(
            p.name,
            p.tags,
            mode,
            true,
            &mut out,
            &mut KeyScratch::default(),
        );
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
                true,
                &mut out,
                &mut KeyScratch::default(),
            );
            if is_own_key(name.as_bytes(), tags.as_bytes(), true) {
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
    fn unsanitised_keys_keep_the_name_and_map_only_the_tags() {
        let key = |name: &[u8], tags: &[u8]| {
            let mut out = Vec::new();
            build_key(
                name,
                tags,
                TagMode::Etsy,
                false,
                &mut out,
                &mut KeyScratch::default(),
            );
            String::from_utf8(out).unwrap()
        };
        assert_eq!(key(b"a b/c", b""), "a b/c");
        assert!(is_own_key(b"a b/c", b"", false));
        assert_eq!(key(b"x", b"k:v:w,a;b;c"), "x;k=v:w;a_b;c");
        assert_eq!(key(b"bad\xff\xfename", b""), "bad\u{fffd}\u{fffd}name");
        assert!(!is_own_key(b"bad\xffname", b"", false));
        assert_eq!(key(b"t", b"\xff;x:y"), "t;\u{fffd}_x=y");
    }

    #[test]
    fn kept_names_are_the_sanitiser_class() {
        // Every byte, alone and at each place of names around the vector width (the
        // overlapping last 16 bytes included).
        for c in 0..=255u8 {
            let want = KEPT[c as usize];
            assert_eq!(
                want,
                c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.' | b';' | b'='),
                "{c:#04x}"
            );
            for len in [1, 15, 16, 17, 31, 32, 33, 47] {
                for at in [0, len / 2, len - 1] {
                    let name: Vec<u8> = (0..len)
                        .map(|i| if i == at { c } else { b"aZ09_-.;="[i % 9] })
                        .collect();
                    assert_eq!(is_own_key(&name, b"", true), want, "{c:#04x} {len} {at}");
                }
            }
        }
        assert!(!is_own_key(b"a.b", b"t:1", true));
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
