//! Line framing over a receive buffer, with a length bound.

/// What the framer found in a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece<'a> {
    /// A complete line without its `\n` or trailing `\r`.
    Line(&'a [u8]),
    /// A line longer than the bound (its bytes are not returned).
    TooLong,
}

/// Splits `buf` into lines; calls `f` for each complete line and returns how many bytes
/// were consumed (the rest is a partial line to keep for the next read).
///
/// `skipping` carries over reads: while true, bytes up to the next `\n` belong to an
/// over-long line already reported. The caller's buffer must hold `line_bytes_max + 2`
/// bytes, so a kept partial line always leaves room to read more. A partial line longer than `line_bytes_max` is reported
/// once as [`Piece::TooLong`], and the caller drops the bytes and keeps skipping.
pub fn split<'a>(
    buf: &'a [u8],
    line_bytes_max: usize,
    skipping: &mut bool,
    mut f: impl FnMut(Piece<'a>),
) -> usize {
    let mut start = 0;
    for nl in newlines(buf) {
        let line = &buf[start..nl];
        start = nl + 1;
        if *skipping {
            *skipping = false;
            continue;
        }
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.len() > line_bytes_max {
            f(Piece::TooLong);
        } else if !line.is_empty() {
            f(Piece::Line(line));
        }
    }
    // A partial line may hold one byte more than the bound: a `\r` that the `\n` still
    // to come would strip.
    let rest = buf.len() - start;
    if rest > line_bytes_max + 1 {
        if !*skipping {
            f(Piece::TooLong);
            *skipping = true;
        }
        return buf.len();
    }
    start
}

/// The offsets of the `\n` bytes of `buf`, in order: a bit per byte for 64 bytes at a
/// time (SSE2 on x86-64), so a short line costs a few instructions rather than a
/// `memchr` call's setup.
pub fn newlines(buf: &[u8]) -> Newlines<'_> {
    Newlines {
        buf,
        base: 0,
        next: 0,
        mask: 0,
    }
}

/// See [`newlines`].
pub struct Newlines<'a> {
    buf: &'a [u8],
    /// Where the block `mask` covers starts.
    base: usize,
    /// Where the next block starts.
    next: usize,
    /// The `\n` bytes of the block not returned yet.
    mask: u64,
}

impl Iterator for Newlines<'_> {
    type Item = usize;

    #[inline]
    fn next(&mut self) -> Option<usize> {
        loop {
            if self.mask != 0 {
                let i = self.base + self.mask.trailing_zeros() as usize;
                self.mask &= self.mask - 1;
                return Some(i);
            }
            if self.next >= self.buf.len() {
                return None;
            }
            self.base = self.next;
            self.mask = newline_bits(self.buf, self.base);
            self.next += 64;
        }
    }
}

/// A bit for each `\n` of `buf[base..]`'s first 64 bytes.
#[inline]
fn newline_bits(buf: &[u8], base: usize) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if buf.len() >= 16 {
        let mut m = 0;
        let mut j = 0;
        while j < 64 && base + j < buf.len() {
            m |= u64::from(eq_bits16(buf, base + j, b'\n')) << j;
            j += 16;
        }
        return m;
    }
    let end = buf.len().min(base + 64);
    buf[base..end]
        .iter()
        .enumerate()
        .fold(0, |m, (j, &b)| m | (u64::from(b == b'\n') << j))
}

/// A bit for each byte of `s[at..]`'s first 16 (or fewer, at the end) that is `b`
/// (SSE2). A part past the end is read as `s`'s last 16 bytes, shifted so that only
/// the bytes from `at` on count. `s` must hold 16 bytes or more, and `at < s.len()`.
/// The line scanners' one vector step.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) fn eq_bits16(s: &[u8], at: usize, b: u8) -> u32 {
    eq_bits16_each(s, at, [b])[0]
}

/// [`eq_bits16`] for several bytes over one load of the 16 bytes (what
/// [`super::statsd::one_sample`] asks for `:` and `#`).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) fn eq_bits16_each<const N: usize>(s: &[u8], at: usize, bytes: [u8; N]) -> [u32; N] {
    use std::arch::x86_64::*;
    debug_assert!(s.len() >= 16 && at < s.len());
    let (from, skip) = if at + 16 <= s.len() {
        (at, 0)
    } else {
        (s.len() - 16, at + 16 - s.len())
    };
    // SAFETY: `from + 16 <= s.len()`: the 16 bytes read are inside `s`; SSE2 is part of
    // x86-64 (unaligned load).
    let v = unsafe { _mm_loadu_si128(s.as_ptr().add(from) as *const __m128i) };
    bytes.map(|b| {
        // SAFETY: SSE2 compares and a mask of a register already loaded.
        let bits = unsafe { _mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_set1_epi8(b as i8))) };
        bits as u32 >> skip
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newlines_are_memchrs() {
        let mut rng = crate::tools::SplitMix64(3);
        let mut buf = vec![0u8; 400];
        for _ in 0..20_000 {
            let len = rng.below(300);
            let at = rng.below(16);
            let density = 1 + rng.below(40);
            for b in &mut buf[at..at + len] {
                *b = if rng.below(density) == 0 {
                    b'\n'
                } else {
                    b'a' + rng.below(3) as u8
                };
            }
            let b = &buf[at..at + len];
            let want: Vec<usize> = memchr::memchr_iter(b'\n', b).collect();
            assert_eq!(newlines(b).collect::<Vec<_>>(), want, "{len} {at}");
        }
        assert_eq!(newlines(b"").count(), 0);
        assert_eq!(newlines(&[b'\n'; 200]).count(), 200);
    }

    fn check(chunks: &[&[u8]], max: usize, want: &[Option<&str>]) {
        let mut got = Vec::new();
        let mut skipping = false;
        let mut pending: Vec<u8> = Vec::new();
        for c in chunks {
            pending.extend_from_slice(c);
            let n = split(&pending, max, &mut skipping, |p| {
                got.push(match p {
                    Piece::Line(l) => Some(String::from_utf8_lossy(l).into_owned()),
                    Piece::TooLong => None,
                })
            });
            pending.drain(..n);
        }
        let want: Vec<Option<String>> = want.iter().map(|w| w.map(String::from)).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn framing() {
        check(
            &[b"a 1 2\r\nb 1 2\n\n"],
            100,
            &[Some("a 1 2"), Some("b 1 2")],
        );
        check(&[b"a 1", b" 2\nb"], 100, &[Some("a 1 2")]);
        check(&[b"xxxxxxxxxxxx", b"xxxxx\nok\n"], 8, &[None, Some("ok")]);
        check(&[b"xxxxxxxxxxxx\nok\n"], 8, &[None, Some("ok")]);
        check(&[b"1234567", b"8\n"], 8, &[Some("12345678")]);
        check(&[b"12345678\r", b"\n"], 8, &[Some("12345678")]);
        check(&[b"123456789", b"\n"], 8, &[None]);
        check(&[b"123456789\r", b"\n"], 8, &[None]);
    }
}
