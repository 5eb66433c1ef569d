//! Greedy decoding without llama.cpp's sampler chain: the argmax of each
//! sequence's logits, several rows at once.
//!
//! llama.cpp's greedy sampler first copies the whole vocabulary into a
//! candidate array; for 64 sequences × 48 065 logits per step that copy, not
//! the choice, is the cost. Here each row is read once, and the rows of one
//! step are scanned in parallel.

use rayon::prelude::*;

/// Rows below this count are scanned on the calling thread.
const PARALLEL_FROM: usize = 8;

/// The first index of the largest value (llama.cpp's greedy sampler keeps
/// the first of equal maxima too); NaNs are never chosen unless nothing else
/// is comparable, and `None` only for an empty or all-NaN row.
pub fn argmax(row: &[f32]) -> Option<usize> {
    // One pass, lane-wise (vectorizes): each lane keeps its maximum and the
    // chunk where it first saw it.
    const LANES: usize = 16;
    let mut best = [f32::NEG_INFINITY; LANES];
    let mut at = [u32::MAX; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for (k, c) in (&mut chunks).enumerate() {
        let k = u32::try_from(k).unwrap_or(u32::MAX);
        for ((b, a), &v) in best.iter_mut().zip(at.iter_mut()).zip(c) {
            let better = v > *b;
            *b = if better { v } else { *b };
            *a = if better { k } else { *a };
        }
    }
    let mut winner: Option<(usize, f32)> = None;
    for (lane, (&b, &a)) in best.iter().zip(&at).enumerate() {
        if a == u32::MAX {
            continue;
        }
        let i = a as usize * LANES + lane;
        match winner {
            Some((wi, wv)) if b < wv || (b == wv && i > wi) => {}
            _ => winner = Some((i, b)),
        }
    }
    let tail = row.len() - chunks.remainder().len();
    for (j, &v) in chunks.remainder().iter().enumerate() {
        if v > f32::NEG_INFINITY && winner.is_none_or(|(_, wv)| v > wv) {
            winner = Some((tail + j, v));
        }
    }
    // Nothing above -inf: the first -inf, as a plain scan would pick.
    winner
        .map(|(i, _)| i)
        .or_else(|| row.iter().position(|&v| v == f32::NEG_INFINITY))
}

/// [`argmax`] of every row, in parallel when there are enough rows.
pub fn argmax_rows(rows: &[&[f32]]) -> Vec<Option<usize>> {
    if rows.len() < PARALLEL_FROM {
        rows.iter().map(|r| argmax(r)).collect()
    } else {
        rows.par_iter().map(|r| argmax(r)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(w: &[f32]) -> Option<usize> {
        let mut best: Option<usize> = None;
        for (i, &v) in w.iter().enumerate() {
            if best.is_none_or(|b| v > w[b]) && !v.is_nan() {
                best = Some(i);
            }
        }
        best
    }

    fn pseudo_random(n: usize, seed: u32) -> Vec<f32> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                ((x >> 8) % 4096) as f32 / 16.0 - 128.0
            })
            .collect()
    }

    #[test]
    fn first_maximum_wins() {
        assert_eq!(argmax(&[0.5, 2.0, -1.0, 2.0]), Some(1));
        assert_eq!(argmax(&[f32::NEG_INFINITY, -3.0]), Some(1));
        assert_eq!(argmax(&[f32::NEG_INFINITY; 3]), Some(0));
        assert_eq!(argmax(&[f32::NEG_INFINITY; 40]), Some(0));
        assert_eq!(argmax(&[f32::NAN; 40]), None);
        assert_eq!(argmax(&[]), None);
        assert_eq!(argmax(&[f32::NAN, 1.0, f32::NAN]), Some(1));
        // Longer than the lane width: maxima in the tail, repeated, in a
        // later lane but an earlier chunk.
        let mut v: Vec<f32> = (0..1003).map(|i| ((i * 37) % 101) as f32).collect();
        v[1001] = 500.0;
        v[1002] = 500.0;
        assert_eq!(argmax(&v), Some(1001));
        v[33] = 500.0;
        assert_eq!(argmax(&v), Some(33));
        v[18] = 500.0;
        assert_eq!(argmax(&v), Some(18));
    }

    #[test]
    fn agrees_with_a_plain_scan() {
        // Values on a coarse grid, so ties between lanes are frequent.
        for seed in 0..20 {
            let w = pseudo_random(48_065, seed);
            assert_eq!(argmax(&w), scan(&w), "seed {seed}");
        }
    }

    #[test]
    fn rows_in_parallel_match_one_by_one() {
        let data: Vec<Vec<f32>> = (0..64).map(|s| pseudo_random(5_000, s + 100)).collect();
        let rows: Vec<&[f32]> = data.iter().map(Vec::as_slice).collect();
        let expected: Vec<Option<usize>> = rows.iter().map(|r| scan(r)).collect();
        assert_eq!(argmax_rows(&rows), expected);
        assert_eq!(argmax_rows(&rows[..3]), expected[..3].to_vec());
    }
}
