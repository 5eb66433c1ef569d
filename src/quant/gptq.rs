//! Calibration-aware rounding into the stock block formats (GPTQ/OBQ-style
//! error feedback).
//!
//! A linear layer's output error on calibration inputs `X` is
//! `‖(W − Q)X‖² = Σ_rows (w − q)ᵀ H (w − q)` with `H = XᵀX`. Rounding a row's
//! columns in order and pushing each column's rounding error onto the columns
//! not yet rounded, weighted by `H⁻¹`, lowers that error well below rounding
//! each block on its own. Here the columns are taken one quantization block at
//! a time: each block's scales are chosen (by the type's own quantizer, with
//! `diag(H)` as importance) from the weights as updated by the error of the
//! blocks before it, and the block's errors are then fed forward column by
//! column. The bytes are plain ggml blocks, so stock kernels run them.
//!
//! `H` is kept as diagonal blocks (`HBlock`) of at most a few hundred to a
//! thousand columns: error feedback reaches across quantization blocks within
//! a Hessian block, and the statistics stay small for 7B-wide layers.

use super::{GgmlType, QuantError, QuantMode};
use rayon::prelude::*;

/// Accumulated input statistics of one weight: diagonal blocks of `XᵀX`.
#[derive(Debug, Clone)]
pub struct Hessian {
    /// Columns (the weight's row length).
    pub n: usize,
    /// Diagonal blocks covering `0..n` in order.
    pub blocks: Vec<HBlock>,
    /// Input rows (tokens) summed.
    pub count: u64,
}

/// One diagonal block of `XᵀX`: columns `start .. start + len`, row-major sums.
#[derive(Debug, Clone)]
pub struct HBlock {
    pub start: usize,
    pub len: usize,
    pub xtx: Vec<f32>,
}

impl Hessian {
    /// Empty statistics for `n` columns in blocks of at most `max_block`
    /// columns, each boundary a multiple of `align` (a quantization block).
    pub fn new(n: usize, max_block: usize, align: usize) -> Self {
        let align = align.max(1);
        let units = n.div_ceil(align);
        let per = (max_block / align).max(1);
        let n_blocks = units.div_ceil(per).max(1);
        // Spread the units evenly over the blocks.
        let mut blocks = Vec::with_capacity(n_blocks);
        let mut start = 0;
        for b in 0..n_blocks {
            let u = units / n_blocks + usize::from(b < units % n_blocks);
            let len = (u * align).min(n - start);
            if len == 0 {
                continue;
            }
            blocks.push(HBlock {
                start,
                len,
                xtx: vec![0.0; len * len],
            });
            start += len;
        }
        Self {
            n,
            blocks,
            count: 0,
        }
    }

    /// Adds `rows` input rows of `n` values (`xs`, row-major) to every
    /// block's `XᵀX`.
    pub fn add_rows(&mut self, xs: &[f32], rows: usize) {
        let n = self.n;
        assert!(
            xs.len() >= rows * n,
            "{} values for {rows} rows of {n}",
            xs.len()
        );
        self.count += rows as u64;
        self.blocks.par_iter_mut().for_each(|b| {
            let l = b.len;
            // SAFETY: A = X[:, start..start+l]ᵀ (l × rows, strides 1 / n),
            // B = X[:, start..start+l] (rows × l, strides n / 1), C = xtx
            // (l × l, strides l / 1): every index stays inside `xs` (at least
            // rows × n, asserted above) and `b.xtx` (l × l).
            unsafe {
                matrixmultiply::sgemm(
                    l,
                    rows,
                    l,
                    1.0,
                    xs.as_ptr().add(b.start),
                    1,
                    n as isize,
                    xs.as_ptr().add(b.start),
                    n as isize,
                    1,
                    1.0,
                    b.xtx.as_mut_ptr(),
                    l as isize,
                    1,
                );
            }
        });
    }

    /// Mean squared input per column (`diag(XᵀX) / count`): llama-imatrix's value.
    pub fn importance(&self) -> Vec<f32> {
        let c = self.count.max(1) as f32;
        let mut v = vec![0f32; self.n];
        for b in &self.blocks {
            for i in 0..b.len {
                v[b.start + i] = b.xtx[i * b.len + i] / c;
            }
        }
        v
    }
}

