//! Regex line listener: a key (and optional timestamp) cut from arbitrary lines.
