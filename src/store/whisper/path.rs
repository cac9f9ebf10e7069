//! Metric name -> whisper file path, as carbon 1.1.x maps them, with the length
//! limits go-carbon enforces.
//!
//! carbon first normalizes every name (`CacheFeedingProcessor.process` in
//! `lib/carbon/cache.py` calls `TaggedSeries.parse(metric).path`, keeping the raw
//! name if that fails), then `WhisperDatabase.getFilesystemPath` joins the data dir
//! with `TaggedSeries.encode(metric, sep, hash_only=TAG_HASH_FILENAMES)` + `.wsp`
//! (`lib/carbon/util.py`, `lib/carbon/database.py`):
//! - plain names: leading `~` stripped by the normalization, dots become
//!   directories: `a.b.c` -> `a/b/c.wsp`;
//! - tagged names (`a.b;k=v;...`): tags sorted, then, with `TAG_HASH_FILENAMES = True`
//!   (carbon's default), `_tagged/<sha[0..3]>/<sha[3..6]>/<sha>.wsp` where `sha` is
//!   the hex SHA-256 of the normalized name. The non-hashed layout (dots as
//!   `_DOT_`) is not offered.
//!
//! Rejections, counted by their `&'static str` reason (see [`reject`]). carbon checks
//! none of these; we refuse rather than write outside the root or alias two names
//! onto one file:
//! - `/` anywhere in an untagged name (a tagged one's file is named by its hash),
//!   NUL, and empty components (`a..b`, `.a`, `a.`; carbon strips the
//!   leading dot and lets the OS fold `a//b` into `a/b`, aliasing `a.b`);
//! - go-carbon's limits (storage.md §3, persister): a path component over 255 bytes
//!   (`NAME_MAX`, the `.wsp` suffix counts) or a full path, root included, over
//!   4095 bytes (`PATH_MAX` less its NUL);
//! - the OpenMetrics spelling `name{k="v"}`, which carbon rewrites to `name;k=v`;
//!   that rewrite is not implemented here.

use std::path::{Path, PathBuf};

/// Longest path component, in bytes (`NAME_MAX`), as go-carbon enforces.
pub const MAX_COMPONENT_BYTES: usize = 255;

/// Longest full path, root included, in bytes (`PATH_MAX` - 1), as go-carbon enforces.
pub const MAX_PATH_BYTES: usize = 4095;

/// Reasons [`metric_path`] refuses a name; stable strings to count by.
pub mod reject {
    /// The name is empty.
    pub const EMPTY: &str = "empty";
    /// The name holds a NUL byte.
    pub const NUL: &str = "nul";
    /// The name holds `/`, which would add directories or leave the root.
    pub const SLASH: &str = "slash";
    /// A leading, trailing or doubled dot.
    pub const EMPTY_COMPONENT: &str = "empty_component";
    /// A component, `.wsp` included, is over [`super::MAX_COMPONENT_BYTES`].
    pub const COMPONENT_TOO_LONG: &str = "component_too_long";
    /// The full path is over [`super::MAX_PATH_BYTES`].
    pub const PATH_TOO_LONG: &str = "path_too_long";
    /// `name{k="v"}`: carbon's OpenMetrics rewrite is not implemented.
    pub const OPENMETRICS: &str = "openmetrics";
}

/// The whisper file for `name` under `root`, or why the name is refused.
pub fn metric_path(root: &Path, name: &str) -> Result<PathBuf, &'static str> {
    if name.is_empty() {
        return Err(reject::EMPTY);
    }
    if name.contains('\0') {
        return Err(reject::NUL);
    }
    // A tagged name's file is named by its hash: a `/` in it (`mountpoint=/var`) is
    // harmless there, as with carbon.
    if name.contains('/') && !name.contains(';') {
        return Err(reject::SLASH);
    }
    if name.ends_with("\"}") && name.contains('{') {
        return Err(reject::OPENMETRICS);
    }
    let normalized = normalize(name);
    let name = normalized.as_deref().unwrap_or(name);

    let mut path = root.to_path_buf();
    if name.contains(';') {
        let hex = sha256_hex(name.as_bytes());
        path.push("_tagged");
        path.push(&hex[0..3]);
        path.push(&hex[3..6]);
        path.push(format!("{hex}.wsp"));
    } else {
        let mut components = name.split('.').peekable();
        while let Some(component) = components.next() {
            if component.is_empty() {
                return Err(reject::EMPTY_COMPONENT);
            }
            let last = components.peek().is_none();
            let len = component.len() + if last { ".wsp".len() } else { 0 };
            if len > MAX_COMPONENT_BYTES {
                return Err(reject::COMPONENT_TOO_LONG);
            }
            if last {
                path.push(format!("{component}.wsp"));
            } else {
                path.push(component);
            }
        }
    }
    if path.as_os_str().len() > MAX_PATH_BYTES {
        return Err(reject::PATH_TOO_LONG);
    }
    Ok(path)
}

