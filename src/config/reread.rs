//! Rules files that are looked at again while cadent runs, as their owners do: carbon's
//! aggregator re-reads `aggregation-rules.conf` every 10 s, carbon-cache its
//! `storage-schemas.conf` and `storage-aggregation.conf` every 60 s. Each is re-read
//! every `rules_reread_interval_ms` of the `[[aggregate]]` or `[[store]]` that names it;
//! a changed text that parses goes in through the same path as a reload (the control
//! plane applies the whole config, every shard or none). A file that cannot be read or
//! parsed keeps the running rules (carbon's aggregator would drop every rule when its
//! file is missing; a reload refuses such a file, and so does this).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::{AggregateKind, Config, StoreKind};
use crate::aggregate::carbon::Rules;
use crate::store::whisper::rules::{Aggregations, Schemas};

/// Which rules file of the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    /// A carbon aggregator's `rules_file`, by aggregator index.
    CarbonRules(usize),
    /// A whisper store's `schemas_file`, by store index.
    Schemas(usize),
    /// A whisper store's `aggregation_file`, by store index.
    StoreAggregation(usize),
}

/// A rules file the config asks to be re-read.
#[derive(Debug, Clone)]
pub struct Watched {
    which: Which,
    /// Names it in logs, and keeps its schedule across config changes: the section,
    /// its name, the key and the path.
    pub label: String,
    pub path: PathBuf,
    pub interval: Duration,
}

/// Every rules file of `cfg` with a non-zero re-read interval.
pub fn watched(cfg: &Config) -> Vec<Watched> {
    let mut out = Vec::new();
    for (i, a) in cfg.aggregates.iter().enumerate() {
        if let AggregateKind::Carbon(c) = &a.kind {
            if c.rules_reread_interval_ms > 0 && !c.rules_file.as_os_str().is_empty() {
                out.push(Watched {
                    which: Which::CarbonRules(i),
                    label: format!(
                        "aggregate {:?} rules_file {}",
                        a.name,
                        c.rules_file.display()
                    ),
                    path: c.rules_file.clone(),
                    interval: Duration::from_millis(c.rules_reread_interval_ms),
                });
            }
        }
    }
    for (i, s) in cfg.stores.iter().enumerate() {
        let StoreKind::Whisper(w) = &s.kind;
        if w.rules_reread_interval_ms == 0 {
            continue;
        }
        let interval = Duration::from_millis(w.rules_reread_interval_ms);
        for (which, key, path) in [
            (Which::Schemas(i), "schemas_file", &w.schemas.path),
            (
                Which::StoreAggregation(i),
                "aggregation_file",
                &w.aggregations.path,
            ),
        ] {
            if !path.as_os_str().is_empty() {
                out.push(Watched {
                    which,
                    label: format!("store {:?} {key} {}", s.name, path.display()),
                    path: path.clone(),
                    interval,
                });
            }
        }
    }
    out
}

