//! Goldens made by python whisper 1.1.10 (`tests/data/whisper/make_goldens.py`, run in that
//! folder): cadent replays each case's operations and must produce the same bytes and the
//! same fetch answers.

use cadent::store::whisper::format::{self, AggregationMethod, CreateMode, Scratch};
use cadent::store::whisper::io::MemIo;
use serde_json::Value;

#[test]
fn goldens_made_by_python_whisper_are_reproduced_byte_for_byte() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/whisper");
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{dir}/goldens.json")).unwrap())
            .unwrap();
    let cases = manifest.as_array().unwrap();
    assert!(cases.len() >= 4);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let archives: Vec<(u64, u64)> = case["archives"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| (a[0].as_u64().unwrap(), a[1].as_u64().unwrap()))
            .collect();
        let method: AggregationMethod = case["method"].as_str().unwrap().parse().unwrap();
        let mut io = MemIo::new();
        let header = format::create(
            &mut io,
            &archives,
            case["xff"].as_f64().unwrap(),
            method,
            CreateMode::ZeroFill,
        )
        .unwrap();
        let mut scratch = Scratch::new();
        for op in case["ops"].as_array().unwrap() {
            let points: Vec<(i64, f64)> = op["points"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| (p[0].as_i64().unwrap(), p[1].as_f64().unwrap()))
                .collect();
            format::update_many(
                &mut io,
                &header,
                &points,
                op["now"].as_i64().unwrap(),
                &mut scratch,
            )
            .unwrap();
        }
        let golden = std::fs::read(format!("{dir}/{name}.wsp")).unwrap();
        assert!(
            io.bytes == golden,
            "{name}: bytes differ from python whisper's golden"
        );
        for f in case["fetches"].as_array().unwrap() {
            let got = format::fetch(
                &mut io,
                &header,
                f["from"].as_i64().unwrap(),
                f["until"].as_i64().unwrap(),
                f["now"].as_i64().unwrap(),
            )
            .unwrap();
            let want = &f["result"];
            match got {
                None => assert!(want.is_null(), "{name}: fetch {f} gave nothing"),
                Some(g) => {
                    let info = &want[0];
                    assert_eq!(
                        (g.from, g.until, g.step),
                        (
                            info[0].as_i64().unwrap(),
                            info[1].as_i64().unwrap(),
                            info[2].as_i64().unwrap()
                        ),
                        "{name}: fetch {f} time info"
                    );
                    let values: Vec<Option<f64>> = want[1]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_f64())
                        .collect();
                    assert_eq!(g.values, values, "{name}: fetch {f} values");
                }
            }
        }
    }
}
