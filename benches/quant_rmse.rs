//! Importance-weighted RMSE of search vs reference quantization, per row
//! family and type, printed as a markdown table; plus the real tensors of
//! stories260K when `AIRAVATA_ASSETS` is set.
//!
//! RMSE = sqrt(Σ w (x - q)² / Σ w), with w = x² (or qw·sqrt(sigma2 + x²) for
//! the "+imatrix" rows, sigma2 = 2·mean(x²) of the row).
//! Run: `cargo bench --bench quant_rmse`.

#[path = "../tests/quant_common/mod.rs"]
mod quant_common;

use airavata::gguf::GgmlType;
use airavata::quant::{dequantize, quantize, QuantMode};
use quant_common::*;

const N_PER_ROW: usize = 256;
const ROWS: usize = 1024;

/// (Σ w e², Σ w) over all rows of `data` for one mode.
fn weighted(
    ty: GgmlType,
    data: &[f32],
    n: usize,
    im: Option<&[f32]>,
    mode: QuantMode,
) -> (f64, f64) {
    let q = quantize(ty, data, n, im, mode).expect("quantize");
    let d = dequantize(ty, &q, data.len()).expect("dequantize");
    let mut acc = (0.0, 0.0);
    for (x, y) in data.chunks_exact(n).zip(d.chunks_exact(n)) {
        let (e, w) = weighted_sq_err(x, y, im);
        acc.0 += e;
        acc.1 += w;
    }
    acc
}

fn cell(ty: GgmlType, data: &[f32], n: usize, im: Option<&[f32]>) -> String {
    let (er, w) = weighted(ty, data, n, im, QuantMode::Reference);
    let (es, _) = weighted(ty, data, n, im, QuantMode::Search);
    if w == 0.0 {
        return "0 / 0 (—)".into();
    }
    let (rr, rs) = ((er / w).sqrt(), (es / w).sqrt());
    let ratio = if rr > 0.0 {
        format!("{:.3}", rs / rr)
    } else {
        "—".into()
    };
    format!("{rr:.3e} / {rs:.3e} (**{ratio}**)")
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let seed = run_seed();
    let mut rng = Rng::new(seed);
    let header = |first: &str| {
        let mut h = format!("| {first} |");
        let mut sep = "|---|".to_string();
        for ty in QUANT_TYPES {
            h += &format!(" {ty} ref / search (ratio) |");
            sep += "---|";
        }
        println!("{h}\n{sep}");
    };
    println!("\nImportance-weighted RMSE, reference vs search (ratio = search/reference RMSE), {ROWS} rows of {N_PER_ROW} per family\n");
    header("family");
    for fam in FAMILIES {
        let data: Vec<f32> = (0..ROWS)
            .flat_map(|_| fam.row(&mut rng, N_PER_ROW))
            .collect();
        let mut line = format!("| {fam:?} |");
        for ty in QUANT_TYPES {
            line += &format!(" {} |", cell(ty, &data, N_PER_ROW, None));
        }
        println!("{line}");
    }
    for fam in [Family::Gaussian, Family::HeavyTailed] {
        let data: Vec<f32> = (0..ROWS)
            .flat_map(|_| fam.row(&mut rng, N_PER_ROW))
            .collect();
        let im = random_imatrix(&mut rng, N_PER_ROW);
        let mut line = format!("| {fam:?} +imatrix |");
        for ty in QUANT_TYPES {
            line += &format!(" {} |", cell(ty, &data, N_PER_ROW, Some(&im)));
        }
        println!("{line}");
    }
    let Some(path) = stories_gguf("quant_rmse bench (stories260K part)") else {
        return;
    };
    let tensors = match read_gguf_f32_tensors(&path) {
        Ok(t) => t,
        Err(e) => {
            println!("cannot read {}: {e}", path.display());
            return;
        }
    };
    println!("\nstories260K tensors (all F32 tensors with ≥ 2 dims; rows of ne0, or of 256 where ne0 is not a whole number of blocks)\n");
    header("tensor");
    let mut totals = vec![(0.0f64, 0.0f64, 0.0f64); QUANT_TYPES.len()];
    for t in tensors.iter().filter(|t| t.dims.len() >= 2) {
        let mut line = format!("| {} |", t.name);
        for (k, ty) in QUANT_TYPES.iter().enumerate() {
            let mut n = t.dims[0] as usize;
            if !n.is_multiple_of(ty.block_size()) {
                if !t.data.len().is_multiple_of(256) {
                    line += " n/a |";
                    continue;
                }
                n = 256;
            }
            let (er, w) = weighted(*ty, &t.data, n, None, QuantMode::Reference);
            let (es, _) = weighted(*ty, &t.data, n, None, QuantMode::Search);
            totals[k].0 += er;
            totals[k].1 += es;
            totals[k].2 += w;
            line += &format!(" {} |", cell(*ty, &t.data, n, None));
        }
        println!("{line}");
    }
    let mut line = "| **all tensors** |".to_string();
    for (er, es, w) in totals {
        let (rr, rs) = ((er / w).sqrt(), (es / w).sqrt());
        line += &format!(" {rr:.3e} / {rs:.3e} (**{:.3}**) |", rs / rr);
    }
    println!("{line}");
}
