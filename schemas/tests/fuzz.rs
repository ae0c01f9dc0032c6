//! Bounded mutation fuzzing on stable Rust: inputs from a checked-in corpus are mutated (bit
//! flips, byte insertions and deletions, truncations, splices) and fed to the filter parser and
//! evaluator, the PATCH parser and engine, and resource validation. The property is the one a
//! fuzzer checks: no panic, and an accepted input behaves (a parsed filter prints to something
//! that parses again). The seed is printed so a failure can be replayed with
//! SCIMLOG_FUZZ_SEED; SCIMLOG_FUZZ_ITERATIONS raises the bound.

use scimlog_schemas::filter::{Filter, FilterLimits};
use scimlog_schemas::patch::{apply, parse_patch};
use scimlog_schemas::registry::registry;
use scimlog_schemas::resource::{parse_group, parse_user};
use serde_json::Value;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const INTERESTING: &[&[u8]] = &[
    b"(", b")", b"[", b"]", b"\"", b"\\", b" and ", b" or ", b"not ", b" eq ", b" pr", b".", b":", b"\xff", b"\0",
    b"{", b"}", b",", b"null", b"1e999",
];

fn mutate(rng: &mut Rng, input: &[u8], corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..=rng.below(4) {
        match rng.below(6) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 => {
                let i = rng.below(v.len() + 1);
                let ins = INTERESTING[rng.below(INTERESTING.len())];
                v.splice(i..i, ins.iter().copied());
            }
            2 if !v.is_empty() => {
                let i = rng.below(v.len());
                let n = rng.below(v.len() - i) + 1;
                v.drain(i..i + n.min(8));
            }
            3 => v.truncate(rng.below(v.len() + 1)),
            4 => {
                let other = &corpus[rng.below(corpus.len())];
                let cut = rng.below(other.len() + 1);
                let at = rng.below(v.len() + 1);
                v.splice(at.., other[cut..].iter().copied());
            }
            _ => {
                let i = rng.below(v.len() + 1);
                let b = rng.next() as u8;
                v.insert(i, b);
            }
        }
    }
    v
}

fn settings() -> (u64, usize) {
    let seed = std::env::var("SCIMLOG_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
    });
    let n = std::env::var("SCIMLOG_FUZZ_ITERATIONS").ok().and_then(|s| s.parse().ok()).unwrap_or(200_000);
    eprintln!("fuzz seed {seed}, {n} iterations");
    (seed, n)
}

/// Read at run time: a test binary reused from a build in another checkout (one shared target
/// dir) would otherwise look in that checkout.
fn manifest_dir() -> String {
    std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string())
}

fn corpus(file: &str) -> String {
    std::fs::read_to_string(format!("{}/tests/corpus/{file}", manifest_dir())).unwrap()
}

#[test]
fn filters_never_panic_and_round_trip() {
    let (seed, n) = settings();
    let mut rng = Rng(seed);
    let corpus: Vec<Vec<u8>> = corpus("filters.txt").lines().map(|l| l.as_bytes().to_vec()).collect();
    let user = serde_json::json!({"userName": "bjensen", "emails": [{"value": "b@example.com", "type": "work"}], "meta": {"lastModified": "2011-05-13T04:42:34Z"}, "active": true});
    for _ in 0..n {
        let pick = rng.below(corpus.len());
        let input = mutate(&mut rng, &corpus[pick], &corpus);
        let Ok(text) = std::str::from_utf8(&input) else { continue };
        if let Ok(f) = Filter::parse(text, FilterLimits::default()) {
            let _ = f.matches(&registry().user, &user);
            let printed = f.to_string();
            let again = Filter::parse(&printed, FilterLimits { max_length: usize::MAX, max_depth: usize::MAX })
                .unwrap_or_else(|e| panic!("{text:?} printed as {printed:?}, which does not parse: {e}"));
            assert_eq!(again, f, "{text:?}");
        }
    }
}

fn json_corpus(file: &str) -> Vec<Vec<u8>> {
    let all: Vec<Value> = serde_json::from_str(&corpus(file)).unwrap();
    all.iter().map(|v| serde_json::to_vec(v).unwrap()).collect()
}

#[test]
fn patches_never_panic() {
    let (seed, n) = settings();
    let mut rng = Rng(seed);
    let corpus = json_corpus("patches.json");
    let base: Value =
        serde_json::json!({"userName": "a", "emails": [{"value": "a@x", "type": "work"}], "name": {"givenName": "A"}});
    for _ in 0..n {
        let pick = rng.below(corpus.len());
        let input = mutate(&mut rng, &corpus[pick], &corpus);
        let Ok(body) = serde_json::from_slice::<Value>(&input) else { continue };
        if let Ok(ops) = parse_patch(&body, FilterLimits::default(), 100) {
            let mut doc = base.as_object().unwrap().clone();
            for op in &ops {
                if apply(&registry().user, &mut doc, op).is_err() {
                    break;
                }
            }
            let _ = parse_user(&Value::Object(doc));
        }
    }
}

#[test]
fn resources_never_panic() {
    let (seed, n) = settings();
    let mut rng = Rng(seed);
    let corpus = json_corpus("users.json");
    for _ in 0..n {
        let pick = rng.below(corpus.len());
        let input = mutate(&mut rng, &corpus[pick], &corpus);
        let Ok(body) = serde_json::from_slice::<Value>(&input) else { continue };
        let _ = parse_user(&body);
        let _ = parse_group(&body);
    }
}