/// `H` prepared for feedback: per block the upper Cholesky factor `U` of
/// `(H + λI)⁻¹` (so `(H + λI)⁻¹ = UᵀU`), as GPTQ uses it.
#[derive(Debug, Clone)]
pub struct Feedback {
    n: usize,
    blocks: Vec<FBlock>,
    importance: Vec<f32>,
}

#[derive(Debug, Clone)]
struct FBlock {
    start: usize,
    len: usize,
    /// Row-major upper-triangular factor.
    u: Vec<f32>,
}

/// Relative damping added to the diagonal (GPTQ's `percdamp`).
pub const DAMP: f64 = 0.01;

impl Feedback {
    /// Prepare `h` with damping `damp × mean(diag)`; the damping grows tenfold
    /// while a block is not positive definite.
    pub fn new(h: &Hessian, damp: f64) -> Result<Self, QuantError> {
        let blocks = h
            .blocks
            .par_iter()
            .map(|b| {
                let mut d = damp;
                for _ in 0..6 {
                    if let Some(u) = inverse_cholesky_upper(&b.xtx, b.len, d) {
                        return Ok(FBlock {
                            start: b.start,
                            len: b.len,
                            u,
                        });
                    }
                    d *= 10.0;
                }
                Err(QuantError::Hessian(format!(
                    "columns {}..{} are not positive definite even with damping {d}",
                    b.start,
                    b.start + b.len
                )))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            n: h.n,
            blocks,
            importance: h.importance(),
        })
    }

    /// Columns covered.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Per-column importance (mean squared input).
    pub fn importance(&self) -> &[f32] {
        &self.importance
    }

    /// Whether every block boundary is a multiple of `ty`'s block size.
    pub fn aligned_for(&self, ty: GgmlType) -> bool {
        let bs = ty.block_size();
        self.blocks
            .iter()
            .all(|b| b.start.is_multiple_of(bs) && b.len.is_multiple_of(bs))
    }
}

/// The upper factor `U` with `(A + λI)⁻¹ = UᵀU`, `λ = damp × mean(diag A)`,
/// for a symmetric `n × n` `a` (f32 sums), or None when not positive definite.
///
/// With `P` the order reversal, `P(A+λI)P = CCᵀ` (lower Cholesky) gives
/// `(A+λI)⁻¹ = (P C⁻¹ P)ᵀ (P C⁻¹ P)`, and `P C⁻¹ P` is upper triangular.
fn inverse_cholesky_upper(a: &[f32], n: usize, damp: f64) -> Option<Vec<f32>> {
    let mean_diag = (0..n).map(|i| a[i * n + i] as f64).sum::<f64>() / n.max(1) as f64;
    let lambda = if mean_diag > 0.0 {
        damp * mean_diag
    } else {
        1.0
    };
    // B = P (A + λI) P, in f64.
    let mut c = vec![0f64; n * n];
    for i in 0..n {
        for j in 0..=i {
            let v = a[(n - 1 - i) * n + (n - 1 - j)] as f64 + if i == j { lambda } else { 0.0 };
            c[i * n + j] = v;
        }
    }
    // In-place lower Cholesky (row-oriented).
    for i in 0..n {
        for j in 0..=i {
            let (ri, rj) = (i * n, j * n);
            let mut s = c[ri + j];
            for k in 0..j {
                s -= c[ri + k] * c[rj + k];
            }
            if i == j {
                if s <= 0.0 || !s.is_finite() {
                    return None;
                }
                c[ri + i] = s.sqrt();
            } else {
                c[ri + j] = s / c[rj + j];
            }
        }
    }
    // D = C⁻¹ (lower), row by row: row i of D is
    // (e_i − Σ_{k<i} C[i,k]·D[k,·]) / C[i,i], an axpy over contiguous rows.
    let mut d = vec![0f64; n * n];
    for i in 0..n {
        let (done, rest) = d.split_at_mut(i * n);
        let row = &mut rest[..n];
        for k in 0..i {
            let cik = c[i * n + k];
            if cik != 0.0 {
                for (r, &dk) in row[..=k].iter_mut().zip(&done[k * n..k * n + k + 1]) {
                    *r -= cik * dk;
                }
            }
        }
        row[i] += 1.0;
        let inv = 1.0 / c[i * n + i];
        row[..=i].iter_mut().for_each(|r| *r *= inv);
    }
    // U = P D P.
    let mut u = vec![0f32; n * n];
    for i in 0..n {
        for j in i..n {
            u[i * n + j] = d[(n - 1 - i) * n + (n - 1 - j)] as f32;
        }
    }
    Some(u)
}

