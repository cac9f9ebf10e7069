//! carbon-c-relay's rewrite rules. (Placeholder until the rewrite branch lands: same API.)

/// A compiled rewrite rule.
#[derive(Debug, Clone)]
pub struct Rewrite {
    regex: regex::bytes::Regex,
    into: Vec<u8>,
}

impl Rewrite {
    /// Compiles `regex` and the template `into`.
    pub fn compile(regex: &str, into: &str) -> Result<Rewrite, String> {
        let regex = regex::bytes::Regex::new(regex).map_err(|e| format!("invalid regex: {e}"))?;
        Ok(Rewrite {
            regex,
            into: into.as_bytes().to_vec(),
        })
    }

    /// Rewrites `name` into `out` when the regex matches.
    pub fn apply(&self, name: &[u8], out: &mut Vec<u8>) -> bool {
        let Some(c) = self.regex.captures(name) else {
            return false;
        };
        out.clear();
        c.expand(&self.into, out);
        true
    }
}
