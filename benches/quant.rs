//! Quantization speed, in rows of 4096 per second on ONE core (a one-thread
//! rayon pool for ours; `ggml_quantize_chunk` is single-threaded), for
//! reference and search modes next to ggml on the same rows.
//!
//! A last entry per type runs search mode on all cores of the global pool.
//! Run: `cargo bench --bench quant` (criterion prints `thrpt` in rows/s).

#[path = "../tests/quant_common/mod.rs"]
mod quant_common;

use airavata::quant::{quantize, QuantMode};
use criterion::{black_box, Criterion, Throughput};
use quant_common::*;
use std::time::Duration;

const N_PER_ROW: usize = 4096;
const ROWS: usize = 64;

/// `QUANT_QUICK=1 cargo bench --bench quant`: a plain single-thread timing
/// loop (rows/s, best of 5) for reference and search of IQ4_XS, IQ4_NL, Q6_K.
/// `QUANT_ONLY=<text>` keeps the rows whose name contains it (for profiling
/// one row, e.g. `QUANT_ONLY="IQ4_NL reference"`).
fn quick(rows: &[f32], imatrix: &[f32]) {
    let only = std::env::var("QUANT_ONLY").unwrap_or_default();
    use airavata::gguf::GgmlType;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("one-thread pool");
    for ty in [GgmlType::Iq4Xs, GgmlType::Iq4Nl, GgmlType::Q6K] {
        for (im_name, im) in [("", None), ("+imatrix", Some(imatrix))] {
            for (name, mode) in [
                ("reference", QuantMode::Reference),
                ("search", QuantMode::Search),
            ] {
                let label = format!("{ty}{im_name} {name}");
                if !label.contains(&only) {
                    continue;
                }
                let mut best = f64::INFINITY;
                for _ in 0..5 {
                    let t = std::time::Instant::now();
                    pool.install(|| quantize(ty, black_box(rows), N_PER_ROW, im, mode))
                        .expect("quantize");
                    best = best.min(t.elapsed().as_secs_f64());
                }
                println!("{label}: {:.0} rows/s", ROWS as f64 / best);
            }
        }
    }
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("one-thread pool");
    let mut rng = Rng::new(42);
    let rows: Vec<f32> = (0..ROWS)
        .flat_map(|_| Family::Gaussian.row(&mut rng, N_PER_ROW))
        .collect();
    let imatrix = random_imatrix(&mut rng, N_PER_ROW);
    if std::env::var_os("QUANT_QUICK").is_some() {
        quick(&rows, &imatrix);
        return;
    }
    for ty in QUANT_TYPES {
        for (im_name, im) in [("", None), ("+imatrix", Some(imatrix.as_slice()))] {
            let mut g = c.benchmark_group(format!("{ty}{im_name}"));
            g.throughput(Throughput::Elements(ROWS as u64));
            g.bench_function("ggml", |b| {
                b.iter(|| ggml_quantize(ty, black_box(&rows), N_PER_ROW, im))
            });
            for (name, mode) in [
                ("reference", QuantMode::Reference),
                ("search", QuantMode::Search),
            ] {
                g.bench_function(name, |b| {
                    b.iter(|| {
                        pool.install(|| quantize(ty, black_box(&rows), N_PER_ROW, im, mode))
                            .expect("quantize")
                    })
                });
            }
            // All cores (global rayon pool), search mode: whole-machine rows/s.
            g.bench_function(
                format!("search-{}threads", rayon::current_num_threads()),
                |b| {
                    b.iter(|| {
                        quantize(ty, black_box(&rows), N_PER_ROW, im, QuantMode::Search)
                            .expect("quantize")
                    })
                },
            );
            g.finish();
        }
    }
    c.final_summary();
}
