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
    for nl in memchr::memchr_iter(b'\n', buf) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