/// Whether calibration-aware rounding runs for `ty` (types with a native
/// block quantizer and a block-aligned Hessian); others are rounded per block
/// with the importance only.
pub fn supports(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::Iq4Xs
            | GgmlType::Iq4Nl
            | GgmlType::Q4_0
            | GgmlType::Q4K
            | GgmlType::Q6K
            | GgmlType::Q8_0
    )
}

/// Quantize rows of `n_per_row` to `ty` with error feedback through `fb`.
pub fn quantize_rows(
    ty: GgmlType,
    src: &[f32],
    n_per_row: usize,
    fb: &Feedback,
    mode: QuantMode,
) -> Result<Vec<u8>, QuantError> {
    if fb.n != n_per_row || !supports(ty) || !fb.aligned_for(ty) {
        return super::quantize(ty, src, n_per_row, Some(&fb.importance), mode);
    }
    let row_bytes = ty.row_bytes(n_per_row).ok_or(QuantError::RowLength {
        ty,
        n_per_row,
        block: ty.block_size(),
    })?;
    if !src.len().is_multiple_of(n_per_row) {
        return Err(QuantError::Shape {
            len: src.len(),
            n_per_row,
        });
    }
    let (row_fn, deq) = super::native_block_codec(ty, mode).ok_or(QuantError::Unsupported(ty))?;
    let (bs, bb) = ty.block_layout().ok_or(QuantError::Unsupported(ty))?;
    let im = fb.importance.as_slice();
    let n = n_per_row;
    let mut out = vec![0u8; row_bytes * (src.len() / n)];
    // Rows are independent; a tile of them shares each row of `U` while it is
    // in L1 (a 1024-wide block's `U` is 4 MB, past a core's L2: row by row it
    // was streamed from memory once per weight row). Per row the arithmetic
    // and its order are unchanged, so the bytes are the same for any tile.
    out.par_chunks_mut(row_bytes * ROW_TILE)
        .zip(src.par_chunks(n * ROW_TILE))
        .for_each_init(
            || (vec![0f32; n * ROW_TILE], vec![0f32; bs * ROW_TILE]),
            |(w, q), (dst, rows)| {
                let nr = rows.len() / n;
                w[..rows.len()].copy_from_slice(rows);
                for b in &fb.blocks {
                    let end = b.start + b.len;
                    for qb in (b.start..end).step_by(bs) {
                        let k = qb / bs;
                        for r in 0..nr {
                            let bytes =
                                &mut dst[r * row_bytes + k * bb..r * row_bytes + (k + 1) * bb];
                            row_fn(
                                &w[r * n + qb..r * n + qb + bs],
                                bytes,
                                Some(&im[qb..qb + bs]),
                            );
                            deq(bytes, &mut q[r * bs..(r + 1) * bs]);
                        }
                        for j in 0..bs {
                            let jl = qb + j - b.start;
                            let urow = &b.u[jl * b.len..(jl + 1) * b.len];
                            for r in 0..nr {
                                let wr = &mut w[r * n..(r + 1) * n];
                                let e = (wr[qb + j] - q[r * bs + j]) / urow[jl];
                                for (wk, uk) in wr[qb + j + 1..end].iter_mut().zip(&urow[jl + 1..])
                                {
                                    *wk -= e * uk;
                                }
                            }
                        }
                    }
                }
            },
        );
    Ok(out)
}

/// Weight rows quantized together by [`quantize_rows`] (see there).
const ROW_TILE: usize = 8;

