//! The `coco` ring against placements made by the real Coco 1.0.1
//! (`tests/data/coco/coco-placements.tsv`; `coco-placements.md` beside it says how):
//! 2,007 collectd host names at 25 member counts from 1 to 100, every placement equal,
//! through the ring and through a router built from a `kind = "coco"` config; and the
//! config's bound of 100 members, at load and for a membership change.

use cadent::config::{Config, Member};
use cadent::route::ring::RingMember;
use cadent::route::ring_coco::{CocoRing, COCO_MEMBERS_MAX};
use cadent::route::{DestinationTable, Router};

const GOLDEN: &str = include_str!("../data/coco/coco-placements.tsv");

/// Member counts of the golden's columns, in order.
const GOLDEN_SIZES: [usize; 25] = [
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 24, 32, 50, 64, 100,
];

/// One row of the golden: a host name and, per column, the member Coco named (`None`
/// where the file says -1, Coco answering nothing).
struct Row<'a> {
    host: &'a str,
    placed: Vec<Option<usize>>,
}

/// The golden's member counts (from its header) and rows.
fn golden() -> (Vec<usize>, Vec<Row<'static>>) {
    let mut lines = GOLDEN.lines();
    let header = lines.next().expect("a header line");
    let mut columns = header.split('\t');
    assert_eq!(columns.next(), Some("# host"));
    let sizes: Vec<usize> = columns
        .map(|c| {
            c.strip_prefix("members=")
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("header column {c:?}"))
        })
        .collect();
    let rows = lines
        .map(|line| {
            let mut cells = line.split('\t');
            let host = cells.next().unwrap();
            let placed: Vec<Option<usize>> = cells
                .map(|c| match c.parse::<i64>() {
                    Ok(-1) => None,
                    Ok(i) => Some(usize::try_from(i).unwrap_or_else(|_| panic!("cell {c:?}"))),
                    Err(e) => panic!("{host:?}: cell {c:?}: {e}"),
                })
                .collect();
            assert_eq!(placed.len(), sizes.len(), "{host:?}: one cell per column");
            Row { host, placed }
        })
        .collect();
    (sizes, rows)
}

/// Ring members as a tier of `n` targets on one host, consecutive ports: what the
/// golden's Coco was given (only the count and order matter).
fn tier(n: usize) -> Vec<RingMember<'static>> {
    (0..n)
        .map(|i| RingMember {
            host: "127.0.0.1",
            port: 25_827 + i as u16,
            instance: None,
        })
        .collect()
}

#[test]
fn coco_golden_is_the_file_described() {
    let (sizes, rows) = golden();
    assert_eq!(sizes, GOLDEN_SIZES);
    assert_eq!(rows.len(), 2_007);
    assert_eq!(rows.iter().map(|r| r.placed.len()).sum::<usize>(), 50_175);
    for row in &rows {
        for (&n, p) in sizes.iter().zip(&row.placed) {
            assert!(p.is_none_or(|m| m < n), "{:?} at {n}: {p:?}", row.host);
        }
    }
    // The empty name is there, and Coco placed it (crc32 0): `/lookup?name=` hands the
    // ring an empty string; Coco answers nothing only when `name` is missing. So the
    // file has no -1 at all, and our ring places an empty key like any other.
    let empty = rows
        .iter()
        .find(|r| r.host.is_empty())
        .expect("the empty name");
    assert!(empty.placed.iter().all(Option::is_some));
    assert!(rows.iter().all(|r| r.placed.iter().all(Option::is_some)));
}

#[test]
fn coco_every_golden_placement_is_equal() {
    let (sizes, rows) = golden();
    let mut out = Vec::new();
    let mut checked = 0;
    let mut wrong = Vec::new();
    for (column, &n) in sizes.iter().enumerate() {
        let members = tier(n);
        let ring = CocoRing::new(&members);
        assert_eq!(ring.members(), n);
        for row in &rows {
            ring.route_into(row.host.as_bytes(), 1, &mut out);
            // A -1 cell (Coco answering nothing) would need an empty answer.
            let want = row.placed[column];
            if out.first().copied() != want {
                wrong.push(format!("{:?} at {n}: want {want:?}, got {out:?}", row.host));
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 50_175);
    assert!(
        wrong.is_empty(),
        "{} of {checked} differ, first: {:#?}",
        wrong.len(),
        &wrong[..wrong.len().min(10)]
    );
}

/// A config with one coco cluster of `n` members, every name routed to it.
fn coco_config(n: usize) -> String {
    let members: Vec<String> = (0..n)
        .map(|i| format!("\"127.0.0.1:{}\"", 30_000 + i))
        .collect();
    format!(
        r#"
        [[listen]]
        name = "c"
        url = "udp://127.0.0.1:0"
        format = "graphite"
        [[cluster]]
        name = "coco"
        kind = "coco"
        members = [{}]
        [[route]]
        match = {{ all = true }}
        send_to = ["coco"]
        "#,
        members.join(", ")
    )
}

#[test]
fn coco_cluster_routes_as_coco_through_the_router() {
    let (sizes, rows) = golden();
    for n in [3, 100] {
        let column = sizes.iter().position(|&s| s == n).unwrap();
        let cfg = Config::parse(&coco_config(n)).unwrap();
        let table = DestinationTable::from_config(&cfg);
        let mut router = Router::new(&cfg, &table, &[]);
        let member_dests = router.clusters()[0].members.clone();
        let mut hits = vec![0; router.rule_count()];
        // Twice: the second round comes from the route cache.
        for round in 0..2 {
            for row in &rows {
                let host = row.host.as_bytes();
                let (_, dests) = router.route(host, host, &mut hits);
                let got: Vec<usize> = dests
                    .iter()
                    .map(|d| {
                        member_dests
                            .iter()
                            .position(|m| Some(*m) == d.dest())
                            .unwrap()
                    })
                    .collect();
                let want: Vec<usize> = row.placed[column].into_iter().collect();
                assert_eq!(got, want, "{:?} at {n}, round {round}", row.host);
            }
        }
    }
}

#[test]
fn coco_cluster_over_100_members_is_refused_naming_the_key() {
    Config::parse(&coco_config(COCO_MEMBERS_MAX)).unwrap();
    let errs = Config::parse(&coco_config(COCO_MEMBERS_MAX + 1))
        .unwrap_err()
        .0;
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!(errs[0].path, "cluster[0].members");
    assert!(
        errs[0].message.contains("at most 100"),
        "{}",
        errs[0].message
    );

    // A membership change is checked as loading would check it.
    let mut cfg = Config::parse(&coco_config(COCO_MEMBERS_MAX)).unwrap();
    cfg.clusters[0]
        .members
        .push(Member::parse("127.0.0.1:40000").unwrap());
    let errs = cfg.check_cluster(0).unwrap_err().0;
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!(errs[0].path, "cluster[0].members");
}