/// carbon's `TaggedSeries.parse(name).path`: the name without leading `~`, then
/// the tags sorted as `;k=v` strings, a `name` tag dropped and, for a repeated
/// tag, the last value kept. `None` where carbon's parse fails and it keeps the
/// raw name, or where nothing changes.
pub fn normalize(name: &str) -> Option<String> {
    let mut segments = name.split(';');
    let metric = segments.next().unwrap_or("");
    let sanitized = metric.trim_start_matches('~');
    if sanitized.is_empty() {
        return None;
    }
    let mut tags: Vec<(&str, &str)> = Vec::new();
    for segment in segments {
        let (tag, value) = segment.split_once('=')?;
        // validateTagAndValue; `;` and `=` cannot reach here in a tag.
        if tag.is_empty() || value.is_empty() || tag.contains(['!', '^']) || value.starts_with('~')
        {
            return None;
        }
        match tags.iter_mut().find(|(t, _)| *t == tag) {
            Some(slot) => slot.1 = value,
            None => tags.push((tag, value)),
        }
    }
    // carbon overwrites any `name` tag with the metric and prints it first.
    tags.retain(|(t, _)| *t != "name");
    if tags.is_empty() && sanitized.len() == name.len() {
        return None;
    }
    let mut formatted: Vec<String> = tags.iter().map(|(t, v)| format!(";{t}={v}")).collect();
    // Python sorts the formatted strings: `;a0=` before `;a=`, since '0' < '='.
    formatted.sort_unstable();
    let mut out = String::with_capacity(name.len());
    out.push_str(sanitized);
    for f in &formatted {
        out.push_str(f);
    }
    Some(out)
}

