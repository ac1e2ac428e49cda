//! `bench-scan`: the pass-through scans alone, in process: a 1,536-float
//! embeddings answer through `pass_through` (the scan) and
//! `PassedThrough::answer` (the alias written: here into a copy, as for an
//! answer that came in one piece), and the bench mock's content
//! chunk through `pass_through_chunk`, timed over many calls (run it under
//! `valgrind --tool=callgrind` for instructions per call).

use std::time::Instant;

use conduit::providers::openai::passthrough::{pass_through, pass_through_chunk};
use conduit::providers::Endpoint;
use conduit_bench::{Args, Result};

const HELP: &str = "\
bench-scan: the fast path's scans alone (in process)

Options:
  --iterations N   calls per case (default 20000)
  --help
";

const CHUNK: &str = r#"{"id":"chatcmpl-mock0001","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4o-mini","system_fingerprint":"fp_mock","choices":[{"index":0,"delta":{"content":" help"},"logprobs":null,"finish_reason":null}]}"#;

fn main() -> Result<()> {
    let args = Args::parse(std::env::args().skip(1), &["help"])?;
    if args.flag("help") {
        print!("{HELP}");
        return Ok(());
    }
    args.check_known(&["iterations"])?;
    let n: u32 = args.parse_or("iterations", 20_000)?;
    let (vector, _) = conduit_bench::payloads::embedding_vector(1536);
    let body = format!(
        r#"{{"object":"list","data":[{{"object":"embedding","index":0,"embedding":{vector}}}],"model":"text-embedding-3-small","usage":{{"prompt_tokens":8,"total_tokens":8}}}}"#
    );
    let shared = bytes::Bytes::from(body.clone());
    let started = Instant::now();
    let mut kept = 0;
    for _ in 0..n {
        let p = pass_through(Endpoint::Embeddings, &shared, false);
        kept += p.map_or(0, |p| p.answer(shared.clone(), "embeddings").len());
    }
    let per = started.elapsed().as_nanos() as f64 / f64::from(n);
    println!(
        "embeddings ({} bytes): {per:.0} ns per answer ({:.2} ns/byte)",
        body.len(),
        per / body.len() as f64
    );
    let started = Instant::now();
    for _ in 0..n {
        kept += pass_through_chunk(CHUNK, false).map_or(0, |c| c.content as usize);
    }
    let per = started.elapsed().as_nanos() as f64 / f64::from(n);
    println!(
        "chunk ({} bytes): {per:.0} ns per chunk ({:.2} ns/byte)",
        CHUNK.len(),
        per / CHUNK.len() as f64
    );
    std::hint::black_box(kept);
    Ok(())
}
