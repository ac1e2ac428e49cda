//! The same bytes cut into reads in several ways: whole, one byte at a
//! time, and at a few points that depend on the input (so that the fuzzer
//! explores cut positions by mutating it). A parser must give the same
//! answer for every cut.

/// A cheap, stable hash of the input (FNV-1a) to place the cuts.
fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Bodies longer than this are not fed one byte at a time (that is
/// quadratic in some decoders' callers, and slow for the fuzzer).
const BYTEWISE_MAX: usize = 2048;

/// The ways `data` is cut, the whole body first.
pub fn cuts(data: &[u8]) -> Vec<Vec<&[u8]>> {
    let mut ways = vec![vec![data]];
    if data.is_empty() {
        return ways;
    }
    if data.len() <= BYTEWISE_MAX {
        ways.push(data.chunks(1).collect());
    }
    let h = fnv(data);
    let n = data.len();
    // Three cuts at hash-chosen points (sorted), and fixed-size reads.
    let mut points = [
        (h % (n as u64 + 1)) as usize,
        ((h >> 21) % (n as u64 + 1)) as usize,
        ((h >> 42) % (n as u64 + 1)) as usize,
    ];
    points.sort_unstable();
    ways.push(vec![
        &data[..points[0]],
        &data[points[0]..points[1]],
        &data[points[1]..points[2]],
        &data[points[2]..],
    ]);
    let size = 1 + (h >> 7) as usize % 17;
    ways.push(data.chunks(size).collect());
    ways
}