/// Lower-case hex SHA-256, as carbon names hashed tagged series.
fn sha256_hex(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    use std::fmt::Write as _;
    let digest = Sha256::digest(data);
    let mut hex = String::with_capacity(64);
    for byte in digest {
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: &str = "/var/lib/graphite/whisper";

    fn check(name: &str, expected: Result<&str, &str>) {
        let got = metric_path(Path::new(ROOT), name);
        let want = expected.map(|rel| Path::new(ROOT).join(rel));
        assert_eq!(got, want, "{name:?}");
    }

    #[test]
    fn plain_names() {
        check("a", Ok("a.wsp"));
        check("servers.web01.cpu.user", Ok("servers/web01/cpu/user.wsp"));
        check("a-b_c.d:e", Ok("a-b_c/d:e.wsp"));
        check("ünï.cødé", Ok("ünï/cødé.wsp"));
        // carbon's normalization strips leading '~' (sanitize_name_as_tag_value).
        check("~x.y", Ok("x/y.wsp"));
        // ... unless that leaves nothing; then carbon keeps the raw name.
        check("~~", Ok("~~.wsp"));
    }

    /// Expected paths printed by carbon 1.1.10's own `TaggedSeries` code (util.py,
    /// loaded from the sdist): `TaggedSeries.encode(parse-or-raw(m), '/',
    /// hash_only=True) + '.wsp'`.
    #[test]
    fn tagged_names_as_carbon_hashes_them() {
        let cases = [
            (
                "some.metric;tag2=value.2;tag1=value2",
                "effaae5b55950b150a7493d2f5430772ca2460bf7cccb4d9e523643df54c010f",
            ),
            (
                "a.b;a0=1;a=2",
                "dec4b6d68598fa14a4e688f16232f9423d60ca864dc11fb872bd21b2b8776685",
            ),
            (
                "x;name=foo;z=1",
                "d80ab668a67db3d3c293ce5f666a18b76b9408be0fb738bca7faea218574bf2f",
            ),
            (
                "x;k=1;k=2",
                "cb82c1e3ea9beaec8b231c507b540aee6e80dccc639223d18317089738d0266d",
            ),
            (
                "a.b;c=d",
                "911ebda279f6bce48921620de7b850582cd77b0a2d01fa7ca3e551b50f37a57c",
            ),
            // Parse failures: carbon hashes the raw name.
            (
                "x;bad",
                "696d399818a46759f678624bef69014fe906d4fb5eb4fd55a7372e024d675f08",
            ),
            (
                "x;k=~v",
                "2b55de62d1782759b7e96edca2a6ea7f85139a8d683c4ff4fe26cf5fd06cbe18",
            ),
            (
                "x;k=",
                "5449234b75c2e351a789e7be3af4da242e847fe6ab38347297050c77f1c4c5ae",
            ),
            // A `/` in a tagged name stays inside the hash.
            (
                "tg.mnt;mountpoint=/var/log",
                "402e94e5c22797f31a6c2ee105a9780147b81fdf55e1cf95a74b854883566b92",
            ),
            (
                "disk.used;path=/;host=a/b",
                "6996778394f61288c77be681f27947398c6055ea80a03d1f981dbd2c5e5f3b02",
            ),
            (
                "a/b;k=v",
                "7851eb321a23488336178f86b39b002a689fceee15b97a29e35f7c4e8836e142",
            ),
        ];
        for (name, sha) in cases {
            let rel = format!("_tagged/{}/{}/{sha}.wsp", &sha[0..3], &sha[3..6]);
            check(name, Ok(&rel));
        }
    }

    #[test]
    fn normalization_matches_carbon() {
        let n = |s: &str| normalize(s).unwrap_or_else(|| s.to_string());
        assert_eq!(
            n("some.metric;tag2=value.2;tag1=value2"),
            "some.metric;tag1=value2;tag2=value.2"
        );
        assert_eq!(n("a.b;a0=1;a=2"), "a.b;a0=1;a=2");
        assert_eq!(n("x;name=foo;z=1"), "x;z=1");
        assert_eq!(n("x;k=1;k=2"), "x;k=2");
        assert_eq!(n("~~a;z=1;b=2"), "a;b=2;z=1");
        assert_eq!(n("x;a!=1"), "x;a!=1");
    }

    #[test]
    fn rejects() {
        check("", Err(reject::EMPTY));
        check("a\0b", Err(reject::NUL));
        check("a/b", Err(reject::SLASH));
        check("/etc/passwd", Err(reject::SLASH));
        check("a.../../etc", Err(reject::SLASH));
        check("a..b", Err(reject::EMPTY_COMPONENT));
        check(".a.b", Err(reject::EMPTY_COMPONENT));
        check("a.b.", Err(reject::EMPTY_COMPONENT));
        check(".", Err(reject::EMPTY_COMPONENT));
        check("..", Err(reject::EMPTY_COMPONENT));
        check("m{k=\"v\"}", Err(reject::OPENMETRICS));
    }

    #[test]
    fn length_limits() {
        // 251 + ".wsp" = 255 bytes is the longest file name.
        let ok_leaf = "x".repeat(251);
        assert!(metric_path(Path::new("/r"), &format!("a.{ok_leaf}")).is_ok());
        let long_leaf = "x".repeat(252);
        assert_eq!(
            metric_path(Path::new("/r"), &format!("a.{long_leaf}")),
            Err(reject::COMPONENT_TOO_LONG)
        );
        // Directories may use all 255.
        let dir = "d".repeat(255);
        assert!(metric_path(Path::new("/r"), &format!("{dir}.a")).is_ok());
        let long_dir = "d".repeat(256);
        assert_eq!(
            metric_path(Path::new("/r"), &format!("{long_dir}.a")),
            Err(reject::COMPONENT_TOO_LONG)
        );
        // Bytes, not characters: 126 two-byte chars + ".wsp" = 256 bytes.
        assert_eq!(
            metric_path(Path::new("/r"), &"é".repeat(126)),
            Err(reject::COMPONENT_TOO_LONG)
        );

        // "/r" + 16 * "/" + 250 bytes = 4018; one more "/" + 72 + ".wsp" = 4095.
        let dirs = vec!["d".repeat(250); 16].join(".");
        let fits = format!("{dirs}.{}", "x".repeat(72));
        let p = metric_path(Path::new("/r"), &fits).unwrap();
        assert_eq!(p.as_os_str().len(), MAX_PATH_BYTES);
        let over = format!("{dirs}.{}", "x".repeat(73));
        assert_eq!(
            metric_path(Path::new("/r"), &over),
            Err(reject::PATH_TOO_LONG)
        );
        // The root counts.
        assert_eq!(
            metric_path(Path::new("/rr"), &fits),
            Err(reject::PATH_TOO_LONG)
        );
    }

    #[test]
    fn sha256_vectors() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        // Two blocks of padding (message longer than 55 bytes), and many blocks.
        assert_eq!(
            sha256_hex(b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        );
        assert_eq!(
            sha256_hex(&[b'a'; 200]),
            "c2a908d98f5df987ade41b5fce213067efbcc21ef2240212a41e54b5e7c28ae5"
        );
    }
}