/// Reads `w` again into `cfg` (which `w` was listed from): `Ok(true)` when its text
/// changed and parsed (the new rules are in `cfg`), `Ok(false)` when it is unchanged,
/// and an error naming the file when it cannot be read or parsed (`cfg` is unchanged).
pub fn reread_into(cfg: &mut Config, w: &Watched) -> Result<bool, String> {
    let read = |max| {
        super::read_text_bounded(&w.path, max)
            .map_err(|e| format!("cannot read {}: {e}", w.path.display()))
    };
    match w.which {
        Which::CarbonRules(i) => {
            let Some(AggregateKind::Carbon(c)) = cfg.aggregates.get_mut(i).map(|a| &mut a.kind)
            else {
                return Ok(false);
            };
            let text = read(super::RULES_FILE_BYTES_MAX)?;
            if text == c.rules_text {
                return Ok(false);
            }
            c.rules = Rules::parse(&text).map_err(|e| format!("{}: {e}", w.path.display()))?;
            c.rules_text = text;
            Ok(true)
        }
        Which::Schemas(i) | Which::StoreAggregation(i) => {
            let Some(StoreKind::Whisper(ws)) = cfg.stores.get_mut(i).map(|s| &mut s.kind) else {
                return Ok(false);
            };
            let text = read(super::store::STORAGE_RULES_FILE_BYTES_MAX)?;
            let bad =
                |e: crate::store::whisper::rules::RulesError| format!("{}: {e}", w.path.display());
            if w.which == Which::Schemas(i) {
                if text == ws.schemas.text {
                    return Ok(false);
                }
                ws.schemas.rules = Arc::new(Schemas::parse(&text).map_err(bad)?);
                ws.schemas.text = text;
            } else {
                if text == ws.aggregations.text {
                    return Ok(false);
                }
                ws.aggregations.rules = Arc::new(Aggregations::parse(&text).map_err(bad)?);
                ws.aggregations.text = text;
            }
            Ok(true)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &std::path::Path, rules: &str, schemas: &str) -> Config {
        std::fs::write(dir.join("rules.conf"), rules).unwrap();
        std::fs::write(dir.join("schemas.conf"), schemas).unwrap();
        let text = format!(
            r#"
[[listen]]
name = "in"
url = "tcp://127.0.0.1:2003"
format = "graphite"
[[cluster]]
name = "c"
kind = "forward"
members = ["127.0.0.1:2003"]
[[aggregate]]
name = "agg"
kind = "carbon"
rules_file = "{d}/rules.conf"
send_to = ["c"]
rules_reread_interval_ms = 500
[[route]]
match = {{ all = true }}
aggregate = "agg"
[[store]]
name = "w"
kind = "whisper"
path = "{d}/whisper"
schemas_file = "{d}/schemas.conf"
"#,
            d = dir.display()
        );
        Config::parse(&text).unwrap()
    }

    #[test]
    fn a_changed_rules_file_is_read_into_the_config_and_a_bad_one_is_not() {
        let dir = std::env::temp_dir().join(format!("cadent-reread-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let rules = "out.<a> (10) = sum in.<a>.*\n";
        let schemas = "[all]\npattern = .*\nretentions = 10s:1h\n";
        let cfg = config(&dir, rules, schemas);
        let w = watched(&cfg);
        let labels: Vec<&str> = w.iter().map(|w| w.label.as_str()).collect();
        assert_eq!(labels.len(), 2, "{labels:?}");
        assert!(labels[0].starts_with("aggregate \"agg\" rules_file "));
        assert!(labels[1].starts_with("store \"w\" schemas_file "));
        assert_eq!(w[0].interval, Duration::from_millis(500));
        assert_eq!(w[1].interval, Duration::from_millis(60_000));

        let mut next = cfg.clone();
        assert_eq!(reread_into(&mut next, &w[0]), Ok(false));
        assert_eq!(reread_into(&mut next, &w[1]), Ok(false));
        assert!(next.aggregates == cfg.aggregates && next.stores == cfg.stores);

        std::fs::write(dir.join("rules.conf"), "new.<a> (10) = avg in.<a>.*\n").unwrap();
        assert_eq!(reread_into(&mut next, &w[0]), Ok(true));
        assert!(next.aggregates != cfg.aggregates);
        let AggregateKind::Carbon(c) = &next.aggregates[0].kind else {
            panic!()
        };
        assert_eq!(c.rules_text, "new.<a> (10) = avg in.<a>.*\n");

        // Unparseable, then gone: the running rules stay, and the error names the file.
        let before = next.clone();
        std::fs::write(dir.join("rules.conf"), "not a rule\n").unwrap();
        let e = reread_into(&mut next, &w[0]).unwrap_err();
        assert!(e.contains("rules.conf"), "{e}");
        std::fs::remove_file(dir.join("rules.conf")).unwrap();
        let e = reread_into(&mut next, &w[0]).unwrap_err();
        assert!(e.starts_with("cannot read "), "{e}");
        assert!(next.aggregates == before.aggregates);

        std::fs::write(
            dir.join("schemas.conf"),
            "[x]\npattern = ^x\\.\nretentions = 1m:1d\n",
        )
        .unwrap();
        assert_eq!(reread_into(&mut next, &w[1]), Ok(true));
        let StoreKind::Whisper(ws) = &next.stores[0].kind;
        assert!(ws.schemas.text.contains("1m:1d"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