/// `Σ_rows (w − q)ᵀ H (w − q)` over the diagonal blocks of `h`: the output
/// error on the calibration inputs (for tests and reports).
pub fn output_error(h: &Hessian, w: &[f32], q: &[f32]) -> f64 {
    let n = h.n;
    w.chunks(n)
        .zip(q.chunks(n))
        .map(|(wr, qr)| {
            let mut e = 0.0f64;
            for b in &h.blocks {
                let d: Vec<f64> = (0..b.len)
                    .map(|i| (wr[b.start + i] - qr[b.start + i]) as f64)
                    .collect();
                for i in 0..b.len {
                    let row = &b.xtx[i * b.len..(i + 1) * b.len];
                    let s: f64 = row.iter().zip(&d).map(|(&a, &dj)| a as f64 * dj).sum();
                    e += d[i] * s;
                }
            }
            e
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
    }

    #[test]
    fn blocks_cover_the_row_at_aligned_boundaries() {
        let h = Hessian::new(11008, 1024, 256);
        assert_eq!(h.blocks.first().map(|b| b.start), Some(0));
        let mut next = 0;
        for b in &h.blocks {
            assert_eq!(b.start, next);
            assert!(b.len <= 1024 && b.len % 256 == 0, "{}", b.len);
            next += b.len;
        }
        assert_eq!(next, 11008);
        let h = Hessian::new(576, 1024, 32);
        assert_eq!(h.blocks.len(), 1);
        assert_eq!(h.blocks[0].len, 576);
    }

    /// Rows quantized in tiles give each row's bytes exactly as alone, for a
    /// row count that is not a multiple of the tile, and the feedback is real
    /// (the bytes differ from plain quantization with the same importance).
    #[test]
    fn row_tiles_leave_each_rows_bytes_unchanged() {
        let (rows, n) = (2 * ROW_TILE + 5, 512);
        let mut s = 11u64;
        let w: Vec<f32> = (0..rows * n).map(|_| lcg(&mut s) * 0.1).collect();
        let mut h = Hessian::new(n, 256, 256);
        let x: Vec<f32> = (0..64 * n).map(|_| lcg(&mut s)).collect();
        h.add_rows(&x, 64);
        let fb = Feedback::new(&h, DAMP).expect("feedback");
        for ty in [GgmlType::Iq4Xs, GgmlType::Q4K] {
            let all = quantize_rows(ty, &w, n, &fb, QuantMode::Search).expect("tiled");
            let rb = ty.row_bytes(n).expect("row bytes");
            for (r, row) in w.chunks(n).enumerate() {
                let one = quantize_rows(ty, row, n, &fb, QuantMode::Search).expect("one row");
                assert_eq!(&all[r * rb..(r + 1) * rb], one.as_slice(), "{ty} row {r}");
            }
            let plain = super::super::quantize(ty, &w, n, Some(fb.importance()), QuantMode::Search)
                .expect("plain");
            assert_ne!(all, plain, "{ty}: no feedback happened");
        }
    }

    #[test]
    fn inverse_cholesky_matches_the_inverse() {
        let n = 24;
        let mut s = 7u64;
        let x: Vec<f32> = (0..n * 60).map(|_| lcg(&mut s)).collect();
        let mut a = vec![0f32; n * n];
        for t in x.chunks(n) {
            for i in 0..n {
                for j in 0..n {
                    a[i * n + j] += t[i] * t[j];
                }
            }
        }
        let u = inverse_cholesky_upper(&a, n, 0.0).expect("positive definite");
        // UᵀU (A) = I.
        for i in 0..n {
            for j in 0..n {
                let mut v = 0f64;
                for k in 0..n {
                    let uk_i = u[k * n + i] as f64;
                    let ut_a: f64 = (0..n)
                        .map(|m| u[k * n + m] as f64 * a[m * n + j] as f64)
                        .sum();
                    v += uk_i * ut_a;
                }
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((v - want).abs() < 1e-3, "({i},{j}) = {v}");
            }
            for j in 0..i {
                assert_eq!(u[i * n + j], 0.0, "upper triangular");
            }
        }
        assert!(
            inverse_cholesky_upper(&[0f32; 4], 2, 0.0).is_some(),
            "λ = 1 for zero"
        );
    }
}
