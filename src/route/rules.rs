//! Route rules compiled for matching: prefix, substring, regex or all.

use memchr::memmem;

use crate::config::Match;

/// A compiled matcher on metric names.
#[derive(Debug, Clone)]
pub enum Matcher {
    /// Name starts with these bytes.
    Prefix(Vec<u8>),
    /// Name contains these bytes.
    Substring(Box<memmem::Finder<'static>>),
    /// Unanchored regex search.
    Regex(regex::bytes::Regex),
    /// Every name.
    All,
}

impl Matcher {
    /// Compiles a validated match (the config already proved the regex compiles).
    pub fn compile(m: &Match) -> Matcher {
        match m {
            Match::Prefix(p) => Matcher::Prefix(p.as_bytes().to_vec()),
            Match::Substring(s) => {
                Matcher::Substring(Box::new(memmem::Finder::new(s.as_bytes()).into_owned()))
            }
            Match::Regex(r) => {
                Matcher::Regex(regex::bytes::Regex::new(r).expect("regex validated at config load"))
            }
            Match::All => Matcher::All,
        }
    }

    /// Whether `name` matches.
    #[inline]
    pub fn is_match(&self, name: &[u8]) -> bool {
        match self {
            Matcher::Prefix(p) => name.starts_with(p),
            Matcher::Substring(f) => f.find(name).is_some(),
            Matcher::Regex(r) => r.is_match(name),
            Matcher::All => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matchers() {
        let cases: [(Match, &str, bool); 7] = [
            (Match::Prefix("carbon.".into()), "carbon.agents.x", true),
            (Match::Prefix("carbon.".into()), "xcarbon.agents", false),
            (Match::Substring(".cpu.".into()), "a.cpu.b", true),
            (Match::Substring(".cpu.".into()), "a.cpux", false),
            (Match::Regex("^sys\\.[a-z]+$".into()), "sys.load", true),
            (Match::Regex("load".into()), "sys.load.1", true),
            (Match::All, "", true),
        ];
        for (m, name, want) in cases {
            assert_eq!(
                Matcher::compile(&m).is_match(name.as_bytes()),
                want,
                "{m:?} {name}"
            );
        }
    }
}
